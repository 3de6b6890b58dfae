"""See the bug and the fix: one order per propagation variant, and the traces it leaves.

Starts an embedded trace sink, then for each variant an orders worker (prefork), an email
worker and the web app, posts one order, and prints each trace as a timeline: per span its
service, start, duration and a bar, with the spans cut off from the request's trace marked
orphaned. --html FILE also draws them as waterfalls on one time scale, broken next to
fixed. The variants run at the same time; what they are doing goes to stderr, the traces to
stdout. No Redis, Docker or tracing backend needed: the broker is a folder (kombu's
filesystem transport) unless CELERY_BROKER_URL is set.
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
from tracetools import waterfall
from tracetools.doctor import examine, report
from tracetools.sink import TraceSink
from tracetools.view import describe, render, verdict

# What each variant does with the trace context, and what its traces show.
STORIES = {
    "broken": "every process records spans, nothing carries the trace context",
    "inject-only": "the web app injects the context, the workers never extract it",
    "call-site": "injected where the web app enqueues, extracted in task_prerun",
    "fixed": "injected in before_task_publish, extracted in task_prerun",
}
OUTCOMES = {
    "broken": "both workers' spans start traces of their own: 3 traces",
    "inject-only": "the context reaches the orders worker, unread: still 3 traces",
    "call-site": "the orders worker joins; the email task, sent with .delay(), is lost",
    "fixed": "one trace, from the request to the email worker",
}
VARIANTS = list(STORIES)
PAGE_ORDER = ["broken", "fixed", "inject-only", "call-site"]


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
            lambda spans: any(s["name"] == "render_email" for s in spans), check=still_wanted,
        )
        progress(f"{variant}: the order went through; stopping the processes (a few "
                 "seconds: each sends its last spans as it exits)")
    finally:
        deployment.stop()
    # Every process flushed on its way out: now every span is in.
    return deployment.spans()


def run_variants(variants, otlp_json=None):
    """{variant: the spans of one order} for each of VARIANTS, run side by side; every
    export also appended to the file OTLP_JSON as OTLP JSON lines, if given."""
    cancelled = threading.Event()
    with tempfile.TemporaryDirectory(prefix="celery-trace-demo-") as tmp, \
            TraceSink(os.path.join(tmp, "spans.db"), otlp_json_path=otlp_json) as sink, \
            ThreadPoolExecutor(len(variants)) as pool:
        # The variants run side by side, each on queues of its own: a worker takes seconds
        # to shut down, and one after the other they would keep you waiting.
        runs = [pool.submit(run_variant, v, Path(tmp, v), sink, cancelled) for v in variants]
        try:
            return {variant: run.result() for variant, run in zip(variants, runs)}
        except BaseException:
            cancelled.set()  # the other runs stop their processes and end early
            raise


def write_page(path, spans):
    """The waterfalls of SPANS ({variant: spans}), side by side, as an HTML page at PATH."""
    # The page puts its first two variants in its top row: broken next to fixed, the
    # comparison the page is for; the half fixes come below.
    shown = sorted(spans, key=PAGE_ORDER.index)
    title = " vs ".join(shown[:2]) + (f" (below: {', '.join(shown[2:])})" if shown[2:] else "")
    waterfall.write(path, [(v, STORIES[v], spans[v]) for v in shown],
                    title=f"One order, traced: {title}")


def epilog():
    lines = ["variants: what carries the trace context, and what you will see"]
    for variant, story in STORIES.items():
        lines += [f"  {variant:<12} {story}", f"  {'':<12} -> {OUTCOMES[variant]}"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog(),
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print only the verdicts (traces, orphaned spans, spans), as one JSON object",
    )
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=VARIANTS, metavar="VARIANT",
        help="which variants to run, side by side (default: all four, see below)",
    )
    parser.add_argument(
        "--doctor", action="store_true",
        help="print what `python doctor.py` says of each variant's traces instead",
    )
    parser.add_argument(
        "--html", metavar="FILE",
        help="also write the traces to FILE as waterfalls, broken next to fixed, every bar on "
             "one time scale: one HTML page that needs nothing else, for any browser",
    )
    parser.add_argument(
        "--otlp-json", metavar="FILE",
        help="also append every span the variants' processes export to FILE, as OTLP JSON "
             "lines (what the Collector's file exporter writes): traces for doctor.py",
    )
    args = parser.parse_args(argv)
    for option, path in (("--html", args.html), ("--otlp-json", args.otlp_json)):
        if path and not Path(path).resolve().parent.is_dir():
            parser.error(f"{option} {path}: no folder {Path(path).resolve().parent}")
    try:
        spans = run_variants(args.variants, args.otlp_json)
    except KeyboardInterrupt:
        progress("interrupted: every process the demo started has been stopped")
        return 130
    except (ProcessFailed, TimeoutError, OSError, RuntimeError) as error:
        progress(f"demo failed: {error}")
        return 1
    results = {variant: verdict(spans[variant]) for variant in args.variants}
    if args.json:
        print(json.dumps(results))
    elif args.doctor:
        for variant in args.variants:
            print(f"== {variant}: {STORIES[variant]}")
            print(f"{report(examine(spans[variant]))}\n")
    else:
        for variant in args.variants:
            print(f"== {variant}: {STORIES[variant]}")
            print(render(spans[variant]))
            print(f"verdict: {describe(results[variant])}\n")
    if args.html:
        try:
            write_page(args.html, spans)
        except OSError as error:
            progress(f"demo failed: could not write {args.html}: {error}")
            return 1
        progress(f"wrote {args.html}: the waterfalls, side by side; open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
