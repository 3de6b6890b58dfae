"""See the bug and the fix: one order per propagation variant, and the traces it leaves.

Starts an embedded trace sink, then for each variant an orders worker (prefork), an email
worker and the web app, posts one order, and prints the trace trees. No Redis, Docker or
tracing backend needed: the broker is a folder (kombu's filesystem transport) unless
CELERY_BROKER_URL is set.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.deployment import Deployment
from harness.processes import ProcessFailed
from tracetools.sink import TraceSink
from tracetools.view import describe, render, verdict

STORIES = {
    "broken": "process_order.delay(): nothing carries the trace context",
    "inject-only": "the web app injects the context, the worker never extracts it",
    "call-site": "injected where the web app enqueues, extracted in task_prerun",
    "fixed": "injected in before_task_publish, extracted in task_prerun",
}
VARIANTS = list(STORIES)
SPANS_DEADLINE = 30.0


def progress(message):
    print(message, file=sys.stderr, flush=True)  # stdout is kept for the traces


def run_variant(variant, workdir, sink, cancelled):
    """Post one order with VARIANT's web app and workers; return the spans it produced."""
    workdir.mkdir()
    broker = os.environ.get("CELERY_BROKER_URL") or "filesystem"
    deployment = Deployment(sink, workdir, variant, broker)

    def still_wanted():
        if cancelled.is_set():
            raise KeyboardInterrupt

    try:
        progress(f"{variant}: starting the web app, the orders worker and the email worker")
        deployment.start()
        progress(f"{variant}: posting an order, waiting for the email worker's spans")
        deployment.post_order()
        deployment.wait_for_spans(
            lambda spans: any(s["name"] == "render_email" for s in spans),
            deadline=SPANS_DEADLINE, check=still_wanted,
        )
    finally:
        deployment.stop()
    # Every process flushed on its way out: now every span is in.
    return deployment.spans()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variants:\n" + "\n".join(f"  {v:<12} {story}" for v, story in STORIES.items()),
    )
    parser.add_argument("--json", action="store_true", help="print the verdicts as one JSON object")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=VARIANTS, metavar="VARIANT",
        help="which variants to run, side by side (default: all four, see below)",
    )
    args = parser.parse_args(argv)
    cancelled = threading.Event()
    try:
        with tempfile.TemporaryDirectory(prefix="celery-trace-demo-") as tmp, \
                TraceSink(os.path.join(tmp, "spans.db")) as sink, \
                ThreadPoolExecutor(len(args.variants)) as pool:
            # The variants run side by side, each on queues of its own: a worker takes
            # seconds to shut down, and one after the other they would keep you waiting.
            runs = [
                pool.submit(run_variant, v, Path(tmp, v), sink, cancelled) for v in args.variants
            ]
            try:
                spans = {variant: run.result() for variant, run in zip(args.variants, runs)}
            except BaseException:
                cancelled.set()  # the other runs stop their processes and end early
                raise
    except KeyboardInterrupt:
        progress("interrupted: every process the demo started has been stopped")
        return 130
    except (ProcessFailed, TimeoutError, OSError, RuntimeError) as error:
        progress(f"demo failed: {error}")
        return 1
    results = {variant: verdict(spans[variant]) for variant in args.variants}
    if args.json:
        print(json.dumps(results))
        return 0
    for variant in args.variants:
        print(f"== {variant}: {STORIES[variant]}")
        print(render(spans[variant]))
        print(f"verdict: {describe(results[variant])}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
