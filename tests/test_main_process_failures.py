"""Failures that the worker's main process reports, not the pool process that ran the task."""

import random
import time

from traces import count

MATRIX_TASKS = ["--include", "tests.matrix_tasks"]


def test_a_hard_time_limit_kill_leaves_a_failed_span_with_the_task_id(started, tmp_path, figures):
    deployment = started(worker_args=MATRIX_TASKS, env={"MATRIX_RESULTS_FOLDER": str(tmp_path)})
    since = time.time_ns()
    trace_id = f"{random.getrandbits(128):032x}"
    headers = {"traceparent": f"00-{trace_id}-{random.getrandbits(64):016x}-01"}
    killed = deployment.send_task("matrix.overrun", ["overrun"], headers=headers)
    # The pool replaces the killed process: the next task still runs, and is traced.
    deployment.send_task("matrix.work", ["after-kill"], headers=headers)
    spans = deployment.wait_for_spans(
        lambda spans: count(spans, "celery.failed matrix.overrun") >= 1
        and count(spans, "work after-kill") == 1, since,
    )
    # Celery 5.7 sends task_failure twice for a hard time limit: each leaves a record.
    for failed in (s for s in spans if s["name"] == "celery.failed matrix.overrun"):
        assert failed["status"] == "ERROR"
        assert failed["attributes"]["messaging.message.id"] == killed.id
    after = next(s for s in spans if s["name"] == "work after-kill")
    assert after["trace_id"] == trace_id
    figures["hard time limit kills the pool process mid-task"] = (
        "a failed span with the task's id; the next task runs, traced"
    )
