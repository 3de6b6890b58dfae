"""The Celery app and its tasks. Web and worker processes both import this module."""

import os
from contextlib import closing

from celery import Celery, signals
from opentelemetry import trace

import celery_signals
import celeryconfig
import demo_mistakes
import orders_db
from tracing import flush_tracing, setup_tracing

WORKER_SERVICE_NAME = "orders-worker"
# What this deployment propagates; web and worker must agree, and both import this module.
#   broken       nothing carries the trace context
#   inject-only  the web app injects at its call site; the worker never extracts
#   call-site    the web app injects at its call site; the worker extracts
#   fixed        every publish injects (before_task_publish); the worker extracts
PROPAGATION = os.environ.get("PROPAGATION", "fixed")
# What each process installs for it: the fix, or one of the demo's mistakes (demo_mistakes.py).
# The call-site injection is app.py's own.
INSTALL = {
    "broken": demo_mistakes.install_article_handler,
    "inject-only": demo_mistakes.install_article_handler,
    "call-site": demo_mistakes.install_worker_half,
    "fixed": celery_signals.install,
}
INJECTS_AT_CALL_SITE = PROPAGATION in ("inject-only", "call-site")

celery_app = Celery("orders")
celery_app.conf.update(celeryconfig.settings())
if PROPAGATION not in INSTALL:
    # Say what is wrong and stop, rather than a stack trace from deep in the worker's start.
    raise SystemExit(
        f"configuration error: PROPAGATION={PROPAGATION!r}: choose one of {', '.join(INSTALL)}"
    )
try:
    INSTALL[PROPAGATION]()
except RuntimeError as error:
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
    # the main process can record what only it sees: tasks it revokes before they reach a
    # child, a hard time limit, a pool process lost mid-task.
    setup_tracing(WORKER_SERVICE_NAME)


@signals.worker_process_shutdown.connect(weak=False)
def _flush_pool_child(**_):
    flush_tracing()
