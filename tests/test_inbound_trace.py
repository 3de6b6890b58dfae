"""Trace headers from HTTP clients are untrusted: the web app continues or links the
caller's trace as configured, forwards only allowed baggage to tasks, and drops oversized
headers. Checked on the real web app, its exported spans and the message it publishes."""

import json
import urllib.request
import uuid

import pytest
from conftest import BROKER_URLS, require
from kombu import Connection

from processes import start_web, stop
from trace_sink import wait_for_spans

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def web(sink, tmp_path):
    """start(**env) runs the web app alone: no worker takes its messages off the queue."""
    require("redis")
    started = []

    def start(**env):
        run_id = uuid.uuid4().hex
        env = {
            "CELERY_BROKER_URL": BROKER_URLS["redis"], "QUEUE_PREFIX": f"{run_id}-",
            "PROPAGATION": "fixed", "ORDERS_DB": str(tmp_path / "orders.db"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_RESOURCE_ATTRIBUTES": f"test.run={run_id}", **env,
        }
        process, base_url = start_web(env, tmp_path / f"web-{run_id}.log")
        started.append(process)
        return base_url, run_id

    yield start
    for process in started:
        stop(process)


def post_order(base_url, headers):
    request = urllib.request.Request(
        f"{base_url}/orders", data=b'{"item": "book", "quantity": 1}',
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def server_span(sink, run_id):
    spans = wait_for_spans(
        sink.db_path, lambda spans: any(s["kind"] == "SERVER" for s in spans), 30,
        **{"test.run": run_id},
    )
    return next(s for s in spans if s["kind"] == "SERVER")


def published_headers(run_id):
    with Connection(BROKER_URLS["redis"]) as conn, conn.SimpleQueue(f"{run_id}-orders") as queue:
        message = queue.get(timeout=10)
        message.ack()
        return message.headers


def test_continue_policy_joins_the_callers_trace(web, sink):
    base_url, run_id = web()
    post_order(base_url, {"traceparent": TRACEPARENT})
    span = server_span(sink, run_id)
    assert (span["trace_id"], span["parent_id"]) == (TRACE_ID, SPAN_ID)


def test_link_policy_starts_a_new_trace_linked_to_the_caller(web, sink):
    base_url, run_id = web(INBOUND_TRACE_POLICY="link")
    post_order(base_url, {"traceparent": TRACEPARENT})
    span = server_span(sink, run_id)
    assert span["trace_id"] != TRACE_ID and span["parent_id"] is None
    assert span["links"] == [{"trace_id": TRACE_ID, "span_id": SPAN_ID}]
    # The task continues the web app's own trace, not the caller's.
    assert published_headers(run_id)["traceparent"].split("-")[1] == span["trace_id"]


def test_only_allowlisted_baggage_reaches_the_task(web):
    base_url, run_id = web(BAGGAGE_ALLOWLIST="tenant")
    post_order(base_url, {"traceparent": TRACEPARENT, "baggage": "tenant=acme,user=alice"})
    assert published_headers(run_id)["baggage"] == "tenant=acme"


def test_no_baggage_is_forwarded_by_default(web):
    base_url, run_id = web()
    post_order(base_url, {"baggage": "user=alice"})
    assert "baggage" not in published_headers(run_id)


def test_oversized_trace_headers_are_dropped_and_the_order_still_goes_through(web, sink):
    base_url, run_id = web()
    huge = "00-" + "a" * 5000
    post_order(base_url, {"traceparent": huge, "tracestate": "x=" + "y" * 5000,
                          "baggage": "tenant=" + "z" * 9000})
    span = server_span(sink, run_id)
    assert span["parent_id"] is None
    headers = published_headers(run_id)
    assert "baggage" not in headers and len(headers["traceparent"]) == 55
    assert json.dumps(headers).count("y" * 100) == 0
