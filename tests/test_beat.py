"""Tasks that celery beat sends have no producer context: each must start a fresh trace."""

import time

from harness.processes import start, stop, wait_until_ready

TRACE_ID = "5b8efff798038103d269b633813fc60c"
TRACEPARENT = f"00-{TRACE_ID}-eee19b7ec3c1b174-01"


def runs_arrived(spans):
    """Each work span's run span, which ends (and may be exported) after it, is in too."""
    ids = {span["span_id"] for span in spans}
    return all(s["parent_id"] in ids for s in spans if s["name"].startswith("work "))


def test_beat_tasks_start_fresh_traces_and_inherit_none(deploy, tmp_path):
    deployment = deploy(
        "fixed", "redis", parts=["worker"], pool="threads",
        worker_args=["--include", "tests.apps.matrix_tasks"],
        env={"MATRIX_RESULTS_FOLDER": str(tmp_path)},
    )
    wait_until_ready(deployment.workers[0])
    since = time.time_ns()
    beat = start(
        ["-m", "celery", "-A", "tests.apps.beat_app", "beat", "--loglevel", "INFO",
         "--schedule", str(tmp_path / "beat-schedule")],
        deployment.env, tmp_path / "beat.log",
    )
    try:
        # Traced tasks run on the same worker in between: beat's must not join their trace.
        for _ in range(3):
            deployment.send_task("matrix.work", ["traced"], headers={"traceparent": TRACEPARENT})
        spans = deployment.wait_for_spans(
            lambda spans: sum(s["name"] == "work beat" for s in spans) >= 4
            and sum(s["name"] == "work traced" for s in spans) == 3
            and runs_arrived(spans),
            since,
        )
    finally:
        stop(beat)
    by_id = {span["span_id"]: span for span in spans}
    beat_runs = [by_id[s["parent_id"]] for s in spans if s["name"] == "work beat"]
    traced_runs = [by_id[s["parent_id"]] for s in spans if s["name"] == "work traced"]
    assert all(run["parent_id"] is None for run in beat_runs)
    assert len({run["trace_id"] for run in beat_runs}) == len(beat_runs)
    assert TRACE_ID not in {run["trace_id"] for run in beat_runs}
    assert {run["trace_id"] for run in traced_runs} == {TRACE_ID}
