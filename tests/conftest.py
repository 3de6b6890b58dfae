"""Real processes for the tests: a trace sink, workers and the web app on a real broker."""

import json
import os
import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from celery import Celery

from processes import check_alive, start_web, start_worker, stop_all
from tasks import broker_settings
from trace_sink import TraceSink, load_spans, wait_for_spans

ROOT = Path(__file__).resolve().parent.parent

BROKER_URLS = {
    "filesystem": "filesystem://",
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}
SPANS_DEADLINE = 30.0


def broker_problem(broker):
    """Why BROKER cannot be tested here, or None when its server answers."""
    if broker == "filesystem":
        return None
    address = urlparse(BROKER_URLS[broker])
    try:
        socket.create_connection((address.hostname, address.port), timeout=2).close()
    except OSError:
        return f"{broker} does not answer at {address.hostname}:{address.port}"
    return None


def require(broker):
    """Skip the test when BROKER does not answer; in CI, where every broker runs, fail."""
    problem = broker_problem(broker)
    if problem and os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must test every broker")
    if problem:
        pytest.skip(problem)


def broker_env(broker, folder):
    if broker == "filesystem":
        return {"CELERY_BROKER_URL": BROKER_URLS[broker], "CELERY_BROKER_FOLDER": str(folder)}
    return {"CELERY_BROKER_URL": BROKER_URLS[broker]}


@pytest.fixture(scope="session")
def figures():
    """What the reliability tests measured, for the README's table: {row: figure}."""
    return {}


@pytest.fixture(scope="session")
def sink(tmp_path_factory):
    with TraceSink(str(tmp_path_factory.mktemp("sink") / "spans.db")) as running:
        yield running


class Deployment:
    """One variant's workers (and web app), on queues and a trace tag of their own."""

    def __init__(
        self, sink, workdir, variant, broker,
        pool="prefork", concurrency=1, worker_args=(), env=(),
    ):
        self.sink = sink
        self.run_id = uuid.uuid4().hex
        self.queue_prefix = f"{self.run_id}-"
        self.queue = self.queue_prefix + "orders"
        self.broker_env = broker_env(broker, workdir / "broker")
        self.env = {
            **self.broker_env,
            "PROPAGATION": variant,
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
            "OTEL_RESOURCE_ATTRIBUTES": f"test.run={self.run_id}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "ORDERS_DB": str(workdir / "orders.db"),
            "QUEUE_PREFIX": self.queue_prefix,
            **dict(env),
        }
        self.workdir = workdir
        self.pool = pool
        self.concurrency = concurrency
        self.worker_args = worker_args
        self.workers = []
        self.web = self.base_url = self.producer = None

    def start(self, web=True):
        """The orders worker; with WEB, also the web app and the email worker behind it."""
        # Node names of their own: RabbitMQ lets one connection at a time hold a node's
        # control queue, and a second worker named celery@<host> would die on it.
        self.workers.append(start_worker(
            self.env, self.workdir / "worker.log", pool=self.pool, concurrency=self.concurrency,
            extra_args=[*self.worker_args, "--hostname", f"orders-{self.run_id}@%h"],
        ))
        if web:
            self.workers.append(start_worker(
                {**self.env, "OTEL_SERVICE_NAME": "email-worker"},
                self.workdir / "email-worker.log",
                extra_args=["--queues", self.queue_prefix + "emails",
                            "--hostname", f"emails-{self.run_id}@%h"],
            ))
            self.web, self.base_url = start_web(self.env, self.workdir / "web.log")
        return self

    def processes(self):
        return [process for process in (self.web, *self.workers) if process is not None]

    def stop(self):
        stop_all(self.processes())
        if self.producer is not None:
            self.producer.close()

    def check_alive(self):
        for process in self.processes():
            check_alive(process)

    def worker_log(self):
        return (self.workdir / "worker.log").read_text(errors="replace")

    def post(self, path, payload):
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def producer_app(self):
        """A Celery app in the test process (which exports no spans) on this broker."""
        if self.producer is None:
            self.producer = Celery("test-producer", set_as_current=False)
            self.producer.conf.update(broker_settings(self.env))
        return self.producer

    def send_task(self, name, args, headers=None):
        """Publish straight to the worker's queue."""
        return self.producer_app().send_task(name, args, headers=headers, queue=self.queue)

    def spans(self, since=0):
        spans = load_spans(self.sink.db_path, **{"test.run": self.run_id})
        return [span for span in spans if span["start_ns"] >= since]

    def wait_for_spans(self, ready, since=0, deadline=SPANS_DEADLINE):
        """Wait for this deployment's spans that started at or after SINCE (time.time_ns())."""
        return wait_for_spans(
            self.sink.db_path, lambda spans: ready([s for s in spans if s["start_ns"] >= since]),
            deadline, check=self.check_alive, **{"test.run": self.run_id},
        )


@pytest.fixture(scope="session")
def deploy(sink, tmp_path_factory):
    """deploy(variant, broker, ...) returns a running Deployment, shared by every test that
    asks for the same one: starting and stopping workers is most of the suite's time.
    Tests tell their own spans apart by start time (see Deployment.wait_for_spans)."""
    running = {}

    def get(variant, broker="filesystem", web=True, pool="prefork", worker_args=(), env=None):
        env = tuple(sorted((env or {}).items()))
        key = (variant, broker, web, pool, tuple(worker_args), env)
        if key not in running:
            require(broker)
            workdir = tmp_path_factory.mktemp("deployment")
            deployment = Deployment(
                sink, workdir, variant, broker, pool, worker_args=tuple(worker_args), env=env
            )
            running[key] = deployment.start(web=web)
        return running[key]

    yield get
    stop_all(process for deployment in running.values() for process in deployment.processes())
    for deployment in running.values():
        deployment.stop()  # closes its producer; its processes are gone already
