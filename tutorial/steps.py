"""Build the fix up one step at a time, and see each step's trace.

    python -m tutorial.steps 4

Starts a trace sink and a real worker (tutorial/steps_app.py, on a folder broker), publishes
from this process inside a span `POST /orders` as the web app would, and prints the traces.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from harness.polling import poll_until
from harness.processes import start, stop, wait_until_ready, worker_args
from tracetools.sink import TraceSink
from tracetools.sources import load
from tracetools.view import describe, render, verdict

STEPS = {
    1: "nothing: each process traces, nothing connects them",
    2: "the web app injects into apply_async(headers=...), the worker reads nothing",
    3: "the worker adds the article's task_prerun handler, which waits for `headers`",
    4: "the worker extracts from task.request, attaches, starts its span",
    5: "a chain of three tasks and a group of two, with headers given at the call site",
    6: "inject in before_task_publish, in every process: the chain again, and a group",
}
# The spans each step must have produced before its traces are printed.
EXPECTED = {
    step: {"charge_payment", "send_confirmation"} for step in (1, 2, 3, 4)
} | {
    5: {"charge_payment", "render_receipt", "write_archive"},
    6: {"charge_payment", "render_receipt", "write_archive"},
}
DEADLINE = 30.0


def publish(step):
    from celery import chain, group

    from tutorial.steps_app import (
        archive_order,
        process_order,
        publish_with_context,
        send_receipt,
    )

    with trace.get_tracer(__name__).start_as_current_span("POST /orders", kind=SpanKind.SERVER):
        if step == 1:
            process_order.delay(1)
        elif step in (2, 3, 4):
            publish_with_context(process_order.s(1))
        elif step == 5:
            publish_with_context(chain(process_order.s(1), send_receipt.s(), archive_order.s()))
            publish_with_context(group(send_receipt.s(2), send_receipt.s(3)))
        else:
            chain(process_order.s(1), send_receipt.s(), archive_order.s()).delay()
            group(send_receipt.s(2), send_receipt.s(3)).delay()


def run(step, folder):
    env = {
        "STEP": str(step),
        "CELERY_BROKER_URL": "filesystem://",
        "CELERY_BROKER_FOLDER": str(folder / "broker"),
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with TraceSink(str(folder / "spans.db")) as sink:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
        os.environ.update(env)  # this process publishes: it reads the same settings
        worker = start(worker_args("solo", app="tutorial.steps_app"), env, folder / "worker.log")
        try:
            wait_until_ready(worker)
            from tracing import flush_tracing, setup_tracing

            setup_tracing("web")
            publish(step)
            flush_tracing()
            expected = EXPECTED[step] | {"POST /orders"}
            poll_until(
                lambda: expected <= {s["name"] for s in load(sink.db_path)}, DEADLINE,
                f"step {step}'s spans",
            )
        finally:
            stop(worker)  # a warm shutdown: the worker flushes what it still holds
        return list(load(sink.db_path))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="steps:\n" + "\n".join(f"  {n}  {what}" for n, what in STEPS.items()),
    )
    parser.add_argument("step", type=int, choices=STEPS, metavar="STEP", help="1 to 6")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="celery-trace-steps-") as folder:
        spans = run(args.step, Path(folder))
    print(f"step {args.step}: {STEPS[args.step]}")
    # The worker's own spans count too: without a consumer span, they are its roots.
    print(render(spans, worker_services=["worker"]))
    print(f"verdict: {describe(verdict(spans, worker_services=['worker']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
