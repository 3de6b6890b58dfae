"""The expected shape of each trace, declared once as parent → child edges by span name,
and the checks that hold real spans to it."""

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
