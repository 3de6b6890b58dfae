"""celery_signals in one process: its API, eager mode, what a consumer span says the message
carried, and a publish that fails.

Eager mode is what it is only in one process: the task runs inside its caller, with no
broker and no worker. Everything else about propagation is proven on real workers.
"""

import uuid
from types import SimpleNamespace

import pytest
from celery import Celery, signals
from celery.app.task import Context as TaskRequest
from celery.app.trace import build_tracer
from kombu.exceptions import OperationalError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import celery_signals

app = Celery("in-process", broker="memory://", set_as_current=False)
app.conf.update(task_ignore_result=True)


@app.task(name="in_process.add")
def add(number):
    return number + 1


@app.task(name="in_process.calls_add")
def calls_add(number):
    # task.apply() from inside a running task: eager mode inside a worker.
    return add.apply((number,)).get()


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def install(tracer_provider):
    """install() with spans kept in memory; if this process had it installed before (the
    web app's tests import tasks.py), it is installed again afterwards."""
    was_installed = celery_signals.uninstall()
    yield lambda: celery_signals.install(tracer_provider=tracer_provider)
    celery_signals.uninstall()
    if was_installed:
        celery_signals.install()


@pytest.fixture
def tracer(tracer_provider):
    return tracer_provider.get_tracer("test")


def finished(exporter):
    return {span.name: span for span in exporter.get_finished_spans()}


def receivers():
    """Every receiver of every Celery signal, and Celery.send_task."""
    found = {
        name: list(signal.receivers) for name, signal in vars(signals).items()
        if isinstance(signal, signals.Signal)
    }
    return found, Celery.send_task


# -- the API ----------------------------------------------------------------------------


def test_uninstall_undoes_exactly_what_install_did(install):
    before = receivers()
    install()
    assert receivers() != before
    assert celery_signals.uninstall() is True
    assert receivers() == before
    assert celery_signals.uninstall() is False


def test_installing_twice_is_harmless(install, tracer, exporter):
    install()
    install()
    with tracer.start_as_current_span("request"):
        add.apply_async((1,))
    assert [span.name for span in exporter.get_finished_spans()].count(
        "celery.apply in_process.add"
    ) == 1


# -- eager mode ---------------------------------------------------------------------------


@pytest.fixture
def always_eager():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def test_an_eager_task_runs_under_the_span_that_called_it(
    install, tracer, exporter, always_eager
):
    install()
    with tracer.start_as_current_span("request") as request:
        add.delay(1)
    run = finished(exporter)["celery.run in_process.add"]
    assert run.context.trace_id == request.get_span_context().trace_id
    assert run.parent.span_id == request.get_span_context().span_id
    # Nothing was published, so the run says so: the doctor must not take it for a message
    # that lost its context.
    assert run.attributes["celery.is_eager"] is True
    assert run.attributes["celery.trace_context"] == "absent"


def test_apply_inside_a_task_runs_under_that_task(install, tracer, exporter):
    install()
    with tracer.start_as_current_span("request") as request:
        calls_add.apply((1,))
    spans = finished(exporter)
    outer, inner = spans["celery.run in_process.calls_add"], spans["celery.run in_process.add"]
    assert outer.parent.span_id == request.get_span_context().span_id
    assert inner.parent.span_id == outer.context.span_id
    assert inner.context.trace_id == request.get_span_context().trace_id


# -- what the message carried ------------------------------------------------------------

TRACE_ID, SPAN_ID = "ab" * 16, "cd" * 8
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
run_add = build_tracer(add.name, add, app=app)


def run_as_worker(headers):
    """Run `add` as a worker's pool process does, from a message carrying HEADERS (Celery
    makes each message header an attribute of the request); return the task id."""
    task_id = str(uuid.uuid4())
    request = {"id": task_id, "is_eager": False, "delivery_info": {}, **headers}
    run_add(task_id, (1,), {}, request)
    return task_id


