"""Carry the OpenTelemetry trace context from a Celery producer to its worker, by hand.

Call install() once in every process that loads your Celery app: the web process that
publishes tasks and every worker that runs them. This module imports nothing of the app
around it, so it can be copied into any Celery project.
"""

import functools
import logging
import math
import sys
import time
import weakref
from contextvars import ContextVar
from datetime import datetime
from typing import NamedTuple

from celery import Celery, signals
from celery.app.task import Context as TaskRequest
from celery.exceptions import Reject
from opentelemetry import context, trace
from opentelemetry.propagate import extract, get_global_textmap, inject
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# A caller sets this header to start the task in a new trace that only links back to its
# producer: for fan-outs that would make one trace too large to read.
NEW_TRACE_HEADER = "otel_new_trace"
# Set at publish time so the worker can tell how long the message waited in the queue.
PUBLISHED_AT_HEADER = "otel_published_at"
# Set on a retry's message: the attempt that failed, for the next attempt to link to.
PREVIOUS_ATTEMPT_HEADER = "otel_previous_attempt"
# A legitimate traceparent is 55 characters and tracestate at most 32 entries. Anything
# far larger is garbage or hostile: the SDK would log it whole in a warning.
MAX_HEADER_LENGTH = 8192

_tracer = trace.get_tracer(__name__)  # install() may give it a provider of its own
# The publish span lives from before_task_publish to after_task_publish, which Celery sends
# in the same thread (or greenlet) around one message: a ContextVar keeps concurrent
# publishes in other threads apart.
_publish_span = ContextVar("celery_publish_span", default=None)
# Task id -> the worker's Request for it, in the worker's main process; see _remember_received.
_received = weakref.WeakValueDictionary()


class _Installed(NamedTuple):
    """What install() changed, for uninstall() to change back."""

    receivers: list  # (signal, receiver) pairs
    send_task: object  # our wrapper of Celery.send_task


_installed = None
# Whether the receivers have stood aside for CeleryInstrumentor already; see _standing_aside.
_stood_aside = False
_log = logging.getLogger(__name__)


def install(tracer_provider=None):
    """Connect the signal receivers; uninstall() disconnects them again.

    Spans go to TRACER_PROVIDER, or to the global one. Calling install() again changes
    nothing, not even the provider: uninstall() first to change it.
    """
    global _installed, _tracer
    if _installed is not None:
        return
    _refuse_beside_auto_instrumentation()
    _tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
    receivers = [
        (signals.before_task_publish, _start_publish_span),
        (signals.after_task_publish, _end_publish_span),
        (signals.task_prerun, _continue_trace),
        (signals.task_postrun, _end_consumer_span),
        (signals.task_received, _remember_received),
        (signals.task_failure, _record_failure),
        (signals.task_retry, _record_retry),
        (signals.task_revoked, _record_revoked),
    ]
    for signal, receiver in receivers:
        # weak=False: Celery's signals hold weak references by default, and a receiver
        # that has been garbage-collected fails silently.
        signal.connect(receiver, weak=False)
    # Celery sends no signal when a publish fails: after_task_publish never comes, and the
    # PRODUCER span would stay open, unexported, in the ContextVar. Every publish goes
    # through Celery.send_task, so that is where a failure is caught.
    send_task = Celery.send_task = _ending_failed_publish(Celery.send_task)
    _installed = _Installed(receivers, send_task)


def uninstall():
    """Disconnect what install() connected; return whether it had been installed."""
    global _installed
    if _installed is None:
        return False
    for signal, receiver in _installed.receivers:
        signal.disconnect(receiver)
    # If something wrapped send_task after us, ours stays under it, idle: with no publish
    # span ever started, it has nothing to end.
    if Celery.send_task is _installed.send_task:
        Celery.send_task = _installed.send_task.__wrapped__
    _installed = None
    return True


_BESIDE_AUTO_INSTRUMENTATION = (
    "CeleryInstrumentor is active in this process: keep it or celery_signals, not both. "
    "To keep celery_signals, leave celery out of the auto-instrumentation "
    "(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=celery for opentelemetry-instrument)."
)


def _auto_instrumented():
    # opentelemetry-instrumentation-celery connects the same signals: with both, every
    # message is injected twice and every task gets two consumer spans, and the two detach
    # each other's contexts. Look only if the package is loaded: this module must not load it.
    module = sys.modules.get("opentelemetry.instrumentation.celery")
    return module is not None and module.CeleryInstrumentor().is_instrumented_by_opentelemetry


def _refuse_beside_auto_instrumentation():
    if _auto_instrumented():
        raise RuntimeError(_BESIDE_AUTO_INSTRUMENTATION)


