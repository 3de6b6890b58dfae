"""The Celery app of a Django project, with the fix: `celery -A orders_site worker`."""

import os

from celery import Celery, signals

import celery_signals
from tracing import flush_tracing, setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_site.settings")

app = Celery("orders_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Here, where the app is made: the web process imports it (orders_site/__init__.py), and so
# does every worker. One call, both sides.
celery_signals.install()


@signals.worker_init.connect(weak=False)
def trace_worker(**_):
    # Before the pool forks: the children inherit the provider (tracing.py says why).
    setup_tracing("orders-worker")


@signals.worker_process_shutdown.connect(weak=False)
def flush_pool_child(**_):
    flush_tracing()
