"""The web app: POST /orders stores an order and enqueues process_order for the worker."""

import os
import signal
import sys
from contextlib import closing

from flask import Flask, jsonify, request
from kombu.exceptions import OperationalError
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind
from werkzeug.exceptions import HTTPException

import orders_db
from inbound_trace_policy import InboundTracePolicy, link_to_caller
from tasks import INJECTS_AT_CALL_SITE, process_order
from tracing import setup_tracing

MAX_QUANTITY = 1000
MAX_ITEM_LENGTH = 200

tracer = trace.get_tracer(__name__)


def create_app(test_config=None):
    app = Flask(__name__)
    app.config.from_mapping(
        ORDERS_DB=orders_db.database_path(),
        # "continue" the caller's trace, or start a new one that "link"s to it: see
        # inbound_trace_policy.py before you expose the app to the internet.
        INBOUND_TRACE_POLICY=os.environ.get("INBOUND_TRACE_POLICY", "continue"),
        BAGGAGE_ALLOWLIST=[k for k in os.environ.get("BAGGAGE_ALLOWLIST", "").split(",") if k],
    )
    if test_config:
        app.config.from_mapping(test_config)
    FlaskInstrumentor().instrument_app(app, request_hook=link_to_caller)
    # Wrapped after instrumenting, so it runs first and the server span sees its result.
    app.wsgi_app = InboundTracePolicy(
        app.wsgi_app, app.config["INBOUND_TRACE_POLICY"], app.config["BAGGAGE_ALLOWLIST"]
    )

    @app.errorhandler(HTTPException)
    def json_error(error):
        return jsonify(error=error.description), error.code

    @app.post("/orders")
    def create_order():
        payload = request.get_json(silent=True)
        problem = validate_order(payload)
        if problem:
            return jsonify(error=problem), 400
        with closing(orders_db.connect(app.config["ORDERS_DB"])) as db:
            order_id = orders_db.create_order(db, payload["item"], payload["quantity"])
            try:
                enqueue_order(order_id)
            except OperationalError:
                # The order is committed before it is enqueued, so that the worker can read
                # it; an order nobody will process must not stay behind.
                orders_db.delete_order(db, order_id)
                return jsonify(error="the task queue is unavailable; try again later"), 503
        return jsonify(id=order_id, status="queued"), 202

    @app.get("/orders/<int:order_id>")
    def get_order(order_id):
        with closing(orders_db.connect(app.config["ORDERS_DB"])) as db:
            order = orders_db.get_order(db, order_id)
        if order is None:
            return jsonify(error=f"order {order_id} not found"), 404
        return jsonify(order)

    return app


def validate_order(payload):
    """Return what is wrong with an order payload, or None."""
    if not isinstance(payload, dict):
        return "the body must be a JSON object"
    item = payload.get("item")
    if not isinstance(item, str) or not item.strip() or len(item) > MAX_ITEM_LENGTH:
        return f"item must be a non-empty string of at most {MAX_ITEM_LENGTH} characters"
    quantity = payload.get("quantity")
    # bool is a subclass of int in Python: reject true/false explicitly.
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        return "quantity must be an integer"
    if not 1 <= quantity <= MAX_QUANTITY:
        return f"quantity must be between 1 and {MAX_QUANTITY}"
    return None


def enqueue_order(order_id):
    if INJECTS_AT_CALL_SITE:
        # The call-site fix: inject the current context into this one message's headers.
        with tracer.start_as_current_span(
            f"celery.apply {process_order.name}", kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "celery", "celery.task.name": process_order.name},
        ) as span:
            headers = {}
            inject(headers)
            result = process_order.apply_async((order_id,), headers=headers)
            # The task id, as celery_signals records it: the doctor joins producer to consumer
            # by it.
            span.set_attribute("messaging.message.id", result.id)
    else:
        # broken: nothing carries the context. fixed: before_task_publish injects it.
        process_order.delay(order_id)


def _exit_on_sigterm(*_):
    # Once: a second SIGTERM during the exit would interrupt the flush of the last spans.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(0)


def main():
    setup_tracing("orders-web")
    # Python's default SIGTERM handler exits without running atexit, where the SDK flushes
    # the spans it still holds.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # The same variables `flask run` reads.
    host = os.environ.get("FLASK_RUN_HOST", "127.0.0.1")
    port = int(os.environ.get("FLASK_RUN_PORT", "5000"))
    try:
        app = create_app()
    except ValueError as error:
        raise SystemExit(f"configuration error: {error}") from None
    app.run(host=host, port=port)


if __name__ == "__main__":
    main()
