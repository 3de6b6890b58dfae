"""The Celery app and its tasks. Web and worker processes both import this module."""

import os
import tempfile
from contextlib import closing

from celery import Celery, signals
from opentelemetry import trace

import orders_db
from celery_signals import install
from tracing import flush_tracing, setup_tracing

WORKER_SERVICE_NAME = "orders-worker"
# Web and worker must agree: both import this module.
PROPAGATION = os.environ.get("PROPAGATION", "fixed")
# A prefix lets several deployments share one broker: the demo runs every variant at once.
QUEUE_PREFIX = os.environ.get("QUEUE_PREFIX", "")
ORDERS_QUEUE = QUEUE_PREFIX + "orders"
EMAILS_QUEUE = QUEUE_PREFIX + "emails"


def broker_settings(env=os.environ):
    url = env.get("CELERY_BROKER_URL") or "filesystem://"
    if not url.startswith("filesystem://"):
        return {"broker_url": url}
    # kombu's filesystem transport: the broker is a folder that producer and worker share,
    # so the demo runs with no broker server at all.
    folder = env.get("CELERY_BROKER_FOLDER") or os.path.join(tempfile.gettempdir(), "celery-broker")
    os.makedirs(folder, exist_ok=True)
    options = {
        "data_folder_in": folder,
        "data_folder_out": folder,
        # Its exchange tables go to ./control unless told otherwise.
        "control_folder": os.path.join(folder, "control"),
        # Look for new messages every 0.1 s, not every second: a chain of tasks would
        # otherwise wait a second at every step.
        "polling_interval": 0.1,
    }
    return {
        "broker_url": url,
        "broker_transport": "filesystem_broker:Transport",
        "broker_transport_options": options,
    }


celery_app = Celery("orders")
celery_app.conf.update(
    broker_settings(),
    # JSON only: a pickle payload from anyone who can write to the broker runs code here.
    task_serializer="json",
    accept_content=["json"],
    # The task reports its outcome in the orders table; no result backend to run.
    task_ignore_result=True,
    # A broker that is down must fail the request quickly, not hang it.
    broker_connection_timeout=2,
    task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
    task_default_queue=ORDERS_QUEUE,
    task_routes={"tasks.send_confirmation_email": {"queue": EMAILS_QUEUE}},
    # Acknowledge after the task ran: a worker lost mid-task leaves the message to redeliver.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)
try:
    install(PROPAGATION)
except ValueError as error:
    # Say what is wrong and stop, rather than a stack trace from deep in the worker's start.
    raise SystemExit(f"configuration error: {error}") from None

tracer = trace.get_tracer(__name__)


@celery_app.task(name="tasks.process_order")
def process_order(order_id):
    with closing(orders_db.connect()) as db:
        with tracer.start_as_current_span("charge_payment"):
            if orders_db.get_order(db, order_id) is None:
                raise LookupError(f"order {order_id} does not exist")
            orders_db.advance(db, order_id, "queued", "charged")
        with tracer.start_as_current_span("send_confirmation"):
            if orders_db.advance(db, order_id, "charged", "confirmed"):
                # Another queue, another worker service: the trace must carry on there too.
                send_confirmation_email.delay(order_id)


@celery_app.task(name="tasks.send_confirmation_email")
def send_confirmation_email(order_id):
    with closing(orders_db.connect()) as db:
        with tracer.start_as_current_span("render_email"):
            orders_db.advance(db, order_id, "confirmed", "emailed")


@signals.worker_init.connect(weak=False)
def _trace_worker(**_):
    # Before the pool starts: prefork children inherit the provider (see tracing.py), and
    # the main process can still record tasks it revokes before they reach a child.
    setup_tracing(WORKER_SERVICE_NAME)


@signals.worker_process_shutdown.connect(weak=False)
def _flush_pool_child(**_):
    flush_tracing()
