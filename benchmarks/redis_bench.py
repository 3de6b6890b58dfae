"""Set-up 2: tasks per second, end to end, on Redis with prefork workers: all variants in turn.

    python benchmarks/redis_bench.py --slots 10 --batch-size 600

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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the app's modules live at the repository root

from celery import Celery  # noqa: E402

from processes import check_alive, start_worker, stop_all  # noqa: E402
from trace_sink import TraceSink, load_spans  # noqa: E402

VARIANTS = ("untraced", "broken", "fixed") + (
    ("auto",) if importlib.util.find_spec("opentelemetry.instrumentation.celery") else ())


def variant_env(variant, redis_url, run_id, sink):
    """The environment of one variant's worker and producer."""
    env = {
        "CELERY_BROKER_URL": redis_url,
        # Queues of this run's own, on a broker that other runs (and the tests) may share.
        "QUEUE_PREFIX": f"{run_id}-{variant}-",
        # tasks.py installs PROPAGATION; bench_tasks.py undoes it for untraced and auto.
        "PROPAGATION": "fixed" if variant == "fixed" else "broken",
        "BENCH_VARIANT": variant,
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        # Tells the variants' spans apart in the one sink.
        "OTEL_RESOURCE_ATTRIBUTES": f"bench.variant={variant},bench.role=worker",
    }
    if variant == "untraced":
        env["OTEL_SDK_DISABLED"] = "true"
    return env


def wait_until(condition, deadline, what, workers=()):
    give_up = time.monotonic() + deadline
    while not condition():
        for worker in workers:
            check_alive(worker)  # a worker that died fails the run now, with its log
        if time.monotonic() > give_up:
            raise TimeoutError(f"{what}: not done after {deadline}s")
        time.sleep(0.02)


def fill(envs, queues, marks, batch_size, deadline):
    """Run every variant's producer at once (nothing is timed yet); wait for them all."""
    producers = [
        subprocess.Popen(
            [sys.executable, str(HERE / "redis_fill.py"), "--variant", variant,
             "--batch-size", str(batch_size), "--marks", str(marks), *queues[variant]],
            env={**os.environ, **env,
                 "OTEL_RESOURCE_ATTRIBUTES": f"bench.variant={variant},bench.role=producer"},
            cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for variant, env in envs.items()
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


def worker_spans(db_path, variant):
    return len(load_spans(db_path, **{"bench.variant": variant, "bench.role": "worker"}))


def measure(variants, slots, batch_size, redis_url, deadline, folder, run_id):
    marks = folder / "marks"
    marks.mkdir()
    control = Celery(broker=redis_url).control  # remote control only: no tasks, no tracing
    queues = {v: [f"{run_id}-{v}-slot{slot}" for slot in range(slots)] for v in variants}
    nodes = {v: f"{v}-{run_id}@bench" for v in variants}
    results = {v: [] for v in variants}
    with TraceSink(str(folder / "spans.db")) as sink:
        envs = {v: variant_env(v, redis_url, run_id, sink) for v in variants}
        workers = {}
        try:
            for v in variants:
                workers[v] = start_worker(envs[v], folder / f"{v}.log", extra_args=[
                    "--include", "benchmarks.bench_tasks", "-n", nodes[v],
                    # Nothing to consume until told to: a queue that stays empty.
                    "-Q", f"{run_id}-{v}-idle",
                    # No log line per task: it would cost more than the trivial task itself.
                    "--loglevel", "WARNING",
                ])
            fill(envs, queues, marks, batch_size, deadline)  # while the workers start
            wait_until(lambda: len(control.ping(list(nodes.values()), timeout=0.5))
                       == len(variants), deadline, "every worker answering", workers.values())
            for slot in range(slots):
                for v in variants[slot % len(variants):] + variants[:slot % len(variants)]:
                    queue = queues[v][slot]
                    if not control.add_consumer(queue, destination=[nodes[v]], reply=True,
                                                timeout=5):
                        raise TimeoutError(f"{nodes[v]} did not answer add_consumer in 5s")
                    wait_until((marks / f"{queue}.end").exists, deadline, f"{v}'s batch",
                               [workers[v]])
                    results[v].append(batch_figures(marks, queue, batch_size))
        finally:
            stop_all(workers.values(), deadline=30.0)
        # Checks that each variant does what it says (no span untraced, one per task
        # otherwise) and that no span queue dropped any.
        tasks = slots * (batch_size + 2)
        summary = {}
        for v in variants:
            expected = 0 if v == "untraced" else tasks
            wait_until(lambda: worker_spans(sink.db_path, v) >= expected, deadline, f"{v}'s spans")
            summary[v] = {
                "tasks_per_second": statistics.median(s["tasks_per_second"] for s in results[v]),
                "pool_cpu_us": statistics.median(s["pool_cpu_us"] for s in results[v]),
                "worker_spans_per_task": worker_spans(sink.db_path, v) / tasks,
                "slots": results[v],
            }
    return summary


def delete_keys(redis_url, run_id):
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*{run_id}*"):
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

    run_id = f"bench-{uuid.uuid4().hex[:12]}"
    try:
        with tempfile.TemporaryDirectory(prefix="celery-bench-") as folder:
            summary = measure(args.variants.split(","), args.slots, args.batch_size,
                              args.redis_url, args.deadline, Path(folder), run_id)
    finally:
        delete_keys(args.redis_url, run_id)
    print(json.dumps({"variants": summary}))


if __name__ == "__main__":
    main()
