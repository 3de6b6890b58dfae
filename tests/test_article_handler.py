"""The article's consumer handler, run as written, never sees the headers it waits for."""

import subprocess
import sys
import time

from harness.processes import ROOT
from tests.support.traces import (
    PUBLISH,
    REQUEST,
    RUN,
    assert_edges,
    assert_orphaned,
    complete,
    names,
    one,
)


def test_task_prerun_sends_no_headers_but_the_request_carries_them():
    result = subprocess.run(
        [sys.executable, "tutorial/headers_never_arrive.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "task_prerun sent: args, kwargs, sender, signal, task, task_id"
    assert lines[1] == "the article's handler got headers = None"
    assert lines[3] == (
        "extract(task.request) found trace 0af7651916cd43dd8448eb211c80319c, "
        "span b7ad6b7169203331"
    )


def test_a_worker_with_the_articles_handler_stays_orphaned(deploy):
    # The producer injects as the article says; the worker has only the article's handler
    # to extract with.
    deployment = deploy("inject-only", worker_args=["--include", "tutorial.article_consumer"])
    since = time.time_ns()
    status, body = deployment.post("/orders", {"item": "book", "quantity": 1})
    assert status == 202, body
    spans = deployment.wait_for_spans(
        lambda spans: {REQUEST, PUBLISH, "send_confirmation"} <= names(spans)
        and complete(spans), since
    )
    assert_edges(spans, [(REQUEST, PUBLISH)])
    assert_orphaned(spans, RUN)
    assert one(spans, "charge_payment")["trace_id"] != one(spans, REQUEST)["trace_id"]
