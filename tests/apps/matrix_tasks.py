"""Tasks for the propagation matrix: one per way a message gets published.

Workers load them with `--include tests.apps.matrix_tasks`. Every task opens a span named
`work <label>`, so that each scenario's expected edges can name the spans they join.
"""

import os
import signal
import time

from celery.exceptions import Ignore, Reject
from opentelemetry import trace
from opentelemetry.propagate import inject

from tasks import PROPAGATION, celery_app

tracer = trace.get_tracer(__name__)
# Chords need their header tasks' results. A folder keeps every broker self-contained.
celery_app.conf.result_backend = f"file://{os.environ['MATRIX_RESULTS_FOLDER']}"


def call_site_headers():
    """What the call-site variant passes at every call site it owns; nothing otherwise."""
    if PROPAGATION != "call-site":
        return {}
    headers = {}
    inject(headers)
    return headers


def _work(label):
    with tracer.start_as_current_span(f"work {label}"):
        return label


# Chains and chords pass results as leading arguments: the label is always the last one.
@celery_app.task(name="matrix.work", ignore_result=False)
def work(*args):
    return _work(args[-1])


@celery_app.task(name="matrix.fail")
def fail(label):
    _work(label)
    raise RuntimeError(f"{label} fails on purpose")


@celery_app.task(name="matrix.errback")
def errback(*args):
    _work(args[-1])


@celery_app.task(name="matrix.errback_task")
def errback_task(label):
    _work(label)


@celery_app.task(name="matrix.spawn")
def spawn(label):
    _work(label)
    work.apply_async((f"{label}-child",), headers=call_site_headers())


@celery_app.task(name="matrix.flaky", bind=True, max_retries=3)
def flaky(self, label):
    _work(f"{label}-{self.request.retries + 1}")
    if self.request.retries < 1:
        raise self.retry(countdown=0.1)


@celery_app.task(
    name="matrix.autoretry", bind=True, autoretry_for=(RuntimeError,), max_retries=3,
    default_retry_delay=0.1,
)
def autoretry(self, label):
    _work(f"{label}-{self.request.retries + 1}")
    if self.request.retries < 1:
        raise RuntimeError("first attempt fails on purpose")


@celery_app.task(name="matrix.overrun", time_limit=1)
def overrun(label):
    _work(label)
    time.sleep(30)


@celery_app.task(name="matrix.never_runs")
def never_runs(label):
    raise Ignore()


@celery_app.task(name="matrix.reject")
def reject(label):
    _work(label)
    raise Reject("rejected on purpose", requeue=False)


# The worker lost: without reject_on_worker_lost, Celery fails the task and acknowledges it.
@celery_app.task(name="matrix.lost", reject_on_worker_lost=False)
def lost(label):
    _work(label)
    os.kill(os.getpid(), signal.SIGKILL)
