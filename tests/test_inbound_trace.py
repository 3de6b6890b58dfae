"""Trace headers from HTTP clients are untrusted: the web app continues or links the
caller's trace as configured, forwards only allowed baggage to tasks, and drops oversized
headers. Checked on the real web app, its exported spans and the message it publishes."""

import json

import pytest
from kombu import Connection

from harness.deployment import BROKER_URLS

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def web(started):
    """web(**env) runs the web app alone: no worker takes its messages off the queue."""
    return lambda **env: started("fixed", "redis", parts=["web"], env=env)


def server_span(deployment):
    spans = deployment.wait_for_spans(lambda spans: any(s["kind"] == "SERVER" for s in spans))
    return next(s for s in spans if s["kind"] == "SERVER")


def published_headers(deployment):
    with Connection(BROKER_URLS["redis"]) as conn, conn.SimpleQueue(deployment.queue) as queue:
        message = queue.get(timeout=10)
        message.ack()
        return message.headers


def test_continue_policy_joins_the_callers_trace(web):
    deployment = web()
    deployment.post_order({"traceparent": TRACEPARENT})
    span = server_span(deployment)
    assert (span["trace_id"], span["parent_id"]) == (TRACE_ID, SPAN_ID)


def test_link_policy_starts_a_new_trace_linked_to_the_caller(web):
    deployment = web(INBOUND_TRACE_POLICY="link")
    deployment.post_order({"traceparent": TRACEPARENT})
    span = server_span(deployment)
    assert span["trace_id"] != TRACE_ID and span["parent_id"] is None
    assert span["links"] == [{"trace_id": TRACE_ID, "span_id": SPAN_ID}]
    # The task continues the web app's own trace, not the caller's.
    assert published_headers(deployment)["traceparent"].split("-")[1] == span["trace_id"]


def test_only_allowlisted_baggage_reaches_the_task(web):
    deployment = web(BAGGAGE_ALLOWLIST="tenant")
    deployment.post_order({"traceparent": TRACEPARENT, "baggage": "tenant=acme,user=alice"})
    assert published_headers(deployment)["baggage"] == "tenant=acme"


def test_no_baggage_is_forwarded_by_default(web):
    deployment = web()
    deployment.post_order({"baggage": "user=alice"})
    assert "baggage" not in published_headers(deployment)


def test_oversized_trace_headers_are_dropped_and_the_order_still_goes_through(web):
    deployment = web()
    huge = "00-" + "a" * 5000
    deployment.post_order({"traceparent": huge, "tracestate": "x=" + "y" * 5000,
                           "baggage": "tenant=" + "z" * 9000})
    span = server_span(deployment)
    assert span["parent_id"] is None
    headers = published_headers(deployment)
    assert "baggage" not in headers and len(headers["traceparent"]) == 55
    assert json.dumps(headers).count("y" * 100) == 0
