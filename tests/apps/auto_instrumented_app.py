"""A Celery app traced by opentelemetry-instrumentation-celery instead of celery_signals, for
the doctor's tests: `celery -A tests.apps.auto_instrumented_app worker`, on the example app's
settings (celeryconfig.py). It never imports tasks.py, which installs celery_signals.

AUTO_INSTRUMENT_WORKER=0 leaves the worker traced but without the Celery instrumentation:
then only the producer (tests/apps/auto_instrumented_publish.py) records Celery spans. Nothing
flushes a pool process on its way out, as in the instrumentation's own set-up: a prefork
child recycled by --max-tasks-per-child takes its spans with it.
"""

import os

from celery import Celery, signals
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor

import celeryconfig
from tracing import setup_tracing

celery_app = Celery("auto")
celery_app.conf.update(celeryconfig.settings())
tracer = trace.get_tracer(__name__)


@celery_app.task(name="auto.work")
def work(label):
    with tracer.start_as_current_span(f"work {label}"):
        return label


@signals.worker_init.connect(weak=False)
def _trace_worker(**_):
    # Before the pool starts: prefork children inherit the provider and the receivers.
    setup_tracing("auto-worker")
    if os.environ.get("AUTO_INSTRUMENT_WORKER", "1") == "1":
        CeleryInstrumentor().instrument()
