"""Queue the Redis benchmark's batches as one variant's producer (the web app) would.

    python -m benchmarks.redis_fill --variant fixed --batch-size 600 --marks DIR QUEUE...

benchmarks/redis_bench.py runs this with the variant's environment (broker, PROPAGATION,
BENCH_VARIANT, OTLP endpoint): install() connects receivers for the whole process, so each
variant publishes from a process of its own. Each QUEUE gets one batch: a mark task, the
trivial tasks, a mark task. The marks write their files into DIR, named after the queue.
"""

import argparse
import json
from pathlib import Path

from opentelemetry import trace

from benchmarks.bench_tasks import VARIANT, mark, noop  # tasks.py, then the variant
from tracing import flush_tracing, setup_tracing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="must match BENCH_VARIANT")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--marks", type=Path, required=True, help="folder for the mark files")
    parser.add_argument("queues", nargs="+")
    args = parser.parse_args()
    if args.variant != VARIANT:
        raise SystemExit(f"--variant {args.variant} but BENCH_VARIANT={VARIANT}")

    if VARIANT != "untraced":
        setup_tracing("bench-producer")
    for queue in args.queues:
        # One enclosing span per batch, like the web request a real producer publishes from.
        with trace.get_tracer(__name__).start_as_current_span("benchmark.publish"):
            mark.apply_async((str(args.marks / f"{queue}.start"),), queue=queue)
            for number in range(args.batch_size):
                noop.apply_async((number,), queue=queue)
            mark.apply_async((str(args.marks / f"{queue}.end"),), queue=queue)
    flush_tracing()  # every producer span is in the trace sink before the workers start
    print(json.dumps({"published": len(args.queues) * (args.batch_size + 2)}))


if __name__ == "__main__":
    main()
