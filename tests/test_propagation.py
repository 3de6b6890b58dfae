"""The four variants end to end: web app, real worker, real broker, spans over OTLP/HTTP."""

import time

import pytest

from traces import (
    CONNECTED_EDGES, PUBLISH, REQUEST, RUN, TASK_EDGES, assert_edges, assert_orphaned, names,
)

BROKERS = ["filesystem", "redis"]


def order_spans(deployment):
    since = time.time_ns()
    status, body = deployment.post("/orders", {"item": "book", "quantity": 1})
    assert status == 202, body
    return deployment.wait_for_spans(
        lambda spans: {REQUEST, RUN, "charge_payment", "send_confirmation"} <= names(spans),
        since,
    )


@pytest.mark.parametrize("broker", BROKERS)
def test_broken_leaves_the_worker_span_orphaned(deploy, broker):
    spans = order_spans(deploy("broken", broker))
    assert_orphaned(spans, RUN)
    assert_edges(spans, TASK_EDGES)
    assert PUBLISH not in names(spans)


@pytest.mark.parametrize("broker", BROKERS)
def test_inject_only_is_still_orphaned_because_the_worker_must_extract(deploy, broker):
    spans = order_spans(deploy("inject-only", broker))
    assert_edges(spans, [(REQUEST, PUBLISH), *TASK_EDGES])
    assert_orphaned(spans, RUN)


@pytest.mark.parametrize("variant", ["call-site", "fixed"])
@pytest.mark.parametrize("broker", BROKERS)
def test_fixed_variants_give_one_trace_from_request_to_task(deploy, broker, variant):
    spans = order_spans(deploy(variant, broker))
    assert_edges(spans, CONNECTED_EDGES)
    assert len({span["trace_id"] for span in spans}) == 1
