"""The doctor on traces that opentelemetry-instrumentation-celery made, on real workers: the
article's readers use it, and their orphans must get a cause too."""

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.deployment import RUN_ATTRIBUTE, app_env
from harness.polling import poll_until
from harness.processes import ROOT, check_alive, log_text, start, stop_all, worker_args
from tests.support.traces import complete, count, one
from tracetools.doctor import assert_no_orphans, diagnose
from tracetools.sources import load

TASKS = 3
RUN = "run/auto.work"
WORKER_SERVICE = "auto-worker"
# How each worker runs: the producer is instrumented in all three.
WORKERS = {
    "both": ({}, []),
    "producer-only": ({"AUTO_INSTRUMENT_WORKER": "0"}, []),
    # A new pool process per task, and ten minutes between exports: nothing flushes a child
    # on its way out, so every consumer span goes with it.
    "recycled": ({"OTEL_BSP_SCHEDULE_DELAY": "600000"}, ["--max-tasks-per-child", "1"]),
}
WORK_DONE = {
    "both": lambda spans, log: count(spans, RUN) == TASKS and complete(spans),
    "producer-only": lambda spans, log: sum(s["name"].startswith("work ") for s in spans) == TASKS,
    "recycled": lambda spans, log: log.count(" succeeded in ") == TASKS,
}


def auto_worker(env, log_path, extra_args):
    args = worker_args(extra_args=extra_args)
    # The harness's command, with our app.
    args[args.index("-A") + 1] = "tests.apps.auto_instrumented_app"
    return start(args, env, log_path)


@pytest.fixture(scope="module")
def auto_spans(sink, tmp_path_factory):
    """{worker set-up: the spans of TASKS tasks published by an instrumented producer}."""
    runs = {name: uuid.uuid4().hex for name in WORKERS}
    workers = {}

    def run(name):
        workdir = tmp_path_factory.mktemp(f"auto-{name}")
        worker_env, extra_args = WORKERS[name]
        env = app_env("fixed", sink.endpoint, workdir, "filesystem", runs[name])
        workers[name] = auto_worker({**env, **worker_env}, workdir / "worker.log", extra_args)
        subprocess.run(
            [sys.executable, "-m", "tests.apps.auto_instrumented_publish", str(TASKS)],
            cwd=ROOT, env={**os.environ, **env}, check=True, timeout=60, capture_output=True,
        )
        poll_until(
            lambda: WORK_DONE[name](spans(name), log_text(workers[name])), 30,
            f"{name}: {TASKS} tasks run", check=lambda: check_alive(workers[name]),
        )

    def spans(name):
        return list(load(sink.db_path, resource={RUN_ATTRIBUTE: runs[name]}))

    try:
        with ThreadPoolExecutor(len(WORKERS)) as pool:
            list(pool.map(run, WORKERS))
    finally:
        stop_all(workers.values())
    # The warm shutdown flushed the main processes; a recycled child's spans are gone for good.
    return {name: spans(name) for name in WORKERS}


def test_producer_and_worker_instrumented_leave_no_orphan(auto_spans):
    spans = auto_spans["both"]
    diagnosis = diagnose(spans, worker_services=[WORKER_SERVICE])
    assert (diagnosis["consumer_spans"], diagnosis["connected"]) == (TASKS, TASKS)
    assert diagnosis["orphans"] == diagnosis["never_consumed"] == []
    assert_no_orphans(spans, worker_services=[WORKER_SERVICE])


def test_only_the_producer_instrumented_is_not_extracted(auto_spans):
    spans = auto_spans["producer-only"]
    diagnosis = diagnose(spans, worker_services=[WORKER_SERVICE])
    # The worker records no consumer span: each task's own span starts a trace.
    assert sorted(o["name"] for o in diagnosis["orphans"]) == [f"work {n}" for n in range(TASKS)]
    assert diagnosis["causes"]["not-extracted"] == TASKS
    assert {o["service"] for o in diagnosis["orphans"]} == {WORKER_SERVICE}
    # Nothing names the messages on the worker's side, so they count as never consumed too.
    assert len(diagnosis["never_consumed"]) == TASKS
    # Without --worker-service, a worker with no Celery span is invisible.
    assert diagnose(spans)["orphans"] == []


def test_a_recycled_child_that_never_flushed_leaves_its_messages_never_consumed(auto_spans):
    spans = auto_spans["recycled"]
    diagnosis = diagnose(spans, worker_services=[WORKER_SERVICE])
    assert count(spans, RUN) == 0
    assert diagnosis["orphans"] == []
    published = {s["attributes"]["messaging.message.id"] for s in spans
                 if s["name"] == "apply_async/auto.work"}
    assert len(published) == TASKS
    assert {entry["message_id"] for entry in diagnosis["never_consumed"]} == published
    assert {entry["task"] for entry in diagnosis["never_consumed"]} == {"auto.work"}


def test_eager_runs_are_judged_apart_from_published_messages(sink, tmp_path):
    # apply() publishes nothing, so no worker is needed: the producer process runs them.
    run_id = uuid.uuid4().hex
    env = app_env("fixed", sink.endpoint, tmp_path, "filesystem", run_id)
    subprocess.run(
        [sys.executable, "-m", "tests.apps.auto_instrumented_publish", "0", "eager"],
        cwd=ROOT, env={**os.environ, **env}, check=True, timeout=60, capture_output=True,
    )
    spans = list(load(sink.db_path, resource={RUN_ATTRIBUTE: run_id}))  # flushed before it exited
    runs = {s["span_id"]: s for s in spans if s["name"] == RUN}
    assert len(runs) == 2
    assert all("'is_eager': True" in s["attributes"]["celery.delivery_info"]
               for s in runs.values())
    publish = one(spans, "publish")
    inside = runs[one(spans, "work eager inside")["parent_id"]]
    after = runs[one(spans, "work eager after")["parent_id"]]
    diagnosis = diagnose(spans)
    assert diagnosis["orphans"] == diagnosis["never_consumed"] == []
    # Under the caller's span, the instrumentation continues it: connected. After it, a root
    # with nothing to continue: by design, not an orphan, and never joined to a message.
    assert inside["parent_id"] == publish["span_id"]
    assert (diagnosis["consumer_spans"], diagnosis["connected"]) == (2, 1)
    assert [(r["span_id"], r["verdict"], r["caller"]) for r in diagnosis["eager_roots"]] == [
        (after["span_id"], "by-design", None)]
    assert_no_orphans(spans)
