"""A worker killed mid-task (kill -9), with acks_late: the order still completes, once.

The orders worker stops its first attempt at an order between charging it and confirming it
(tests/apps/kill_hook.py); the test then kills the prefork pool process running it, or the whole
worker (the main process and its pool: a lost machine, an OOM-killed container). The message
was not acknowledged, so the broker hands it out again: at once when the pool process dies
(task_reject_on_worker_lost requeues it), at once on RabbitMQ when the whole worker dies (its
connection closes), and on Redis only after the visibility timeout, which the test makes short
(CELERY_BROKER_VISIBILITY_TIMEOUT) on a Redis of its own. The second attempt finds the order
charged, confirms it and sends the email, once.

The trace then holds one consumer span, the second attempt's, under the producer span and
marked celery.redelivered: the first attempt's died with its process, and Celery records
nothing when it requeues a message.
What the first attempt had ended and exported (its charge_payment, which tests/apps/kill_hook.py
flushes before it waits) hangs under a parent that never arrives.
"""

import os
import shutil
import signal
import time
from contextlib import closing

import pytest

import orders_db
from harness.polling import poll_until
from harness.processes import log_text, wait_until_ready
from tests.support.private_redis import PrivateRedis
from tests.support.traces import EMAIL_PUBLISH, EMAIL_RUN, PUBLISH, REQUEST, RUN, count, one
from tracetools.doctor import diagnose

VISIBILITY_TIMEOUT = 5
WORKER_SERVICES = ("orders-worker", "email-worker")
BROKER_NAMES = {"redis": "Redis", "rabbitmq": "RabbitMQ"}
TARGETS = {"pool child": "its prefork pool process", "whole worker": "the whole worker"}
ROW = "worker killed mid-task (kill -9 of {target}), {broker}"
ROWS = [ROW.format(target=target, broker=broker)
        for broker in BROKER_NAMES.values() for target in TARGETS.values()]


@pytest.fixture
def broker_url(request, tmp_path):
    if request.param == "rabbitmq":
        yield "rabbitmq"
        return
    # A Redis of this test's own: its workers hand out again every message that any worker
    # of the same Redis holds longer than the short visibility timeout.
    if not shutil.which("redis-server"):
        if os.environ.get("CI"):
            pytest.fail("CI must test every broker: redis-server is missing")
        pytest.skip("needs the redis-server program")
    redis = PrivateRedis(tmp_path)
    redis.start()
    yield redis.url
    redis.stop()


def first_attempt_pid(folder, order_id):
    """The pid of the pool process whose first attempt at ORDER_ID waits to be killed."""
    marker = folder / str(order_id)
    return int(poll_until(lambda: marker.exists() and marker.read_text(), 60,
                          f"order {order_id}'s first attempt waits"))


def status(deployment, order_id):
    with closing(orders_db.connect(deployment.env["ORDERS_DB"])) as db:
        return orders_db.get_order(db, order_id)["status"]


def emailed(deployment, order_id, since, deadline, emails):
    """Wait until the order is emailed and the email worker's spans of EMAILS emails are in."""
    # Read from the database, not GET /orders/<id>: the web app would trace every poll.
    poll_until(lambda: status(deployment, order_id) == "emailed", deadline,
               f"order {order_id} emailed", check=deployment.check_alive)
    deployment.wait_for_spans(lambda spans: count(spans, "render_email") >= emails, since)


def check_the_trace(spans):
    """One trace; the email sent once; the lost attempt's consumer span never arrived."""
    request = one(spans, REQUEST)
    assert {span["trace_id"] for span in spans} == {request["trace_id"]}
    for name in (PUBLISH, RUN, EMAIL_PUBLISH, EMAIL_RUN, "render_email", "send_confirmation"):
        assert count(spans, name) == 1, name
    # Both attempts charged (the second found the order charged already: advance() did
    # nothing). The first attempt's charge_payment hangs under a consumer span that died
    # with its process: its parent never arrives.
    charges = [span for span in spans if span["name"] == "charge_payment"]
    assert len(charges) == 2
    ids = {span["span_id"] for span in spans}
    lost = [span for span in charges if span["parent_id"] not in ids]
    assert len(lost) == 1
    run = one(spans, RUN)
    assert run["parent_id"] == one(spans, PUBLISH)["span_id"]
    # The surviving attempt says the message came back.
    assert run["attributes"]["celery.redelivered"] is True
    return lost[0]


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_a_worker_killed_mid_task_leaves_the_order_to_complete_once(
    started, broker_url, tmp_path, figures, request
):
    broker = BROKER_NAMES[request.node.callspec.params["broker_url"]]
    folder = tmp_path / "kills"
    folder.mkdir()
    deployment = started(
        "fixed", broker_url, parts=("worker", "email-worker", "web"),
        worker_args=["--include", "tests.apps.kill_hook"],
        env={"KILL_TEST_FOLDER": str(folder),
             "CELERY_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)},
    )
    for worker in deployment.workers:
        wait_until_ready(worker)
    since = time.time_ns()

    # 1. The pool process dies: the worker's main process sees it go, and requeues.
    orders_worker = deployment.workers[0]
    order_id = deployment.post_order()
    pid = first_attempt_pid(folder, order_id)
    assert pid != orders_worker.pid
    os.kill(pid, signal.SIGKILL)
    emailed(deployment, order_id, since, deadline=60, emails=1)
    assert "WorkerLostError" in log_text(orders_worker)

    # 2. The whole worker dies, pool and all; another worker takes the message over.
    order_id = deployment.post_order()
    first_attempt_pid(folder, order_id)
    os.killpg(orders_worker.pid, signal.SIGKILL)
    orders_worker.wait()
    deployment.workers.remove(orders_worker)
    deployment.start("worker")
    emailed(deployment, order_id, since, deadline=60 + 3 * VISIBILITY_TIMEOUT, emails=2)

    deployment.stop()  # every process flushes: a span still to come would be here now
    spans = deployment.spans(since)
    by_trace = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], []).append(span)
    assert len(by_trace) == 2
    first, second = sorted(by_trace.values(), key=lambda trace: one(trace, REQUEST)["start_ns"])
    for target, trace in (("pool child", first), ("whole worker", second)):
        check_the_trace(trace)
        # Celery sends task_failure only for a task it does not requeue: nothing records
        # the lost attempt, in the pool or in the worker's main process.
        assert [span["name"] for span in trace if span["name"].startswith("celery.failed")] == []
        # What the doctor makes of it: the message was consumed, by the second attempt, and
        # the lost attempt's leftover span is not a Celery span: nothing to report.
        diagnosis = diagnose(trace, WORKER_SERVICES)
        assert (diagnosis["orphans"], diagnosis["never_consumed"]) == ([], [])
        redelivery = (
            f"after the visibility timeout ({VISIBILITY_TIMEOUT} s here)"
            if broker == "Redis" and target == "whole worker" else "at once"
        )
        figures[ROW.format(target=TARGETS[target], broker=broker)] = (
            f"redelivered {redelivery}; the order completed once (1 email); the run that "
            "completed it says celery.redelivered, the lost one left no span of its own; the "
            "doctor reports nothing"
        )
