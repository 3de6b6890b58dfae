"""One deployment of the example app on real processes, exporting to a trace sink.

The demo, the tests and the benchmarks all start the app through Deployment: an orders
worker, an email worker and the web app, on queues and a trace tag of their own, so that
many deployments can share one broker and one sink.
"""

import json
import urllib.error
import urllib.request
import uuid
from fractions import Fraction
from urllib.parse import urlparse

from celery import Celery

import celeryconfig
from harness.polling import poll_until, port_answers
from harness.processes import check_alive, log_text, start_web, start_worker, stop_all
from tracetools.sources import load

BROKER_URLS = {
    "filesystem": "filesystem://",
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}
# A resource attribute on every span a deployment's processes export: one sink serves many.
RUN_ATTRIBUTE = "deployment.run"
SPANS_DEADLINE = 30.0
PARTS = ("worker", "email-worker", "web")


def broker_problem(broker):
    """Why BROKER (a name of BROKER_URLS, or a URL) cannot be used, or None when it answers."""
    address = urlparse(BROKER_URLS.get(broker, broker))
    if address.scheme == "filesystem" or port_answers(address.port, address.hostname, 2):
        return None
    return f"{broker} does not answer at {address.hostname}:{address.port}"


def app_env(variant, sink_endpoint, workdir, broker, run_id, **extra):
    """What every process of one deployment shares: web app and workers must agree."""
    url = BROKER_URLS.get(broker, broker)
    env = {
        "PROPAGATION": variant,
        "CELERY_BROKER_URL": url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink_endpoint,
        "OTEL_RESOURCE_ATTRIBUTES": f"{RUN_ATTRIBUTE}={run_id}",
        # Export every 100 ms instead of every 5 s: the demo and the tests wait for spans.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "ORDERS_DB": str(workdir / "orders.db"),
        "QUEUE_PREFIX": f"{run_id}-",
    }
    if url.startswith("filesystem://"):
        env["CELERY_BROKER_FOLDER"] = str(workdir / "broker")
    return {**env, **extra}


class Deployment:
    """One variant's processes. BROKER is a name of BROKER_URLS or a broker URL.

    WEB_SERVER is "flask" (`python app.py`) or "gunicorn", with WEB_WORKERS processes and
    PRELOAD (gunicorn's --preload), serving WEB_APP if given: see harness.processes.web_args."""

    def __init__(
        self, sink, workdir, variant="fixed", broker="filesystem",
        pool="prefork", concurrency=1, worker_args=(), env=None,
        web_server="flask", web_workers=4, preload=False, web_app=None,
    ):
        self.sink = sink
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex
        self.env = app_env(variant, sink.endpoint, workdir, broker, self.run_id, **(env or {}))
        self.queue_prefix = self.env["QUEUE_PREFIX"]
        self.queue, self.emails_queue = celeryconfig.queue_names(self.env)
        self.pool = pool
        self.concurrency = concurrency
        self.worker_args = list(worker_args)
        self.web_options = {"server": web_server, "workers": web_workers, "preload": preload}
        if web_app is not None:
            self.web_options["app"] = web_app
        self.workers = []
        self.web = self.base_url = self._producer = None

    def start(self, *parts):
        """Start PARTS (any of "worker", "email-worker", "web"; all three by default)."""
        for part in parts or PARTS:
            if part not in PARTS:
                raise ValueError(f"unknown part {part!r}: choose from {PARTS}")
        parts = parts or PARTS
        # Node names of their own: RabbitMQ lets one connection at a time hold a node's
        # control queue, and a second worker named celery@<host> would die on it.
        if "worker" in parts:
            self.workers.append(start_worker(
                self.env, self.workdir / "worker.log", pool=self.pool,
                concurrency=self.concurrency,
                extra_args=[*self.worker_args, "--hostname", f"orders-{self.run_id}@%h"],
            ))
        if "email-worker" in parts:
            self.workers.append(start_worker(
                {**self.env, "OTEL_SERVICE_NAME": "email-worker"},
                self.workdir / "email-worker.log",
                extra_args=["--queues", self.emails_queue,
                            "--hostname", f"emails-{self.run_id}@%h"],
            ))
        if "web" in parts:
            self.web, self.base_url = start_web(
                self.env, self.workdir / "web.log", **self.web_options
            )
        return self

    def processes(self):
        return [process for process in (self.web, *self.workers) if process is not None]

    def stop(self):
        stop_all(self.processes())
        if self._producer is not None:
            self._producer.close()

    def check_alive(self):
        for process in self.processes():
            check_alive(process)

    def worker_log(self):
        return log_text(self.workers[0])

    def post(self, path, payload, headers=None):
        """POST PAYLOAD as JSON to the web app; (status, JSON body), errors included."""
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def post_order(self, headers=None):
        status, body = self.post("/orders", {"item": "book", "quantity": 1}, headers)
        if status != 202:
            raise RuntimeError(f"POST /orders answered {status}: {body}")
        return body["id"]

    def order_status(self, order_id):
        with urllib.request.urlopen(f"{self.base_url}/orders/{order_id}", timeout=10) as reply:
            return json.load(reply)["status"]

    def producer_app(self):
        """A Celery app in this process, on this deployment's broker and queues."""
        if self._producer is None:
            self._producer = Celery("producer", set_as_current=False)
            self._producer.conf.update(celeryconfig.settings(self.env))
        return self._producer

    def send_task(self, name, args, headers=None, **options):
        """Publish straight to the orders worker's queue."""
        return self.producer_app().send_task(
            name, args, headers=headers, queue=self.queue, **options
        )

    def spans(self, since=0):
        """This deployment's spans that started at or after SINCE (time.time_ns()), oldest
        first. SQLite picks them out: a poll reads this run's rows, not the whole sink."""
        spans = load(self.sink.db_path, since=Fraction(since, 10**9) if since else None,
                     resource={RUN_ATTRIBUTE: self.run_id})
        return sorted(spans, key=lambda span: span["start_ns"])

    def wait_for_spans(self, ready, since=0, deadline=SPANS_DEADLINE, check=None):
        """Poll this deployment's spans since SINCE until READY(spans) is true; return them.

        CHECK, if given, runs on every poll besides the check that every process lives."""
        found = []

        def arrived():
            found[:] = self.spans(since)
            return ready(found)

        def alive():
            self.check_alive()
            if check:
                check()

        try:
            poll_until(arrived, deadline, "spans", check=alive)
        except TimeoutError:
            names = sorted(span["name"] for span in found)
            raise TimeoutError(f"spans still incomplete after {deadline:g} s: {names}") from None
        return found
