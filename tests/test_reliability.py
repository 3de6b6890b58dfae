"""Faults, shutdowns and load on real workers: no task, span or context lost or leaked.

Each test records its figure; the last test checks that the README's Reliability table is
the one this run produced (UPDATE_README=1 rewrites it). SOAK_TASKS sets the soak's size
per pool: 2,000 by default, and the README reports an opt-in run of 10,000 too.
"""

import os
import random
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from conftest import ROOT, Deployment, require

from processes import free_port, wait_until_ready

DEFAULT_SOAK_TASKS = 2000
SOAK_TASKS = int(os.environ.get("SOAK_TASKS", DEFAULT_SOAK_TASKS))
MISSING_ORDER = 10**9
RUN = "celery.run tasks.process_order"
MATRIX_TASKS = ["--include", "tests.matrix_tasks"]


def started(sink, tmp_path, variant="fixed", broker="redis", web=False, **options):
    """A deployment of this test's own, which the test stops itself."""
    require(broker)
    return Deployment(sink, tmp_path, variant, broker, **options).start(web=web)


def traceparent():
    trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def count(spans, name):
    return sum(span["name"] == name for span in spans)


# -- shutdown and recycling ------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_warm_shutdown_exports_the_spans_still_queued(sink, tmp_path, figures, pool):
    tasks = 20
    # Ten minutes between exports: whatever arrives was sent by the flush on the way out.
    deployment = started(
        sink, tmp_path, pool=pool, concurrency=2,
        env={"OTEL_BSP_SCHEDULE_DELAY": "600000"},
    )
    try:
        since = time.time_ns()
        for number in range(tasks):
            deployment.send_task("tasks.process_order", [MISSING_ORDER + number])
        give_up = time.monotonic() + 60
        while deployment.worker_log().count("raised unexpected") < tasks:
            deployment.check_alive()
            assert time.monotonic() < give_up, "the worker did not run every task"
            time.sleep(0.1)
        assert count(deployment.spans(since), RUN) == 0
    finally:
        deployment.stop()  # SIGTERM, then waits
    exported = count(deployment.spans(since), RUN)
    assert exported == tasks
    figures[f"warm shutdown (SIGTERM) with every span still queued, {pool} pool"] = (
        f"{exported} of {tasks} spans exported"
    )


def test_recycled_prefork_children_flush_every_span(sink, tmp_path, figures):
    tasks = 5
    deployment = started(
        sink, tmp_path, worker_args=["--max-tasks-per-child", "1"],
        # Nothing leaves on the exporter's own schedule: only a flush can send the spans.
        env={"OTEL_BSP_SCHEDULE_DELAY": "600000"},
    )
    try:
        since = time.time_ns()
        for number in range(tasks):
            deployment.send_task("tasks.process_order", [MISSING_ORDER + number])
        # Each child runs one task and exits with os._exit(): only the flush on
        # worker_process_shutdown gets its spans out.
        spans = deployment.wait_for_spans(lambda spans: count(spans, RUN) >= tasks, since)
    finally:
        deployment.stop()
    assert count(spans, RUN) == tasks
    figures["a new prefork child for every task (max-tasks-per-child=1)"] = (
        f"{tasks} of {tasks} spans exported"
    )


def test_a_hard_time_limit_kill_leaves_a_failed_span_with_the_task_id(sink, tmp_path, figures):
    deployment = started(
        sink, tmp_path, worker_args=MATRIX_TASKS, env={"MATRIX_RESULTS_FOLDER": str(tmp_path)}
    )
    try:
        since = time.time_ns()
        trace_id, span_id, header = traceparent()
        headers = {"traceparent": header}
        killed = deployment.send_task("matrix.overrun", ["overrun"], headers=headers)
        # The pool replaces the killed process: the next task still runs, and is traced.
        deployment.send_task("matrix.work", ["after-kill"], headers=headers)
        spans = deployment.wait_for_spans(
            lambda spans: count(spans, "celery.failed matrix.overrun") >= 1
            and count(spans, "work after-kill") == 1, since,
        )
    finally:
        deployment.stop()
    # Celery 5.7 sends task_failure twice for a hard time limit: each leaves a record.
    for failed in (s for s in spans if s["name"] == "celery.failed matrix.overrun"):
        assert failed["status"] == "ERROR"
        assert failed["attributes"]["messaging.message.id"] == killed.id
    after = next(s for s in spans if s["name"] == "work after-kill")
    assert after["trace_id"] == trace_id
    figures["hard time limit kills the pool process mid-task"] = (
        "a failed span with the task's id; the next task runs, traced"
    )


