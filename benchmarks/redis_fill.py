"""Queue the Redis benchmark's batches as one variant's producer (the web app) would.

    python benchmarks/redis_fill.py --variant fixed --batch-size 600 --marks DIR QUEUE...

benchmarks/redis_bench.py runs this with the variant's environment (broker, PROPAGATION,
BENCH_VARIANT, OTLP endpoint): install() connects receivers for the whole process, so each
variant publishes from a process of its own. Each QUEUE gets one batch: a mark task, the
trivial tasks, a mark task. The marks write their files into DIR, named after the queue.
"""

import argparse
import json
import sys
from pathlib import Path

# The app's modules live at the repository root, one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry import trace  # noqa: E402

from benchmarks.bench_tasks import VARIANT, mark, noop  # noqa: E402 (tasks.py, then the variant)
from tracing import flush_tracing, setup_tracing  # noqa: E402


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
