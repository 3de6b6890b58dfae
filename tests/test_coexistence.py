"""celery_signals beside other instrumentations in the same processes, on real workers:
Sentry's Celery integration, and OpenTelemetry's own CeleryInstrumentor."""

import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.deployment import Deployment
from harness.polling import poll_until
from harness.processes import log_text, start, stop, worker_args
from tests.support.brokers import require
from tests.support.matrix_cells import run_cell
from tests.support.matrix_scenarios import SCENARIOS, outcome

# The auto-instrumentation's command: a Python script beside this interpreter, which runs the
# command it is given with every installed instrumentation active.
INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")


class DiscardingSentry(BaseHTTPRequestHandler):
    """Sentry's ingest endpoint, on loopback: accepts every envelope and keeps none."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def sentry_dsn():
    server = ThreadingHTTPServer(("127.0.0.1", 0), DiscardingSentry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://public@127.0.0.1:{server.server_port}/1"
    server.shutdown()
    server.server_close()


def test_fixed_connects_every_publish_path_with_sentry_in_web_and_worker(
    sink, tmp_path, sentry_dsn
):
    require("redis")
    # Sentry puts a nested `headers` dict in every message, which Celery 5.3+ then hands
    # the task as request.headers: the context must be read from the request attribute.
    spans = run_cell(
        sink, tmp_path, "fixed", "redis", "prefork", includes=["tests.apps.sentry_boot"],
        publisher="tests.apps.sentry_publish", env={"SENTRY_DSN": sentry_dsn},
    )
    assert {scenario: outcome(spans, scenario) for scenario in SCENARIOS} == {
        scenario: "connected" for scenario in SCENARIOS
    }


def test_the_auto_instrumentation_at_start_is_refused_with_a_clear_message(sink, tmp_path):
    # opentelemetry-instrument activates CeleryInstrumentor before tasks.py is imported.
    require("redis")
    env = Deployment(sink, tmp_path, "fixed", "redis").env
    worker = start([INSTRUMENT, sys.executable, *worker_args()], env, tmp_path / "w.log")
    try:
        poll_until(lambda: worker.poll() is not None, 60, "the worker exits")
    finally:
        stop(worker)
    assert worker.returncode != 0
    assert "configuration error: CeleryInstrumentor is active in this process" in log_text(worker)


def test_celery_signals_stands_aside_when_the_instrumentor_arrives_later(started, tmp_path):
    # The article's way: CeleryInstrumentor().instrument() in worker_process_init, after
    # tasks.py installed celery_signals. Each task must get one consumer span, not two.
    deployment = started(worker_args=["--include", "tests.apps.article_instrumented"])
    since = time.time_ns()
    trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    headers = {"traceparent": f"00-{trace_id}-{span_id}-01"}
    for number in range(3):
        deployment.send_task("tasks.process_order", [10**9 + number], headers=headers)
    spans = deployment.wait_for_spans(
        lambda spans: sum(s["kind"] == "CONSUMER" for s in spans) >= 3, since
    )
    deployment.stop()
    spans = deployment.spans(since)
    consumers = [s for s in spans if s["kind"] == "CONSUMER"]
    assert [s["name"] for s in consumers] == ["run/tasks.process_order"] * 3
    assert all((s["trace_id"], s["parent_id"]) == (trace_id, span_id) for s in consumers)
    assert deployment.worker_log().count("celery_signals records nothing") == 1


def test_the_auto_instrumentation_without_celery_leaves_it_to_celery_signals(sink, tmp_path):
    # The way to keep both: opentelemetry-instrument for everything else, celery_signals for
    # Celery. The worker starts, and its tasks continue their producer's trace.
    require("redis")
    deployment = Deployment(sink, tmp_path, "fixed", "redis")
    env = {**deployment.env, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "celery"}
    deployment.workers.append(start(
        [INSTRUMENT, sys.executable,
         *worker_args(extra_args=["--hostname", f"orders-{deployment.run_id}@%h"])],
        env, tmp_path / "worker.log",
    ))
    try:
        since = time.time_ns()
        trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
        deployment.send_task("tasks.process_order", [10**9],
                             headers={"traceparent": f"00-{trace_id}-{span_id}-01"})
        spans = deployment.wait_for_spans(
            lambda spans: any(s["kind"] == "CONSUMER" for s in spans), since
        )
    finally:
        deployment.stop()
    (run,) = [s for s in spans if s["kind"] == "CONSUMER"]
    assert (run["name"], run["trace_id"], run["parent_id"]) == (
        "celery.run tasks.process_order", trace_id, span_id
    )
