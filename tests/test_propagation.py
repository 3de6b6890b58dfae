"""The four variants end to end: web app, real worker, real broker, spans over OTLP/HTTP."""

import time

import pytest
from traces import (
    CONNECTED_EDGES,
    EMAIL_PUBLISH,
    EMAIL_RUN,
    PUBLISH,
    REQUEST,
    RUN,
    TASK_EDGES,
    assert_edges,
    assert_orphaned,
    complete,
    names,
)

from tracetools.doctor import assert_no_orphans

BROKERS = ["filesystem", "redis"]


def order_spans(deployment):
    since = time.time_ns()
    status, body = deployment.post("/orders", {"item": "book", "quantity": 1})
    assert status == 202, body
    return deployment.wait_for_spans(
        lambda spans: {REQUEST, RUN, "send_confirmation", "render_email"} <= names(spans)
        and complete(spans),
        since,
    )


@pytest.mark.parametrize("broker", BROKERS)
def test_broken_leaves_both_workers_spans_orphaned(deploy, broker):
    spans = order_spans(deploy("broken", broker))
    assert_orphaned(spans, RUN)
    assert_orphaned(spans, EMAIL_RUN)
    assert_edges(spans, TASK_EDGES)
    assert not {PUBLISH, EMAIL_PUBLISH} & names(spans)


@pytest.mark.parametrize("broker", BROKERS)
def test_inject_only_is_still_orphaned_because_the_worker_must_extract(deploy, broker):
    spans = order_spans(deploy("inject-only", broker))
    assert_edges(spans, [(REQUEST, PUBLISH), *TASK_EDGES])
    assert_orphaned(spans, RUN)


@pytest.mark.parametrize("broker", BROKERS)
def test_call_site_connects_the_web_call_but_not_the_delay_inside_the_task(deploy, broker):
    spans = order_spans(deploy("call-site", broker))
    assert_edges(spans, [(REQUEST, PUBLISH), (PUBLISH, RUN), *TASK_EDGES])
    assert_orphaned(spans, EMAIL_RUN)


@pytest.mark.parametrize("broker", BROKERS)
def test_fixed_gives_one_trace_from_request_to_the_email_worker(deploy, broker):
    spans = order_spans(deploy("fixed", broker))
    assert_edges(spans, CONNECTED_EDGES)
    # The doctor's check, as your own suite would call it: no orphan, nothing unconsumed.
    assert_no_orphans(spans)
    assert len({span["trace_id"] for span in spans}) == 1
    services = {span["name"]: span["service"] for span in spans}
    assert (services[REQUEST], services[RUN], services[EMAIL_RUN]) == (
        "orders-web", "orders-worker", "email-worker",
    )
