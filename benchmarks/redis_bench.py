"""Set-up 2: tasks per second, end to end, on Redis with prefork workers: all variants in turn.

    python -m benchmarks.redis_bench --slots 10 --batch-size 600

One worker per variant, each the repository's own (tasks.py, prefork, one pool process) with
benchmarks/bench_tasks.py included, each exporting its spans over OTLP/HTTP to a trace sink
in this process. They start consuming nothing. A producer process per variant
(benchmarks/redis_fill.py) queues its batches first, one queue per slot: mark, 600 trivial
tasks, mark. Then, slot after slot, each variant in turn is told to consume its next queue
(Celery's add_consumer remote control), and the two marks time the batch: one pool process
runs a queue in order.

Why turns: this shared VM has spells, from tens of milliseconds to seconds, when everything
runs at half speed. Batches of every variant a second apart meet the same spells, so their
ratios, slot by slot, hold steady where whole runs minutes apart do not. Why 600 tasks: the
batch span processor exports every 512 spans, so each batch includes that work too.

Prints one JSON object: per variant, each slot's tasks per second and pool-process CPU.
"""

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from celery import Celery

from harness.deployment import Deployment
from harness.polling import poll_until
from harness.processes import ROOT, stop_all
from tracetools.sink import TraceSink

VARIANTS = ("untraced", "broken", "fixed") + (
    ("auto",) if importlib.util.find_spec("opentelemetry.instrumentation.celery") else ())


def deployment(variant, redis_url, sink, folder):
    """One variant's worker: the example app with benchmarks/bench_tasks.py included."""
    env = {
        "BENCH_VARIANT": variant,
        # The SDK's own export schedule, as in production, not the tests' 100 ms.
        "OTEL_BSP_SCHEDULE_DELAY": "5000",
    }
    if variant == "untraced":
        env["OTEL_SDK_DISABLED"] = "true"
    workdir = folder / variant
    workdir.mkdir()
    # tasks.py installs PROPAGATION; bench_tasks.py undoes the fix (celery_signals) for
    # untraced and auto.
    bench = Deployment(sink, workdir, "broken" if variant == "broken" else "fixed", redis_url,
                       env=env)
    bench.worker_args += [
        "--include", "benchmarks.bench_tasks",
        # Nothing to consume until told to: a queue that stays empty.
        "--queues", bench.queue_prefix + "idle",
        # No log line per task: it would cost more than the trivial task itself.
        "--loglevel", "WARNING",
    ]
    return bench


def fill(deployments, queues, marks, batch_size, deadline):
    """Run every variant's producer at once (nothing is timed yet); wait for them all."""
    producers = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.redis_fill", "--variant", variant,
             "--batch-size", str(batch_size), "--marks", str(marks), *queues[variant]],
            env={**os.environ, **deployment.env}, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for variant, deployment in deployments.items()
    ]
    try:
        for producer in producers:
            _, errors = producer.communicate(timeout=deadline)
            if producer.returncode != 0:
                raise RuntimeError(f"a producer failed:\n{errors[-2000:]}")
    finally:
        for producer in producers:
            if producer.poll() is None:
                producer.kill()
                producer.wait()


def batch_figures(marks, queue, batch_size):
    start, end = (json.loads((marks / f"{queue}.{edge}").read_text()) for edge in ("start", "end"))
    return {
        "tasks_per_second": batch_size / (end["clock"] - start["clock"]),
        # The pool process runs the tasks and records and exports their spans; the main
        # process, which fetches, hands over and acknowledges messages, does no tracing.
        "pool_cpu_us": (end["cpu"] - start["cpu"]) / batch_size * 1e6,
    }


def worker_spans(deployment):
    return sum(span["service"] == "orders-worker" for span in deployment.spans())


def measure(variants, slots, batch_size, redis_url, deadline, folder):
    marks = folder / "marks"
    marks.mkdir()
    control = Celery(broker=redis_url).control  # remote control only: no tasks, no tracing
    results = {v: [] for v in variants}
    with TraceSink(str(folder / "spans.db")) as sink:
        deployments = {v: deployment(v, redis_url, sink, folder) for v in variants}
        queues = {
            v: [f"{d.queue_prefix}slot{slot}" for slot in range(slots)]
            for v, d in deployments.items()
        }
        nodes = {v: f"orders-{d.run_id}@{socket.gethostname()}" for v, d in deployments.items()}
        try:
            for d in deployments.values():
                d.start("worker")
            fill(deployments, queues, marks, batch_size, deadline)  # while the workers start

            def alive():
                for d in deployments.values():
                    d.check_alive()  # a worker that died fails the run now, with its log

            poll_until(lambda: len(control.ping(list(nodes.values()), timeout=0.5))
                       == len(variants), deadline, "every worker answering", check=alive,
                       interval=0.02)
            for slot in range(slots):
                for v in variants[slot % len(variants):] + variants[:slot % len(variants)]:
                    queue = queues[v][slot]
                    if not control.add_consumer(queue, destination=[nodes[v]], reply=True,
                                                timeout=5):
                        raise TimeoutError(f"{nodes[v]} did not answer add_consumer in 5s")
                    poll_until((marks / f"{queue}.end").exists, deadline, f"{v}'s batch",
                               check=deployments[v].check_alive, interval=0.02)
                    results[v].append(batch_figures(marks, queue, batch_size))
        finally:
            stop_all((p for d in deployments.values() for p in d.processes()), deadline=30.0)
            delete_keys(redis_url, [d.queue_prefix for d in deployments.values()])
        # Checks that each variant does what it says (no span untraced, one per task
        # otherwise) and that no span queue dropped any.
        tasks = slots * (batch_size + 2)
        summary = {}
        for v, d in deployments.items():
            expected = 0 if v == "untraced" else tasks
            poll_until(lambda: worker_spans(d) >= expected, deadline, f"{v}'s spans")
            summary[v] = {
                "tasks_per_second": statistics.median(s["tasks_per_second"] for s in results[v]),
                "pool_cpu_us": statistics.median(s["pool_cpu_us"] for s in results[v]),
                "worker_spans_per_task": worker_spans(d) / tasks,
                "slots": results[v],
            }
    return summary


def delete_keys(redis_url, prefixes):
    """Delete the queues (and kombu's bindings of them) the run created."""
    import redis

    client = redis.Redis.from_url(redis_url)
    for prefix in prefixes:
        for key in client.scan_iter(f"*{prefix}*"):
            client.delete(key)
    client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--slots", type=int, default=10, help="batches per variant")
    parser.add_argument("--batch-size", type=int, default=600)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds for each wait")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="celery-bench-") as folder:
        summary = measure(args.variants.split(","), args.slots, args.batch_size,
                          args.redis_url, args.deadline, Path(folder))
    print(json.dumps({"variants": summary}))


if __name__ == "__main__":
    main()
