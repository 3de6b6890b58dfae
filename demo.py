"""See the bug and the fix: one order per propagation variant, and the traces it leaves.

Starts an embedded trace sink, then for each variant a Celery worker (prefork) and the web
app, posts one order, and prints the trace trees. No Redis, Docker or tracing backend
needed: the broker is a folder (kombu's filesystem transport) unless CELERY_BROKER_URL is
set.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from celery_signals import VARIANTS
from processes import ProcessFailed, check_alive, start_web, start_worker, stop, stop_all
from trace_sink import TraceSink, load_spans, wait_for_spans
from trace_view import describe, render, verdict

STORIES = {
    "broken": "process_order.delay(): nothing carries the trace context",
    "inject-only": "the web app injects the context, the worker never extracts it",
    "call-site": "injected where the web app enqueues, extracted in task_prerun",
    "fixed": "injected in before_task_publish, extracted in task_prerun",
}
SPANS_DEADLINE = 30.0


def post_order(base_url):
    body = json.dumps({"item": "book", "quantity": 1}).encode()
    req = urllib.request.Request(
        f"{base_url}/orders", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.load(response)


def run_variant(variant, workdir, sink, cancelled):
    """Post one order with VARIANT's web app and worker; return the spans it produced."""
    env = {
        "PROPAGATION": variant,
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        # Tags every span of this variant, so that variants can share one sink.
        "OTEL_RESOURCE_ATTRIBUTES": f"demo.variant={variant}",
        # Export every 100 ms instead of every 5 s: the demo waits for the spans.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "ORDERS_DB": str(workdir / "orders.db"),
        "CELERY_BROKER_FOLDER": str(workdir / "broker"),
        "QUEUE_PREFIX": f"{variant}-",
    }
    # Node names of their own: on RabbitMQ, two workers called celery@<host> collide.
    workers = [
        start_worker(
            env, workdir / f"orders-worker-{variant}.log",
            extra_args=["--hostname", f"{variant}-orders@%h"],
        ),
        start_worker(
            {**env, "OTEL_SERVICE_NAME": "email-worker"},
            workdir / f"email-worker-{variant}.log",
            extra_args=["--queues", f"{variant}-emails", "--hostname", f"{variant}-emails@%h"],
        ),
    ]

    def still_wanted():
        for worker in workers:
            check_alive(worker)
        if cancelled.is_set():
            raise KeyboardInterrupt

    try:
        web, base_url = start_web(env, workdir / f"web-{variant}.log")
        try:
            post_order(base_url)
            wait_for_spans(
                sink.db_path,
                lambda spans: any(s["name"] == "render_email" for s in spans),
                SPANS_DEADLINE,
                check=still_wanted,
                **{"demo.variant": variant},
            )
        finally:
            stop(web)
    finally:
        stop_all(workers)
    # Both processes flushed on their way out: now every span is in.
    return load_spans(sink.db_path, **{"demo.variant": variant})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    results = {}
    cancelled = threading.Event()
    try:
        with tempfile.TemporaryDirectory(prefix="celery-trace-demo-") as tmp, \
                TraceSink(os.path.join(tmp, "spans.db")) as sink, \
                ThreadPoolExecutor(len(args.variants)) as pool:
            # The variants run side by side, each on a queue of its own: a worker takes
            # seconds to shut down, and one after the other they would keep you waiting.
            runs = [pool.submit(run_variant, v, Path(tmp), sink, cancelled) for v in args.variants]
            try:
                spans = {variant: run.result() for variant, run in zip(args.variants, runs)}
            except BaseException:
                cancelled.set()  # the other runs stop their processes and end early
                raise
    except KeyboardInterrupt:
        print("interrupted: every process the demo started has been stopped", file=sys.stderr)
        return 130
    except (ProcessFailed, TimeoutError, OSError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    for variant in args.variants:
        results[variant] = verdict(spans[variant])
        if not args.json:
            print(f"== {variant}: {STORIES[variant]}")
            print(render(spans[variant]))
            print(f"verdict: {describe(results[variant])}\n")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