def _standing_aside():
    """True once CeleryInstrumentor is active: it then records publishes and runs alone.

    Every receiver that starts a record (a span, or a message remembered for one) asks this
    first. The ones that finish a record of ours never do: a span started before the
    instrumentor arrived must still end, and its context be detached.
    """
    # Instrumented after install() (the article does it in worker_process_init): a receiver
    # cannot refuse, since Celery only logs what receivers raise. Ours step back, and say so.
    global _stood_aside
    if not _auto_instrumented():
        return False
    if not _stood_aside:
        _stood_aside = True
        _log.error("%s Meanwhile celery_signals records nothing.", _BESIDE_AUTO_INSTRUMENTATION)
    return True


def _ending_failed_publish(send_task):
    @functools.wraps(send_task)
    def send_task_ending_failed_publish(*args, **kwargs):
        try:
            return send_task(*args, **kwargs)
        except BaseException as error:
            _end_publish_span(error=error)
            raise

    return send_task_ending_failed_publish


def _start_publish_span(sender, headers, body=None, routing_key=None, **_):
    if _standing_aside():
        return
    # sender is the task *name* here: the producer may not have the task registered.
    span = _tracer.start_span(
        f"celery.apply {sender}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "celery",
            "messaging.operation.type": "send",
            "messaging.destination.name": routing_key or "",
            "messaging.message.id": _message_id(headers, body),
            "celery.task.name": sender,
        },
    )
    # Injecting here rather than at the call site also covers the messages Celery publishes
    # itself: chain steps, link callbacks and errbacks, retries, chord bodies. Those are
    # published while the parent task's context is attached, so the trace carries on.
    if span.get_span_context().is_valid:
        # The propagator's fields (traceparent, tracestate, baggage) must say what this
        # context holds and nothing else: another library may have written its own there
        # (Sentry puts its baggage in), which the worker would take for ours. A process
        # with no tracer provider has no context to send: it leaves the headers as given.
        for field in get_global_textmap().fields:
            headers.pop(field, None)
        inject(headers, context=trace.set_span_in_context(span))
    headers[PUBLISHED_AT_HEADER] = time.time()
    if headers.get("retries"):
        # self.retry() publishes from inside the attempt that failed, so the current span
        # is that attempt's: hand it on, in traceparent form, for a link.
        failed = trace.get_current_span().get_span_context()
        headers[PREVIOUS_ATTEMPT_HEADER] = f"00-{failed.trace_id:032x}-{failed.span_id:016x}-01"
    _publish_span.set(span)


def _message_id(headers, body):
    # Task protocol 2 (the default) carries the task id in the headers; protocol 1, still
    # supported (task_protocol = 1), only in the body.
    if "id" in headers:
        return headers["id"]
    return body.get("id", "") if isinstance(body, dict) else ""


def _end_publish_span(error=None, **_):
    span = _publish_span.get()
    if span is not None:
        _publish_span.set(None)
        if error is not None:
            _mark_failed(span, error)
        span.end()


