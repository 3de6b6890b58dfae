"""celery_signals in one process: its API, eager mode, and a publish that fails.

Eager mode is what it is only in one process: the task runs inside its caller, with no
broker and no worker. Everything else about propagation is proven on real workers.
"""

import pytest
from celery import Celery, signals
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
    """install(variant) with spans kept in memory; whatever this process had installed
    before (the web app's tests import tasks.py) is put back afterwards."""
    previous = celery_signals.uninstall()
    yield lambda *variant: celery_signals.install(*variant, tracer_provider=tracer_provider)
    celery_signals.uninstall()
    if previous:
        celery_signals.install(previous)


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


def test_install_defaults_to_fixed_and_uninstall_undoes_exactly_what_it_did(install):
    before = receivers()
    install()
    assert receivers() != before
    assert celery_signals.uninstall() == "fixed"
    assert receivers() == before
    assert celery_signals.uninstall() is None


def test_installing_twice_is_harmless(install, tracer, exporter):
    install("fixed")
    install("fixed")
    with tracer.start_as_current_span("request"):
        add.apply_async((1,))
    assert [span.name for span in exporter.get_finished_spans()].count(
        "celery.apply in_process.add"
    ) == 1


def test_a_second_variant_is_refused_with_a_clear_error(install):
    install("fixed")
    with pytest.raises(RuntimeError, match="installed already, with 'fixed'.*uninstall"):
        install("broken")


def test_an_unknown_variant_is_refused(install):
    with pytest.raises(ValueError, match="unknown propagation variant 'fixd'"):
        install("fixd")


# -- eager mode ---------------------------------------------------------------------------


@pytest.fixture
def always_eager():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.mark.parametrize("variant", ["fixed", "call-site"])
def test_an_eager_task_runs_under_the_span_that_called_it(
    install, tracer, exporter, always_eager, variant
):
    install(variant)
    with tracer.start_as_current_span("request") as request:
        add.delay(1)
    run = finished(exporter)["celery.run in_process.add"]
    assert run.context.trace_id == request.get_span_context().trace_id
    assert run.parent.span_id == request.get_span_context().span_id


@pytest.mark.parametrize("variant", ["fixed", "call-site"])
def test_apply_inside_a_task_runs_under_that_task(install, tracer, exporter, variant):
    install(variant)
    with tracer.start_as_current_span("request") as request:
        calls_add.apply((1,))
    spans = finished(exporter)
    outer, inner = spans["celery.run in_process.calls_add"], spans["celery.run in_process.add"]
    assert outer.parent.span_id == request.get_span_context().span_id
    assert inner.parent.span_id == outer.context.span_id
    assert inner.context.trace_id == request.get_span_context().trace_id


def test_broken_still_cuts_an_eager_task_off(install, tracer, exporter, always_eager):
    install("broken")
    with tracer.start_as_current_span("request") as request:
        add.delay(1)
    run = finished(exporter)["celery.run in_process.add"]
    assert run.parent is None
    assert run.context.trace_id != request.get_span_context().trace_id


# -- a publish that fails ---------------------------------------------------------------


def test_a_failed_publish_ends_its_producer_span_with_the_error(install, tracer, exporter):
    install("fixed")
    dead = Celery("dead-broker", broker="redis://127.0.0.1:1/0", set_as_current=False)
    dead.conf.update(broker_connection_timeout=1, task_publish_retry=False)
    with tracer.start_as_current_span("request") as request:
        # kombu raises OperationalError; Celery 5.2's kombu beside redis-py 8, a TypeError.
        with pytest.raises(Exception) as raised:
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
    install("fixed")
    foreign = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01", "baggage": "sentry-trace_id=ab"}
    with tracer.start_as_current_span("request") as request:
        add.apply_async((1,), headers=foreign, queue="foreign-headers")
    headers = published_headers("foreign-headers")
    assert headers["traceparent"].split("-")[1] == f"{request.get_span_context().trace_id:032x}"
    assert "baggage" not in headers
