"""A worker must not leak one task's context into the next."""

import time

from harness.polling import poll_until
from tests.support.traces import RUN

FAILING_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{FAILING_TRACE_ID}-00f067aa0ba902b7-01"
MISSING_ORDER = 10**9


def consumer_spans(spans):
    return [span for span in spans if span["name"] == RUN]


def message_ids(spans):
    return {span["attributes"]["messaging.message.id"] for span in spans}


def test_a_failed_task_leaks_no_context_into_the_next(deploy):
    deployment = deploy("fixed", parts=["worker"])
    since = time.time_ns()
    # The first task fails (its order does not exist); the second comes with no context,
    # and only once the first is over, on the same worker process (concurrency 1).
    deployment.send_task(
        "tasks.process_order", [MISSING_ORDER], headers={"traceparent": TRACEPARENT}
    )
    deployment.wait_for_spans(lambda spans: len(consumer_spans(spans)) == 1, since)
    deployment.send_task("tasks.process_order", [MISSING_ORDER + 1])
    spans = deployment.wait_for_spans(lambda spans: len(consumer_spans(spans)) == 2, since)
    failed, fresh = consumer_spans(spans)  # oldest first
    assert failed["trace_id"] == FAILING_TRACE_ID
    assert failed["status"] == "ERROR"
    assert fresh["parent_id"] is None
    assert fresh["trace_id"] != FAILING_TRACE_ID
    assert "Failed to detach context" not in deployment.worker_log()


def test_the_worker_refuses_pickle_and_carries_on(deploy):
    # Anyone who can write to the broker could run code through a pickle payload.
    deployment = deploy("fixed", parts=["worker"])
    since = time.time_ns()
    pickled = deployment.producer_app().send_task(
        "tasks.process_order", [MISSING_ORDER], queue=deployment.queue, serializer="pickle"
    )
    poll_until(
        lambda: "Refusing to deserialize untrusted content of type pickle"
        in deployment.worker_log(), 30, "the worker refuses the pickle message",
    )
    # The positive control: a task sent after the refusal runs and its span arrives, so the
    # worker is alive and exporting. Its one pool process runs tasks in the order they came:
    # had the pickled task run anyway, its span would be in by then too.
    after = deployment.send_task("tasks.process_order", [MISSING_ORDER + 2])
    spans = deployment.wait_for_spans(
        lambda spans: after.id in message_ids(consumer_spans(spans)), since
    )
    assert message_ids(consumer_spans(spans)) == {after.id}
    assert pickled.id not in deployment.worker_log()
