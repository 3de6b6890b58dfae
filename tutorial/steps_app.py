"""The smallest app for the step-by-step chapter: one Celery app, three tasks, a folder
broker. STEP (an environment variable, 1 to 6) says how much of the fix is in; the web
app's half of it lives in tutorial/steps.py, which publishes.
"""

import os

from celery import Celery, signals
from opentelemetry import trace
from opentelemetry.propagate import inject

import celeryconfig
from tracing import flush_tracing, setup_tracing
from tutorial import minimal_propagation

STEP = int(os.environ.get("STEP", "6"))

app = Celery("steps")
app.conf.update(celeryconfig.broker_settings(), task_ignore_result=True)
tracer = trace.get_tracer(__name__)


@app.task(name="steps.process_order")
def process_order(order_id):
    with tracer.start_as_current_span("charge_payment"):
        pass
    with tracer.start_as_current_span("send_confirmation"):
        pass
    return order_id


@app.task(name="steps.send_receipt")
def send_receipt(order_id):
    with tracer.start_as_current_span("render_receipt"):
        return order_id


@app.task(name="steps.archive_order")
def archive_order(order_id):
    with tracer.start_as_current_span("write_archive"):
        return order_id


def publish_with_context(signature):
    """The call-site fix: inject the current context into this one message's headers."""
    headers = {}
    inject(headers)
    return signature.apply_async(headers=headers)


if STEP == 3:
    import tutorial.article_consumer  # noqa: F401 (its task_prerun handler, as the article wrote it)
if STEP in (4, 5):
    minimal_propagation.install_worker_side()
if STEP == 6:
    minimal_propagation.install()


@signals.worker_init.connect(weak=False)
def _trace_worker(**_):
    setup_tracing("worker")


@signals.worker_process_shutdown.connect(weak=False)
def _flush(**_):
    flush_tracing()
