"""A bounded load on a deployment, from this machine to this machine: ORDERS orders posted
by CLIENTS concurrent clients, then a wait, with a deadline, until every one is emailed.

Each client is a thread with connections of its own (gunicorn's sync workers close each one
after its response); the load stops by itself once every order is posted.
"""

import http.client
import json
import re
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlparse

from harness.deployment import Deployment
from harness.polling import poll_until
from harness.processes import log_text, wait_until_ready
from tests.support.traces import EMAIL_RUN, complete, count
from tracetools.sink import TraceSink

ORDER = json.dumps({"item": "book", "quantity": 1}).encode()
HEADERS = {"Content-Type": "application/json"}


@dataclass
class LoadResult:
    orders: int
    clients: int
    latencies: list = field(default_factory=list)  # seconds, one per POST
    order_ids: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    started: float = 0.0  # time.perf_counter() at the first POST
    posting_seconds: float = 0.0
    total_seconds: float = 0.0  # from the first POST until the last order is emailed
    statuses: dict = field(default_factory=dict)  # status -> orders, at the end

    def percentile(self, fraction):
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50_ms(self):
        return 1000 * self.percentile(0.50)

    @property
    def p99_ms(self):
        return 1000 * self.percentile(0.99)

    @property
    def orders_per_second(self):
        return self.orders / self.total_seconds

    def summary(self):
        return (f"p50 {self.p50_ms:.0f} ms, p99 {self.p99_ms:.0f} ms, "
                f"{self.orders_per_second:.0f} orders/s")


def post_orders(base_url, orders, clients, deadline, timeout=60.0):
    """POST ORDERS orders from CLIENTS threads at once; each failure is recorded, not retried.

    The clients stop taking orders after DEADLINE seconds, and each POST has a TIMEOUT."""
    address = urlparse(base_url)
    result = LoadResult(orders, clients)
    remaining = iter(range(orders))
    lock = threading.Lock()
    started = time.perf_counter()
    give_up = started + deadline

    def client():
        while time.perf_counter() < give_up:
            with lock:
                if next(remaining, None) is None:
                    return
            began = time.perf_counter()
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
            try:
                connection.request("POST", "/orders", ORDER, HEADERS)
                reply = connection.getresponse()
                body = reply.read()
                took = time.perf_counter() - began
                with lock:
                    if reply.status == 202:
                        result.latencies.append(took)
                        result.order_ids.append(json.loads(body)["id"])
                    else:
                        result.failures.append(f"{reply.status}: {body[:200]!r}")
            except OSError as error:
                with lock:
                    result.failures.append(f"{type(error).__name__}: {error}")
            finally:
                connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, give_up - time.perf_counter()) + timeout)
    result.started, result.posting_seconds = started, time.perf_counter() - started
    posted = len(result.latencies) + len(result.failures)
    if posted < orders:
        result.failures.append(f"{orders - posted} orders not posted after {deadline:g} s")
    return result


def order_statuses(db_path):
    """{status: orders} in the orders database, read without taking any write lock."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(db.execute("SELECT status, count(*) FROM orders GROUP BY status"))
    finally:
        db.close()


def run_load(deployment, orders, clients, deadline, final_status="emailed"):
    """Post the orders and wait until each reached FINAL_STATUS, each within DEADLINE
    seconds; return the LoadResult."""
    result = post_orders(deployment.base_url, orders, clients, deadline)
    if result.failures:
        return result
    db_path = deployment.env["ORDERS_DB"]
    poll_until(
        lambda: order_statuses(db_path).get(final_status, 0) >= orders, deadline,
        f"{orders} orders {final_status}", check=deployment.check_alive, interval=0.2,
    )
    result.total_seconds = time.perf_counter() - result.started
    result.statuses = order_statuses(db_path)
    return result


# How each measured deployment runs. Untraced: every tracer is a no-op (OTEL_SDK_DISABLED) and
# nothing is injected (PROPAGATION=broken); the signal handlers are still connected, and do
# nothing worth measuring.
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
CONFIGS = {
    "untraced": ("broken", {"OTEL_SDK_DISABLED": "true"}),
    "fixed": ("fixed", {}),
    "fixed, sampled 10 %": ("fixed", SAMPLED),
    "broken, sampled 10 %": ("broken", SAMPLED),
}
WEB_WORKERS = 4
ORDERS_WORKER_CONCURRENCY = 2
TASK_LOG = re.compile(r"Task (tasks\.\w+)\[([0-9a-f-]+)\] (received|succeeded)")


@dataclass
class Measured:
    """One configuration's load, and what it left behind."""

    load: LoadResult
    spans: list
    tasks: Counter  # (task, id, received|succeeded) -> times, from the workers' logs


_measured = {}


def measure(config, orders, clients, workdir_factory):
    """Run CONFIG's deployment (gunicorn, a prefork orders worker, an email worker, on Redis)
    under a load of ORDERS orders from CLIENTS clients, once per test session, and stop it.

    The load test and the sampling test compare configurations with each other: each runs
    alone, with a trace sink of its own, so that none slows another down."""
    key = (config, orders, clients)
    if key not in _measured:
        _measured[key] = _measure(config, orders, clients, workdir_factory())
    return _measured[key]


def _measure(config, orders, clients, workdir):
    variant, env = CONFIGS[config]
    with TraceSink(str(workdir / "spans.db")) as sink:
        deployment = Deployment(
            sink, workdir, variant, "redis", concurrency=ORDERS_WORKER_CONCURRENCY,
            web_server="gunicorn", web_workers=WEB_WORKERS, env=env,
        )
        try:
            deployment.start()
            for worker in deployment.workers:
                wait_until_ready(worker)
            load = run_load(deployment, orders, clients, deadline=60 + orders / 5)
            if config == "fixed" and not load.failures:
                # Every span of every order, so that the stop below has none left to flush.
                deployment.wait_for_spans(
                    lambda spans: count(spans, EMAIL_RUN) >= orders and complete(spans),
                    deadline=60 + orders / 20,
                )
        finally:
            deployment.stop()
        tasks = Counter(
            match for worker in deployment.workers
            for match in TASK_LOG.findall(log_text(worker))
        )
        return Measured(load, deployment.spans(), tasks)


def run_twice(measured):
    """The tasks that were received or ran more than once, from the workers' logs."""
    return sorted({(task, task_id) for (task, task_id, _), n in measured.tasks.items() if n > 1})


def ran(measured, task):
    """How many distinct TASK messages ran to success."""
    return sum(1 for (name, _, event) in measured.tasks if name == task and event == "succeeded")


def traces(spans):
    """{trace id: its spans}."""
    by_trace = defaultdict(list)
    for span in spans:
        by_trace[span["trace_id"]].append(span)
    return by_trace
