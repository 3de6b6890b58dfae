"""The four variants end to end: web app, real worker, real broker, spans over OTLP/HTTP."""

import time

import pytest

from tests.support.traces import (
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
    one,
)
from tracetools.doctor import assert_no_orphans

BROKERS = ["filesystem", "redis"]
# No order has this id: the task fails with LookupError, after its consumer span started.
NO_SUCH_ORDER = 10**9 + 17


def carried(spans, name):
    """What consumer span NAME says its message carried, and whether the run was eager."""
    attributes = one(spans, name)["attributes"]
    return attributes["celery.trace_context"], attributes["celery.is_eager"]


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
    # Nothing was injected: the spans say so, and the doctor can prove it.
    assert carried(spans, RUN) == carried(spans, EMAIL_RUN) == ("absent", False)


@pytest.mark.parametrize("broker", BROKERS)
def test_inject_only_is_still_orphaned_because_the_worker_must_extract(deploy, broker):
    spans = order_spans(deploy("inject-only", broker))
    assert_edges(spans, [(REQUEST, PUBLISH), *TASK_EDGES])
    assert_orphaned(spans, RUN)
    # A root although its message carried a usable context: proof it was never extracted.
    assert carried(spans, RUN) == ("valid", False)


@pytest.mark.parametrize("broker", BROKERS)
def test_call_site_connects_the_web_call_but_not_the_delay_inside_the_task(deploy, broker):
    spans = order_spans(deploy("call-site", broker))
    assert_edges(spans, [(REQUEST, PUBLISH), (PUBLISH, RUN), *TASK_EDGES])
    assert_orphaned(spans, EMAIL_RUN)
    assert carried(spans, RUN) == ("valid", False)
    assert carried(spans, EMAIL_RUN) == ("absent", False)  # the .delay() injected nothing


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
    assert carried(spans, RUN) == carried(spans, EMAIL_RUN) == ("valid", False)


@pytest.mark.parametrize("broker", BROKERS)
def test_a_malformed_traceparent_starts_a_root_that_says_so(deploy, broker):
    deployment = deploy("fixed", broker)
    since = time.time_ns()
    trace_id = "ab" * 16
    sent = deployment.send_task("tasks.process_order", [NO_SUCH_ORDER], headers={
        "traceparent": f"00-{trace_id}-not-a-span-id-01",  # the SDK refuses it
    })

    def run_of_sent(spans):
        return [s for s in spans if s["name"] == RUN
                and s["attributes"].get("messaging.message.id") == sent.id]

    (run,) = run_of_sent(deployment.wait_for_spans(run_of_sent, since))
    assert (run["parent_id"], run["links"]) == (None, [])
    assert run["trace_id"] != trace_id
    assert (run["attributes"]["celery.trace_context"], run["status"]) == ("malformed", "ERROR")
