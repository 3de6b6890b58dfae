"""The fix and nothing else: carry the trace context from whoever publishes a task to the
worker that runs it. Copy this into a Celery project whose processes set up an
OpenTelemetry SDK, and call install() in every one of them: the web app that publishes,
and every worker (workers publish too: chain steps, callbacks, retries).

celery_signals.py is the same fix, made ready for production: chapter 3 says what it adds.
"""

from celery import signals
from opentelemetry import context, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind

tracer = trace.get_tracer(__name__)


def inject_into_message(headers, **_):
    # Sent for every message, the ones Celery publishes itself included, in the process
    # and context that publishes it.
    inject(headers)


class RequestGetter(Getter):
    """Reads trace headers from a task request: each message header is an attribute there."""

    def get(self, request, key):
        value = getattr(request, key, None)
        return [value] if isinstance(value, str) else None

    def keys(self, request):
        return []


def start_task_span(task, **_):
    # task_prerun sends no headers: the context travels on task.request.
    parent = extract(task.request, getter=RequestGetter())
    span = tracer.start_span(f"celery.run {task.name}", context=parent, kind=SpanKind.CONSUMER)
    # Attach it, so that the task's own spans become its children; keep the token.
    task.request.otel_span = span, context.attach(trace.set_span_in_context(span, parent))


def end_task_span(task, **_):
    # Sent after success, failure and retry alike: the next task starts clean.
    span, token = task.request.otel_span
    span.end()
    context.detach(token)


def install_publish_side():
    signals.before_task_publish.connect(inject_into_message, weak=False)


def install_worker_side():
    signals.task_prerun.connect(start_task_span, weak=False)
    signals.task_postrun.connect(end_task_span, weak=False)


def install():
    install_publish_side()
    install_worker_side()
