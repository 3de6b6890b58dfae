"""Failures the worker's main process reports, not the pool process that ran the task: each
is recorded once per attempt, in the producer's trace, under the producer span.

The main process remembers each message it received (task_received) for as long as it
holds it: a hard time limit or a lost pool process takes the run span with it, and Celery
then reports the failure with nothing but the task id.
"""

import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from harness.polling import poll_until
from harness.processes import ROOT, wait_until_ready
from tests.support.traces import count, spans_named

DEFAULT_PROBE_TASKS = 1_000
PROBE_TASKS = int(os.environ.get("PROBE_TASKS", DEFAULT_PROBE_TASKS))
# What one worker with two pool processes and prefetch 1 may hold at once, with margin.
BOUND = 6


def producer_headers():
    """A producer's context, as a traced web app would send it: (trace id, span id, headers)."""
    trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


@pytest.fixture
def worker(started, tmp_path):
    deployment = started(
        # One --include with both: a second one would replace the first.
        worker_args=["--include", "tests.apps.matrix_tasks,tests.apps.worker_probe"],
        env={"MATRIX_RESULTS_FOLDER": str(tmp_path)},
    )
    wait_until_ready(deployment.workers[0])
    return deployment


def failure_records(spans, task):
    return spans_named(spans, f"celery.failed {task}")


def published_and_flushed(worker, task, arrived):
    """Publish TASK from a producer's context; once ARRIVED(spans), stop the worker, which
    flushes every span it holds. (task id, the producer's trace and span ids, the spans)"""
    since = time.time_ns()
    trace_id, span_id, headers = producer_headers()
    result = worker.send_task(task, [task.split(".")[1]], headers=headers)
    worker.wait_for_spans(arrived, since)
    worker.stop()
    return result.id, trace_id, span_id, worker.spans(since)


def assert_recorded_once_under_the_producer(spans, task, task_id, trace_id, span_id):
    (record,) = failure_records(spans, task)
    assert (record["trace_id"], record["parent_id"]) == (trace_id, span_id)
    assert record["attributes"]["messaging.message.id"] == task_id
    # Read from the message the main process received, as the run span would have been.
    attributes = record["attributes"]
    assert (attributes["celery.trace_context"], attributes["celery.is_eager"]) == ("valid", False)
    assert record["status"] == "ERROR"
    # Every span the worker wrote for this task is in the producer's trace.
    for span in spans:
        if span["attributes"].get("messaging.message.id") == task_id:
            assert span["trace_id"] == trace_id, span["name"]


def test_a_hard_time_limit_is_recorded_once_in_the_producers_trace(worker, figures):
    since = time.time_ns()
    trace_id, span_id, headers = producer_headers()
    killed = worker.send_task("matrix.overrun", ["overrun"], headers=headers)
    # The pool replaces the killed process: the next task still runs, and is traced.
    worker.send_task("matrix.work", ["after-kill"], headers=headers)
    worker.wait_for_spans(
        lambda spans: failure_records(spans, "matrix.overrun") and count(spans, "work after-kill"),
        since,
    )
    # Celery 5.7 sends task_failure twice for one hard time limit: stop the worker, which
    # flushes every span it holds, and count what it wrote.
    worker.stop()
    spans = worker.spans(since)
    assert_recorded_once_under_the_producer(spans, "matrix.overrun", killed.id, trace_id, span_id)
    # The run span, when the killed process got it out at all, sits under the producer too.
    for run in spans_named(spans, "celery.run matrix.overrun"):
        assert run["parent_id"] == span_id
    (after,) = spans_named(spans, "work after-kill")
    assert after["trace_id"] == trace_id
    figures["hard time limit kills the pool process mid-task"] = (
        "one failed span, under the producer span; the next task runs, traced"
    )


def test_a_lost_pool_process_is_recorded_once_in_the_producers_trace(worker, figures):
    task_id, trace_id, span_id, spans = published_and_flushed(
        worker, "matrix.lost", lambda spans: failure_records(spans, "matrix.lost")
    )
    assert_recorded_once_under_the_producer(spans, "matrix.lost", task_id, trace_id, span_id)
    figures["a pool process killed mid-task (kill -9), the task not requeued"] = (
        "one failed span (WorkerLostError), under the producer span"
    )


def test_a_reject_is_recorded_by_its_run_span_alone(worker, figures):
    task_id, trace_id, span_id, spans = published_and_flushed(
        worker, "matrix.reject", lambda spans: spans_named(spans, "celery.run matrix.reject")
    )
    (run,) = spans_named(spans, "celery.run matrix.reject")
    assert (run["trace_id"], run["parent_id"]) == (trace_id, span_id)
    assert run["attributes"]["messaging.message.id"] == task_id
    assert run["attributes"]["celery.state"] == "REJECTED"
    assert run["status"] == "ERROR"
    # The main process reports the same reject as a failure: no second record for it.
    assert failure_records(spans, "matrix.reject") == []
    figures["Reject(requeue=False)"] = "its run span records it (ERROR, REJECTED); no second record"