# -- the collector down or not answering ------------------------------------------------


class BlackHole:
    """A collector that accepts connections and never answers."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.connections.append(self.server.accept()[0])
            except OSError:
                return

    def close(self):
        self.server.close()
        for connection in self.connections:
            connection.close()


def get_status(base_url, order_id):
    with urllib.request.urlopen(f"{base_url}/orders/{order_id}", timeout=10) as response:
        return response.read().decode()


@pytest.mark.parametrize("collector", ["down", "not answering"])
def test_a_missing_collector_costs_orders_nothing_and_is_reported_once(
    sink, tmp_path, figures, collector
):
    orders = 20
    black_hole = BlackHole() if collector == "not answering" else None
    port = black_hole.port if black_hole else free_port()
    deployment = started(
        sink, tmp_path, web=True,
        # A short export timeout only shortens the shutdown at the end of the test.
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
             "OTEL_EXPORTER_OTLP_TIMEOUT": "2"},
    )
    try:
        slowest, ids = 0.0, []
        for _ in range(orders):
            start = time.monotonic()
            status, body = deployment.post("/orders", {"item": "book", "quantity": 1})
            slowest = max(slowest, time.monotonic() - start)
            assert status == 202, body
            ids.append(body["id"])
        give_up = time.monotonic() + 60
        while not all('"emailed"' in get_status(deployment.base_url, i) for i in ids):
            assert time.monotonic() < give_up, "orders were not all processed"
            time.sleep(0.2)
        # An export blocked on the collector would hold a request for seconds.
        assert slowest < 2.0
    finally:
        deployment.stop()
        if black_hole:
            black_hole.close()
    logs = [p.read_text() for p in tmp_path.glob("*.log")]
    reports = [log.count("Failed to export") + log.count("Transient error") for log in logs]
    assert max(reports) <= 1, "export failures must be reported once per process"
    assert any("this is the only report" in log for log in logs)
    figures[f"collector {collector}"] = (
        f"{orders} of {orders} orders processed, at most 1 log line per process"
    )
    print(f"collector {collector}: slowest POST /orders {slowest * 1000:.0f} ms")


# -- the broker restarting under a running worker --------------------------------------


class PrivateRedis:
    """A Redis of this test's own, that it can stop and start again on the same port. The
    append-only file keeps what was queued across the restart, as production Redis should."""

    def __init__(self, folder):
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        subprocess.run(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize",
             "yes", "--dir", str(self.folder), "--appendonly", "yes", "--save", ""],
            check=True, capture_output=True, timeout=10,
        )
        wait_until(lambda: answers(self.port), "Redis did not start")

    def stop(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True,
                       timeout=10)
        wait_until(lambda: not answers(self.port), "Redis did not stop")


def answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_until(condition, message, deadline=30):
    give_up = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < give_up, message
        time.sleep(0.1)


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs the redis-server program")
def test_the_worker_reconnects_after_a_broker_restart_and_loses_no_task(sink, tmp_path, figures):
    redis = PrivateRedis(tmp_path)
    redis.start()
    deployment = started(
        sink, tmp_path, worker_args=MATRIX_TASKS,
        env={"CELERY_BROKER_URL": redis.url, "MATRIX_RESULTS_FOLDER": str(tmp_path)},
    )
    try:
        wait_until_ready(deployment.workers[0])
        since = time.time_ns()
        for number in range(10):
            deployment.send_task("matrix.work", [f"before-{number}"])
        deployment.wait_for_spans(lambda spans: count_work(spans, "before") == 10, since)
        redis.stop()
        redis.start()
        # Nobody tells the worker: it has to notice, reconnect, and take these.
        for number in range(10):
            deployment.send_task("matrix.work", [f"after-{number}"])
        spans = deployment.wait_for_spans(
            lambda spans: count_work(spans, "after") == 10, since, deadline=60
        )
    finally:
        deployment.stop()
        redis.stop()
    assert count_work(spans, "before") == count_work(spans, "after") == 10
    figures["broker restarted under a running worker"] = (
        "reconnected by itself; 20 of 20 tasks published before and after it ran"
    )


def count_work(spans, prefix):
    return sum(span["name"].startswith(f"work {prefix}-") for span in spans)


# -- no context leaks under load --------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_soak_of_mixed_tasks_leaks_no_context(sink, tmp_path, figures, pool):
    deployment = started(
        sink, tmp_path, pool=pool, concurrency=2 if pool == "prefork" else 8,
        worker_args=MATRIX_TASKS, env={"MATRIX_RESULTS_FOLDER": str(tmp_path)},
    )
    try:
        wait_until_ready(deployment.workers[0])
        since = time.time_ns()
        published, expected_spans = publish_soak(deployment, SOAK_TASKS)
        spans = deployment.wait_for_spans(
            lambda spans: sum(s["kind"] == "CONSUMER" for s in spans) >= expected_spans,
            since, deadline=60 + SOAK_TASKS / 50,
        )
    finally:
        deployment.stop()
    leaks = check_soak(spans, published)
    assert leaks == []
    assert "Failed to detach context" not in deployment.worker_log()
    figures[f"context-leak soak, {pool} pool"] = (
        f"{SOAK_TASKS} tasks (traced, untraced, failing, retried, revoked), "
        f"{len(leaks)} leaks, 0 detach errors"
    )


# What each task kind publishes, and how many consumer spans it leaves: a retried task
# runs twice, a revoked one never (it leaves a celery.revoked span instead).
KINDS = [
    ("traced", "matrix.work", 1),
    ("untraced", "matrix.work", 1),
    ("traced", "matrix.fail", 1),
    ("traced", "matrix.flaky", 2),
    ("untraced", "matrix.fail", 1),
]


def publish_soak(deployment, tasks):
    published, expected_spans = {}, 0
    for number in range(tasks):
        kind, task, spans = KINDS[number % len(KINDS)]
        revoked = number % 100 == 99
        if revoked:
            task, spans = "matrix.never_runs", 1
        trace_id, span_id, header = traceparent()
        headers = {"traceparent": header} if kind == "traced" or revoked else {}
        result = deployment.send_task(task, [f"soak-{number}"], headers=headers)
        if revoked:
            deployment.producer_app().control.revoke(result.id)
        published[result.id] = (trace_id if headers else None, span_id, spans)
        expected_spans += spans
    return published, expected_spans


def check_soak(spans, published):
    """Every consumer span is in its own producer's trace, or a fresh root: the leaks."""
    by_task = {}
    for span in spans:
        if span["kind"] == "CONSUMER":
            by_task.setdefault(span["attributes"]["messaging.message.id"], []).append(span)
    traces_of = {}
    for task_id, task_spans in by_task.items():
        for span in task_spans:
            traces_of.setdefault(span["trace_id"], set()).add(task_id)
    leaks = []
    for task_id, (trace_id, span_id, expected) in published.items():
        task_spans = by_task.get(task_id, [])
        if len(task_spans) != expected:
            leaks.append((task_id, f"{len(task_spans)} consumer spans, expected {expected}"))
        for span in task_spans:
            if trace_id is not None and span["trace_id"] != trace_id:
                leaks.append((task_id, "left its producer's trace"))
            if trace_id is None and (
                span["parent_id"] is not None or traces_of[span["trace_id"]] != {task_id}
            ):
                leaks.append((task_id, "an untraced task joined another trace"))
    return leaks


