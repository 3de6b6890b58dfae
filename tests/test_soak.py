"""A soak of traced, untraced, failing, retried and revoked tasks on real workers: every
consumer span stays in its own producer's trace, or starts a fresh one; none inherits
another task's context.

SOAK_TASKS sets the size per pool: 2,000 by default; the README reports an opt-in run of
10,000 too (see its Reliability section).
"""

import os
import random
import time

import pytest

from harness.processes import wait_until_ready

DEFAULT_SOAK_TASKS = 2000
SOAK_TASKS = int(os.environ.get("SOAK_TASKS", DEFAULT_SOAK_TASKS))


def traceparent():
    trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_soak_of_mixed_tasks_leaks_no_context(started, tmp_path, figures, pool):
    deployment = started(
        pool=pool, concurrency=2 if pool == "prefork" else 8,
        worker_args=["--include", "tests.apps.matrix_tasks"],
        env={"MATRIX_RESULTS_FOLDER": str(tmp_path)},
    )
    wait_until_ready(deployment.workers[0])
    since = time.time_ns()
    published, expected_spans = publish_soak(deployment, SOAK_TASKS)
    spans = deployment.wait_for_spans(
        lambda spans: sum(s["kind"] == "CONSUMER" for s in spans) >= expected_spans,
        since, deadline=60 + SOAK_TASKS / 50,
    )
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