def test_protocol_1_messages_carry_their_id_on_the_producer_span(worker):
    since = time.time_ns()
    subprocess.run(
        [sys.executable, "-m", "tests.apps.matrix_publish", "apply_async"], cwd=ROOT,
        env={**os.environ, **worker.env, "TASK_PROTOCOL": "1"}, check=True, timeout=60,
        capture_output=True,
    )
    spans = worker.wait_for_spans(
        lambda spans: spans_named(spans, "celery.run matrix.work")
        and spans_named(spans, "celery.apply matrix.work"), since,
    )
    (publish,) = spans_named(spans, "celery.apply matrix.work")
    (run,) = spans_named(spans, "celery.run matrix.work")
    assert publish["attributes"]["messaging.message.id"]
    message_id = publish["attributes"]["messaging.message.id"]
    assert run["attributes"]["messaging.message.id"] == message_id
    assert run["parent_id"] == publish["span_id"]


def probe(deployment):
    """What the worker's main process remembers, or None before it listens."""
    node = f"orders-{deployment.run_id}@"
    replies = deployment.producer_app().control.broadcast("otel_probe", reply=True, timeout=2)
    answers = [a for reply in replies for name, a in reply.items() if name.startswith(node)]
    return answers[0] if answers else None


def test_what_the_main_process_remembers_stays_bounded(started, tmp_path, figures):
    # Tasks that do nothing: PROBE_TASKS (1,000 by default, 100,000 in the opt-in run the
    # README reports) go through one prefork worker, which logs no line per task.
    worker = started(
        concurrency=2, worker_args=["--include", "tests.apps.matrix_tasks,tests.apps.worker_probe",
                                    "--loglevel", "WARNING"],
        env={"MATRIX_RESULTS_FOLDER": str(tmp_path)},
    )
    # Its log says nothing at WARNING: ready is when it answers.
    before = poll_until(lambda: probe(worker), 30, "the worker answers", check=worker.check_alive)
    since = time.time_ns()
    headers = producer_headers()[2]
    for number in range(PROBE_TASKS):
        worker.send_task("matrix.work", [f"probe-{number}"], headers=headers)
    remembered = []

    def drained():
        answer = probe(worker)
        if answer is None:  # a broadcast the worker missed: ask again
            return None
        remembered.append(answer["remembered"])
        return answer if count(worker.spans(since), f"work probe-{PROBE_TASKS - 1}") else None

    after = poll_until(drained, 60 + PROBE_TASKS / 25, "every probe task ran", interval=1)
    # A weak reference per request the worker still holds: with prefetch 1 and two pool
    # processes, a handful at any moment, however many went through.
    assert max(remembered) <= BOUND
    growth_mb = (after["rss_kb"] - before["rss_kb"]) / 1024
    print(f"\nmain process after {PROBE_TASKS} tasks: at most {max(remembered)} remembered, "
          f"RSS {after['rss_kb'] / 1024:.1f} MB ({growth_mb:+.1f} MB)")
    if PROBE_TASKS == DEFAULT_PROBE_TASKS:
        figures["what the worker's main process remembers per task"] = (
            f"{PROBE_TASKS:,} tasks through one worker: never more than {BOUND} remembered at "
            "once, each forgotten when the worker lets go of its message"
        )


def self_signed(folder, name):
    """A key and a self-signed certificate, NAME.key and NAME.pem in FOLDER."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    (folder / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_a_message_the_worker_cannot_decode_leaves_no_orphan(started, tmp_path):
    # Signed by a producer whose certificate the worker does not trust. Celery 5.7 fails to
    # decode it before any task signal (no task_received, no task_failure), logs it and
    # drops it: there is no run to record, and nothing may start a trace of its own.
    for name in ("worker", "producer"):
        self_signed(tmp_path, name)
    worker = started(
        worker_args=["--include", "tests.apps.matrix_tasks,tests.apps.signed_worker"],
        env={"MATRIX_RESULTS_FOLDER": str(tmp_path), "SIGNING_FOLDER": str(tmp_path)},
    )
    wait_until_ready(worker.workers[0])
    since = time.time_ns()
    subprocess.run(
        [sys.executable, "-m", "tests.apps.signed_publish"], cwd=ROOT, check=True, timeout=60,
        env={**os.environ, **worker.env, "TRACEPARENT": producer_headers()[2]["traceparent"]},
    )
    poll_until(lambda: "Unknown certificate" in worker.worker_log(), 30, "the worker refuses it")
    worker.stop()
    assert worker.spans(since) == []
