"""Shutdowns and recycled pool processes on real workers: no span is lost on the way out."""

import time

import pytest

from harness.polling import poll_until
from tests.support.traces import count

MISSING_ORDER = 10**9
RUN = "celery.run tasks.process_order"
# Ten minutes between exports: whatever arrives was sent by a flush on the way out.
NO_SCHEDULED_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_warm_shutdown_exports_the_spans_still_queued(started, figures, pool):
    tasks = 20
    deployment = started(pool=pool, concurrency=2, env=NO_SCHEDULED_EXPORT)
    since = time.time_ns()
    for number in range(tasks):
        deployment.send_task("tasks.process_order", [MISSING_ORDER + number])
    poll_until(
        lambda: deployment.worker_log().count("raised unexpected") >= tasks, 60,
        "the worker runs every task", check=deployment.check_alive,
    )
    assert count(deployment.spans(since), RUN) == 0
    deployment.stop()  # SIGTERM, then waits
    exported = count(deployment.spans(since), RUN)
    assert exported == tasks
    figures[f"warm shutdown (SIGTERM) with every span still queued, {pool} pool"] = (
        f"{exported} of {tasks} spans exported"
    )


def test_recycled_prefork_children_flush_every_span(started, figures):
    tasks = 5
    deployment = started(worker_args=["--max-tasks-per-child", "1"], env=NO_SCHEDULED_EXPORT)
    since = time.time_ns()
    for number in range(tasks):
        deployment.send_task("tasks.process_order", [MISSING_ORDER + number])
    # Each child runs one task and exits with os._exit(): only the flush on
    # worker_process_shutdown gets its spans out.
    spans = deployment.wait_for_spans(lambda spans: count(spans, RUN) >= tasks, since)
    assert count(spans, RUN) == tasks
    figures["a new prefork child for every task (max-tasks-per-child=1)"] = (
        f"{tasks} of {tasks} spans exported"
    )