@pytest.mark.parametrize("headers, carried", [
    ({"traceparent": TRACEPARENT}, "valid"),
    ({"traceparent": TRACEPARENT, "tracestate": "=,not a tracestate"}, "valid"),
    ({}, "absent"),
    ({"baggage": "user=42"}, "absent"),  # baggage is no trace context
    ({"traceparent": "00-not-a-traceparent-01"}, "malformed"),
    ({"traceparent": TRACEPARENT + "-" + "0" * celery_signals.MAX_HEADER_LENGTH}, "malformed"),
    ({"traceparent": TRACEPARENT.replace("ab", "áb", 1)}, "malformed"),
    ({"traceparent": {"traceparent": TRACEPARENT}}, "malformed"),
    ({"tracestate": "vendor=1"}, "absent"),  # it only qualifies a traceparent
])
def test_the_consumer_span_says_what_the_message_carried(install, exporter, headers, carried):
    install()
    task_id = run_as_worker(headers)
    run = finished(exporter)["celery.run in_process.add"]
    assert run.attributes["messaging.message.id"] == task_id
    assert run.attributes["celery.trace_context"] == carried
    assert run.attributes["celery.is_eager"] is False
    if carried == "valid":
        assert (f"{run.context.trace_id:032x}", f"{run.parent.span_id:016x}") == (
            TRACE_ID, SPAN_ID
        )
    else:
        assert run.parent is None


# -- beside the auto-instrumentation ---------------------------------------------------


@pytest.fixture
def instrumentor_arrives_later(install, monkeypatch):
    """install(), then CeleryInstrumentor, as the article activates it in
    worker_process_init; uninstrumented afterwards."""
    instrumentor = pytest.importorskip("opentelemetry.instrumentation.celery").CeleryInstrumentor
    install()
    # celery_signals says it stands aside once per process: make this test's the first time.
    monkeypatch.setattr(celery_signals, "_stood_aside", False)
    instrumentor().instrument()
    yield
    instrumentor().uninstrument()


def test_every_receiver_stands_aside_when_the_instrumentor_arrives_later(
    instrumentor_arrives_later, tracer, exporter, caplog
):
    with tracer.start_as_current_span("request"):
        add.apply_async((1,), queue="beside-the-instrumentor")
    task_id = run_as_worker({"traceparent": TRACEPARENT})
    # What the worker's main process sends: a message accepted, a task revoked before it
    # ran, a failure reported without a run (a hard time limit).
    message = TaskRequest(id=str(uuid.uuid4()), traceparent=TRACEPARENT)
    signals.task_received.send(sender=None, request=SimpleNamespace(
        id=message.id, request_dict={"id": message.id, "traceparent": TRACEPARENT}
    ))
    signals.task_revoked.send(sender=add, request=message, terminated=False, signum=None,
                              expired=False)
    signals.task_failure.send(sender=add, task_id=task_id, exception=TimeoutError("time limit"),
                              args=(), kwargs={}, traceback=None, einfo=None)
    assert [span.name for span in exporter.get_finished_spans()] == ["request"]
    assert message.id not in celery_signals._received  # white-box: nothing held for later
    assert caplog.text.count("Meanwhile celery_signals records nothing") == 1


# -- a publish that fails ---------------------------------------------------------------


def test_a_failed_publish_ends_its_producer_span_with_the_error(install, tracer, exporter):
    install()
    dead = Celery("dead-broker", broker="redis://127.0.0.1:1/0", set_as_current=False)
    dead.conf.update(broker_connection_timeout=1, task_publish_retry=False)
    with tracer.start_as_current_span("request") as request:
        # kombu raises OperationalError; Celery 5.2's kombu beside redis-py 8, a TypeError.
        with pytest.raises((OperationalError, TypeError)) as raised:
            dead.send_task("in_process.add", (1,))
        # The next publish in this thread is a child of the request, as if nothing happened.
        add.apply_async((2,))
    spans = exporter.get_finished_spans()
    failed, published = [span for span in spans if span.name == "celery.apply in_process.add"]
    assert failed.status.status_code == StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert failed.events[0].attributes["exception.type"].endswith(type(raised.value).__name__)
    for span in (failed, published):
        assert span.parent.span_id == request.get_span_context().span_id
    assert published.status.status_code == StatusCode.UNSET


def published_headers(queue):
    """The headers of the next message waiting in QUEUE on the in-process broker."""
    with app.connection_for_read() as connection:
        message = connection.default_channel.basic_get(queue, no_ack=True)
    return message.headers


def test_a_message_carries_this_process_context_and_no_one_elses(install, tracer):
    # Another library may write trace headers of its own first: Sentry puts its baggage
    # there. The worker must not take it for the baggage of our context.
    install()
    foreign = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01", "baggage": "sentry-trace_id=ab"}
    with tracer.start_as_current_span("request") as request:
        add.apply_async((1,), headers=foreign, queue="foreign-headers")
    headers = published_headers("foreign-headers")
    assert headers["traceparent"].split("-")[1] == f"{request.get_span_context().trace_id:032x}"
    assert "baggage" not in headers
