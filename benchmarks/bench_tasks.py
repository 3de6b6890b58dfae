"""Trivial tasks on the repository's own app, for the Redis benchmark (benchmarks/redis_bench.py).

A worker loads them next to tasks.py with `--include benchmarks.bench_tasks`, and the
producer (benchmarks/redis_fill.py) imports them too, so both sides are traced the same way.
BENCH_VARIANT says how:

  broken, fixed  exactly as tasks.py installs them (PROPAGATION=broken or fixed).
  untraced       run with PROPAGATION=fixed: celery_signals.uninstall() undoes what tasks.py
                 installed, and the benchmark sets OTEL_SDK_DISABLED=true: the
                 TracerProvider that tracing.py still creates in the worker then hands out
                 no-op tracers, so no span is recorded and its exporter never has anything
                 to send.
  auto           run with PROPAGATION=fixed: celery_signals.uninstall(), then the
                 opentelemetry-instrumentation-celery package's receivers instead.

tasks.py calls install() when it is imported, which is before this module can run: undoing
it here is the only way to get a worker of the same app without it.
"""

import json
import os
import time
from pathlib import Path

import celery_signals
from tasks import celery_app

VARIANT = os.environ.get("BENCH_VARIANT", "fixed")


if VARIANT in ("untraced", "auto"):
    celery_signals.uninstall()
if VARIANT == "auto":
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()


@celery_app.task(name="bench.noop")
def noop(number):
    return None


@celery_app.task(name="bench.mark")
def mark(path):
    """Write to PATH when this task ran, and the pool process's CPU time so far.

    The producer queues mark, N noops, mark; one pool process runs them in that order, so
    the two marks bracket the batch without adding anything to each task. Tasks run, and
    their spans are recorded and exported, in the pool process: that is where the variants
    differ.
    """
    now = {"clock": time.monotonic(), "cpu": time.process_time()}
    # Written aside, then renamed: whoever waits for PATH never reads it half written.
    Path(f"{path}.part").write_text(json.dumps(now))
    os.replace(f"{path}.part", path)
