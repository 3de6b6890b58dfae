"""Publish N auto.work tasks with opentelemetry-instrumentation-celery, from inside a span.

Run from the repository root as `python -m tests.apps.auto_instrumented_publish N [eager]`, with
the worker's environment: a producer process like the web app. With `eager`, it also runs
auto.work eagerly (apply()) twice: once inside that span ("eager inside"), once after it.
"""

import sys

from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from tests.apps.auto_instrumented_app import work
from tracing import flush_tracing, setup_tracing

if __name__ == "__main__":
    setup_tracing("auto-producer")
    CeleryInstrumentor().instrument()
    eager = sys.argv[2:] == ["eager"]
    with trace.get_tracer(__name__).start_as_current_span("publish"):
        for number in range(int(sys.argv[1])):
            work.delay(str(number))
        if eager:
            work.apply(("eager inside",))
    if eager:
        work.apply(("eager after",))
    flush_tracing()
