"""The span record: one span as every part of tracetools passes it around.

The sink stores it, tracetools.sources.load() yields it from every source, and the doctor,
the viewer and the waterfall page read it. One module decodes spans off the wire into it,
tracetools.otlp_json, so that every wire format arrives in the same shape, whatever its
encoding of ids, kinds and times.
A TypedDict, not a class: a record is a plain dict, so `span["trace_id"]` works everywhere,
records compare with ==, and a million of them cost no more than the dicts they are.
"""

from typing import TypedDict


class Link(TypedDict):
    """A span a span links to instead of being its child: how a consumer that starts a trace
    of its own on purpose still points at its producer."""

    trace_id: str  # 32 lowercase hex digits: the linked span's trace
    span_id: str  # 16 lowercase hex digits


class Span(TypedDict):
    """One span, whatever source it came from."""

    # 32 lowercase hex digits. Sources write hex or base64 (Tempo): one spelling, so that ids
    # from two sources compare equal.
    trace_id: str
    # 16 lowercase hex digits; what the loader de-duplicates on, since a sink can receive an
    # export twice and two sources can overlap.
    span_id: str
    # The parent's span id, or None for a root: "", absent and all zeros all mean root on the
    # wire. A parent id that no span in the data carries is how a lost parent shows.
    parent_id: str | None
    # As the instrumentation named it ("celery.run tasks.add", "run/tasks.add"): the doctor
    # reads a task's name from it when no attribute records one.
    name: str
    # UNSPECIFIED, INTERNAL, SERVER, CLIENT, PRODUCER or CONSUMER, without the SPAN_KIND_
    # prefix: the doctor tells publish from run by it.
    kind: str
    # resource["service.name"], kept apart because every reader shows or filters by it.
    service: str | None
    # Unix nanoseconds, as ints: Python's ints hold them exactly, floats would not. Time
    # windows (load(since=, until=)) keep a span by its start.
    start_ns: int
    # Unix nanoseconds: how old the newest span is tells whether a trace may still be arriving.
    end_ns: int
    # UNSET, OK or ERROR: a failed publish sent no message, so it is never "never consumed".
    status: str
    # Span attributes: ints as ints, floats as floats, bytes as hex strings, arrays as lists,
    # maps as dicts, as an SDK set them, so that `attributes["celery.attempt"] == 1` holds.
    attributes: dict
    # The resource's attributes, service.name included: what a run's tag is read from
    # (harness/deployment.py's deployment.run) and what load(resource=...) filters on.
    resource: dict
    # The spans it links to, in its order: a root consumer span that links to its producer is
    # connected by design, not orphaned.
    links: list[Link]


# Where a span records its message's id (Celery's task id), the current name first, then the
# one older opentelemetry-instrumentation-celery releases wrote: the doctor joins a consumer
# to its producer by it, and the Tempo reader searches by it.
MESSAGE_ID_KEYS = ("messaging.message.id", "messaging.message_id")


def message_id(span):
    """SPAN's message id as a string, or None when it records none."""
    attributes = span["attributes"]
    found = next((attributes[key] for key in MESSAGE_ID_KEYS if attributes.get(key)), None)
    return None if found is None else str(found)


# The messaging conventions' operations, for spans whose kind does not say which side of a
# message they are on (an SDK that writes INTERNAL for everything, say).
OPERATION_SIDES = {
    "send": "PRODUCER", "publish": "PRODUCER", "create": "PRODUCER",
    "process": "CONSUMER", "deliver": "CONSUMER",
}


def message_side(span):
    """PRODUCER, CONSUMER or None: which side of a message SPAN is on, by its kind, else by
    its messaging operation. The doctor, the Tempo reader and its searches all judge so."""
    if span["kind"] in ("PRODUCER", "CONSUMER"):
        return span["kind"]
    attributes = span["attributes"]
    return OPERATION_SIDES.get(
        attributes.get("messaging.operation.type") or attributes.get("messaging.operation")
    )


# opentelemetry-instrumentation-celery says eager inside the repr of the request's
# delivery_info, which Celery's Task.apply fills.
AUTO_EAGER = "'is_eager': True"


def is_eager(attributes):
    """Whether a consumer span's ATTRIBUTES say its run was eager (apply(), task_always_eager):
    our celery.is_eager, or the auto-instrumentation's celery.delivery_info. The doctor judges
    such runs apart, and the Tempo reader searches for their callers."""
    # A boolean from an SDK; a string from a store that keeps every value as one (ClickHouse).
    return attributes.get("celery.is_eager") in (True, "true", "True") \
        or AUTO_EAGER in str(attributes.get("celery.delivery_info", ""))
