"""The expected shape of each trace, declared once as parent → child edges by span name,
and the checks that hold real spans to it."""

import re

REQUEST = "POST /orders"
PUBLISH = "celery.apply tasks.process_order"
RUN = "celery.run tasks.process_order"
EMAIL_PUBLISH = "celery.apply tasks.send_confirmation_email"
EMAIL_RUN = "celery.run tasks.send_confirmation_email"

# The tasks' own spans hang under their consumer span in every variant.
TASK_EDGES = [(RUN, "charge_payment"), (RUN, "send_confirmation"), (EMAIL_RUN, "render_email")]
# One trace from the request, through the orders worker, to the email worker.
CONNECTED_EDGES = [
    (REQUEST, PUBLISH),
    (PUBLISH, RUN),
    ("send_confirmation", EMAIL_PUBLISH),
    (EMAIL_PUBLISH, EMAIL_RUN),
    *TASK_EDGES,
]


def one(spans, name):
    matches = [span for span in spans if span["name"] == name]
    assert len(matches) == 1, f"expected one {name!r} span, found {len(matches)}"
    return matches[0]


def assert_edges(spans, edges):
    for parent_name, child_name in edges:
        parent, child = one(spans, parent_name), one(spans, child_name)
        assert child["trace_id"] == parent["trace_id"], f"{child_name} left {parent_name}'s trace"
        assert child["parent_id"] == parent["span_id"], f"{child_name} is not under {parent_name}"


def assert_orphaned(spans, name, request_name=REQUEST):
    """NAME starts a trace of its own, cut off from the request's."""
    span, request = one(spans, name), one(spans, request_name)
    assert span["parent_id"] is None, f"{name} has a parent"
    assert span["trace_id"] != request["trace_id"], f"{name} is in the request's trace"


def names(spans):
    return {span["name"] for span in spans}


def complete(spans):
    """Every span's parent has arrived too. A parent ends after its children, so it can
    reach the sink in a later export than they do: wait for it before checking edges."""
    ids = {span["span_id"] for span in spans}
    return all(span["parent_id"] is None or span["parent_id"] in ids for span in spans)


def spans_named(spans, name):
    """Every span called NAME, oldest first."""
    return sorted((s for s in spans if s["name"] == name), key=lambda s: s["start_ns"])


def count(spans, name):
    return sum(span["name"] == name for span in spans)


# -- spans made by hand, and rendered traces -------------------------------------------

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


def made(name, span_id, trace_id, parent_id=None, start=0, end=1, service="orders-web",
         kind="INTERNAL", status="UNSET"):
    """A span record (tracetools.span_record) made by hand; START and END in ms from T0."""
    return {
        "trace_id": trace_id * 32 if len(trace_id) == 1 else trace_id,
        "span_id": span_id, "parent_id": parent_id, "name": name, "kind": kind,
        "service": service, "start_ns": T0 + int(start * MS), "end_ns": T0 + int(end * MS),
        "status": status, "attributes": {}, "resource": {"service.name": service},
        "links": [],
    }


def connected(queued=40):
    """The fixed variant's shape: request, publish, QUEUED ms in the queue, run."""
    return [
        made("POST /orders", "a1", "a", start=0, end=40),
        made("celery.apply tasks.process_order", "a2", "a", "a1", 10, 20, kind="PRODUCER"),
        made("celery.run tasks.process_order", "a3", "a", "a2", 20 + queued, 60 + queued,
             service="orders-worker", kind="CONSUMER"),
        made("charge_payment", "a4", "a", "a3", 30 + queued, 40 + queued,
             service="orders-worker"),
    ]


def orphaned():
    """The broken variant's shape: the worker's consumer span is a root of its own, and says
    that its message carried no trace context."""
    run = made("celery.run tasks.process_order", "c1", "c", start=60, end=100,
               service="orders-worker", kind="CONSUMER")
    run["attributes"] = {"celery.trace_context": "absent"}
    return [
        made("POST /orders", "b1", "b", start=0, end=40),
        run,
        made("charge_payment", "c2", "c", "c1", 70, 80, service="orders-worker"),
    ]


def normalise(text):
    """Ids, durations, start offsets and timeline bars change from run to run; the shape
    (which spans, under which parent, in which service, marked how) must not."""
    text = re.sub(r"\b[0-9a-f]{32}\b", "<trace id>", text)
    text = re.sub(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<task id>",
                  text)
    text = re.sub(r"\b\d+(\.\d)? (s|min|h|d) ago\b", "<age> ago", text)  # the doctor's report
    text = re.sub(r"\b\d+\.\d ms\b", "<ms>", text)  # durations, and offsets: +<ms>
    # A timeline bar (tracetools/view.py): 32 cells between pipes, filled, dotted or blank.
    text = re.sub(r"\|[█· ]{32}\|", "|<bar>|", text)
    return [" ".join(line.split()) for line in text.strip().splitlines()]