def _header(request, key):
    # Headers given to apply_async become attributes of the request. Celery 5.3 and later
    # also keep them in request.headers, which is the only place eager mode puts them.
    value = getattr(request, key, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(key)
    return value


class _RequestGetter(Getter):
    """Reads propagation fields from a task request, as the worker received them."""

    def get(self, request, key):
        value = _header(request, key)
        # Only well-formed values reach the propagator; the span records the rest as a
        # malformed context (_trace_context). Trace context and baggage are ASCII; a lone
        # surrogate (JSON carries "\ud800") would make the SDK's baggage propagator raise
        # UnicodeEncodeError.
        if isinstance(value, str) and len(value) <= MAX_HEADER_LENGTH and value.isascii():
            return [value]
        return None

    def keys(self, request):
        return list(getattr(request, "headers", None) or {})


_getter = _RequestGetter()
_traceparent = TraceContextTextMapPropagator()


def _span_context(ctx):
    return trace.get_current_span(ctx).get_span_context()


def _trace_context(request, extracted):
    """What REQUEST's message carried for the worker to continue, EXTRACTED being what the
    propagators made of it: "valid" (a usable trace context), "absent" (no traceparent, or
    what the propagators read instead) or "malformed" (one was there, but refused or
    unparsable)."""
    # Baggage travels beside a trace context and tracestate only qualifies a traceparent:
    # alone, neither is a trace to continue.
    fields = get_global_textmap().fields - {"baggage", "tracestate"}
    if all(_header(request, field) is None for field in fields):
        return "absent"
    # The getter refuses oversized and non-ASCII values, and the propagator unparsable ones:
    # either way there is nothing to continue, though the publisher did send something.
    return "valid" if _span_context(extracted).is_valid else "malformed"


def _link_to(span_context):
    # A link to garbage would point nowhere: keep only well-formed span contexts.
    return [Link(span_context)] if span_context.is_valid else []


def _previous_attempt(request):
    value = _header(request, PREVIOUS_ATTEMPT_HEADER)
    if not isinstance(value, str):
        return []
    return _link_to(_span_context(_traceparent.extract({"traceparent": value})))


def _continue_trace(task, **_):
    # task_prerun has no headers argument: a receiver declared with headers=None always sees
    # None. The context travels on the task request instead.
    if _standing_aside():
        return
    _start_consumer_span(task, _producer_context(task.request))


class _Producer(NamedTuple):
    """What the spans that record a run continue, from its message."""

    parent: object  # the context to start them in
    links: list
    trace_context: str  # what the message carried: see _trace_context


def _producer_context(request):
    """The parent context and the links of the spans that record REQUEST's run, and what
    its message carried."""
    # Extracted once per run: what the message carried is read off the same result.
    extracted = parent = extract(request, getter=_getter)
    if request.is_eager and not _span_context(parent).is_valid:
        # Eager mode (task_always_eager, task.apply()) publishes nothing, so there was no
        # before_task_publish and there is nothing to extract. The task runs inside its
        # caller: continue the caller's context, or the task would start a trace of its own.
        parent = context.get_current()
    # Only a retry has an attempt before it to link to.
    links = _previous_attempt(request) if request.retries else []
    if _header(request, NEW_TRACE_HEADER):
        # The caller asked for a new trace: start a root that links back to the producer.
        links += _link_to(_span_context(parent))
        parent = context.Context()
    return _Producer(parent, links, _trace_context(request, extracted))


def _start_consumer_span(task, producer):
    request = task.request
    attributes = {**_consumer_attributes(request, task.name, producer.trace_context),
                  **_waiting_times(request)}
    span = _tracer.start_span(
        f"celery.run {task.name}", context=producer.parent, kind=SpanKind.CONSUMER,
        attributes=attributes, links=producer.links,
    )
    # Attach the consumer span itself, so the task's own spans become its children. The
    # token and span live on this task's request, never in a module global: the threads,
    # gevent and eventlet pools run many tasks at once in one process.
    token = context.attach(trace.set_span_in_context(span, producer.parent))
    request.otel_consumer = _Running(span, token)


def _consumer_attributes(request, task_name, trace_context):
    attributes = {
        "messaging.system": "celery",
        "messaging.operation.type": "process",
        "messaging.destination.name": (request.delivery_info or {}).get("routing_key") or "",
        "messaging.message.id": request.id,
        "celery.task.name": task_name,
        "celery.attempt": (request.retries or 0) + 1,
        # An eager run (task.apply(), task_always_eager) had no message: a root span of one
        # is not an orphan of a lost publish, and the doctor must not count it as one.
        "celery.is_eager": bool(request.is_eager),
    }
    if trace_context is not None:
        # What the message carried, whatever the span's parent became: with it, the doctor
        # can prove a root span's cause (not injected, or injected and not extracted).
        attributes["celery.trace_context"] = trace_context
    # The task that published this one, if any: a chain step, callback or retry has one. A
    # consumer span with no producer span tells a republish that lost the context (the
    # parent is set) from a producer that never sent it (no parent).
    for attribute, task_id in (("celery.parent_task_id", request.parent_id),
                               ("celery.root_task_id", request.root_id)):
        if isinstance(task_id, str):
            attributes[attribute] = task_id
    if (request.delivery_info or {}).get("redelivered"):
        # Delivered before, to a worker that never acknowledged it (it died mid-task): this
        # is not the first attempt, although the first left no span to say so.
        attributes["celery.redelivered"] = True
    return attributes


class _Running(NamedTuple):
    """The consumer span of the task running on a request, and the token to detach."""

    span: object
    token: object


def _running(request):
    # Message headers become request attributes too: a header named otel_consumer is there
    # whenever task_prerun did not overwrite it. Only our own record counts.
    consumer = getattr(request, "otel_consumer", None)
    return consumer if isinstance(consumer, _Running) else None


def _waiting_times(request):
    """How long a countdown or eta held the message back, and how long it then waited for a
    worker, in milliseconds: a countdown is a delay that was asked for, not queue time."""
    published_at = _timestamp(_header(request, PUBLISHED_AT_HEADER))
    due = _timestamp(request.eta)
    times = {}
    if published_at is not None and due is not None:
        times["celery.scheduled_delay_ms"] = _milliseconds(max(0.0, due - published_at))
    waiting_since = max((t for t in (published_at, due) if t is not None), default=None)
    if waiting_since is not None:
        times["celery.queue_time_ms"] = _milliseconds(max(0.0, time.time() - waiting_since))
    return {name: value for name, value in times.items() if value is not None}


def _timestamp(value):
    """Seconds since the epoch from a time.time() number or an ISO 8601 eta; else None."""
    try:
        if isinstance(value, str):  # Celery sends eta as ISO 8601 text
            value = datetime.fromisoformat(value)
        if isinstance(value, datetime):
            value = value.timestamp()
        # bool is an int, and JSON carries ints of any size: float(10**400) overflows.
        if type(value) not in (int, float):
            return None
        value = float(value)
    except (ValueError, OverflowError, OSError):
        return None
    return value if math.isfinite(value) else None


def _milliseconds(seconds):
    milliseconds = seconds * 1000
    return milliseconds if math.isfinite(milliseconds) else None


def _end_consumer_span(task, state=None, retval=None, **_):
    # task_postrun is sent from a finally block, so success, failure and retry all end here
    # and the next task on this worker never inherits this one's context.
    consumer = _running(task.request)
    if consumer is None:
        return
    span, token = consumer
    task.request.otel_consumer = None
    span.set_attribute("celery.state", state or "UNKNOWN")
    if isinstance(retval, Reject) and not retval.requeue:
        # The task rejected its message for good: this span is the failure's record, and
        # the main process's task_failure that follows adds none (_record_failure).
        _mark_failed(span, retval)
    span.end()
    context.detach(token)


def _remember_received(request, **_):
    if _standing_aside():
        return  # _record_failure stands aside too: nothing to keep this for
    # task_received: sent in the worker's main process for every message it accepts, with
    # the worker's Request. Some failures are reported from here later, with nothing but the
    # task id (_record_failure): the Request is where the producer's context then is.
    # A weak reference: the entry goes as soon as the worker lets go of the Request, once
    # it is done with the task. So this holds no more tasks than the worker itself holds
    # (its prefetched, running and eta-scheduled ones), however many it has received; and
    # a failure can only be reported for a task the worker still holds.
    _received[request.id] = request


def _record_failure(sender, exception, task_id=None, **_):
    consumer = _running(sender.request)
    if consumer is not None:
        _mark_failed(consumer.span, exception)  # task_postrun ends the span
        return
    if _standing_aside():
        return  # CeleryInstrumentor records the failures of the runs it records
    # Reported by the worker's main process, outside the run: a hard time limit or a lost
    # pool process (both took the run span with them), a message the worker cannot use,
    # or a reject.
    if isinstance(exception, Reject):
        return  # the run span recorded it when it ended (_end_consumer_span)
    received = _received.get(task_id)
    if received is None:
        request = TaskRequest(id=task_id)  # no message to read: a record with the id alone
    elif getattr(received, "otel_failure_recorded", False):
        return  # Celery 5.7 sends task_failure twice for one hard time limit
    else:
        received.otel_failure_recorded = True
        # What the pool process would have built from the same message headers.
        request = TaskRequest(received.request_dict)
    producer = _producer_context(request)
    # With no message to read, what it carried is unknown: "absent" would accuse its
    # publisher of sending nothing.
    carried = None if received is None else producer.trace_context
    span = _tracer.start_span(
        f"celery.failed {sender.name}", context=producer.parent, kind=SpanKind.CONSUMER,
        attributes=_consumer_attributes(request, sender.name, carried), links=producer.links,
    )
    _mark_failed(span, exception)
    span.end()


def _mark_failed(span, exception):
    span.record_exception(exception)
    span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))


def _record_retry(sender, reason, **_):
    consumer = _running(sender.request)
    if consumer is not None:
        consumer.span.set_attribute("celery.retry.reason", str(reason))


def _record_revoked(sender, request, terminated=False, expired=False, **_):
    if _standing_aside():
        return  # CeleryInstrumentor records no revoked task: neither do we beside it
    # A task revoked before it starts never reaches task_prerun. Leave a short span in the
    # producer's trace, so the trace shows where the work stopped. Nothing is attached, so
    # no context can leak into the next task.
    reason = "expired" if expired else "terminated" if terminated else "revoked"
    producer = _producer_context(request)
    attributes = _consumer_attributes(request, sender.name, producer.trace_context)
    span = _tracer.start_span(
        f"celery.revoked {sender.name}", context=producer.parent, kind=SpanKind.CONSUMER,
        attributes={**attributes, "celery.revoked.reason": reason}, links=producer.links,
    )
    span.end()