# -- the README's table -----------------------------------------------------------------

ROWS = [
    "hostile trace headers through a real worker",
    "context-leak soak, prefork pool",
    "context-leak soak, threads pool",
    "warm shutdown (SIGTERM) with every span still queued, prefork pool",
    "warm shutdown (SIGTERM) with every span still queued, threads pool",
    "a new prefork child for every task (max-tasks-per-child=1)",
    "hard time limit kills the pool process mid-task",
    "collector down",
    "collector not answering",
    "broker down when an order is posted",
    "broker restarted under a running worker",
]


SOAK_ROWS = [row for row in ROWS if row.startswith("context-leak soak")]


def render(figures, rows):
    lines = ["| check | result |", "|---|---|"]
    lines += [f"| {row} | {figures[row]} |" for row in rows]
    return "\n".join(lines) + "\n"


def test_the_readme_reliability_table_is_the_one_this_run_produced(figures):
    # The default run checks the main table; an opt-in SOAK_TASKS run, the soak's own.
    rows, section = (ROWS, "reliability") if SOAK_TASKS == DEFAULT_SOAK_TASKS else (
        SOAK_ROWS, "reliability-soak"
    )
    missing = [row for row in rows if row not in figures]
    if missing:
        pytest.skip(f"not measured in this run: {missing}")
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index(f"<!-- {section}:start -->\n") + len(f"<!-- {section}:start -->\n")
    end = text.index(f"<!-- {section}:end -->")
    table = render(figures, rows)
    if text[start:end] != table and os.environ.get("UPDATE_README"):
        readme.write_text(text[:start] + table + text[end:])
        return
    assert text[start:end] == table, f"README {section} table is stale: UPDATE_README=1"
