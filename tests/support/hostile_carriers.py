"""Hostile trace-header carriers, as hypothesis strategies, and how to judge one.

Every carrier is garbage as far as trace context goes: traceparents the SDK's own propagator
rejects (bad versions, lengths, characters, case, all-zero ids, extra fields), huge or
malformed tracestate and baggage, non-string values, the repo's own otel_* headers filled
with nonsense, and the same keys again in other cases. Whatever a carrier holds, the task
must run and its one consumer span must be a fresh root with no links.
"""

import json
import os
import tempfile
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import celery_signals
from tests.support.traces import RUN

# Even with database=None, hypothesis caches Unicode tables and constants in ./.hypothesis:
# keep them out of the repository.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "hypothesis-hostile-headers")

_sdk = TraceContextTextMapPropagator()
HEX = "0123456789abcdef"
HUGE = (9_000, 40_000)  # characters: past MAX_HEADER_LENGTH, "tens of KB"


def sdk_rejects(traceparent):
    """True when the SDK's own propagator finds no valid span context in TRACEPARENT."""
    extracted = _sdk.extract({"traceparent": traceparent})
    return not trace.get_current_span(extracted).get_span_context().is_valid


# --- traceparent: four fields, any of them spoiled -------------------------------------

def hex_text(size):
    return st.text(alphabet=HEX, min_size=size, max_size=size)


def spoiled_field(size):
    """A traceparent field of SIZE hex digits, good or spoiled in one of several ways."""
    non_hex = st.characters().filter(lambda c: c not in HEX)
    return st.one_of(
        hex_text(size),
        st.just("0" * size),
        hex_text(size).map(str.upper),
        st.one_of(
            st.text(alphabet=HEX, max_size=size - 1),
            st.text(alphabet=HEX, min_size=size + 1, max_size=2 * size + 2),
        ),
        st.tuples(hex_text(size), st.integers(0, size - 1), non_hex).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1:]
        ),
    )


versions = st.one_of(
    st.sampled_from(["00", "ff", "FF", "0", "000", "", "zz", "-1", "0x", "1f "]),
    spoiled_field(2),
)
separators = st.one_of(st.just("-"), st.sampled_from(["", "_", " ", "--", "\t", "\n", "—", ":"]))
extras = st.one_of(
    st.just(""),
    st.text(max_size=30).map(lambda s: "-" + s),
    st.sampled_from(["-", "-00", "-" + "a" * 32, "\n-", " x"]),
)
structured_traceparents = st.builds(
    lambda pad, version, s1, trace_id, s2, span_id, s3, flags, extra: (
        f"{pad}{version}{s1}{trace_id}{s2}{span_id}{s3}{flags}{extra}"
    ),
    st.sampled_from(["", " ", "\t", "\n", "\x00", "\ufeff"]),
    versions, separators, spoiled_field(32), separators, spoiled_field(16), separators,
    st.one_of(st.sampled_from(["01", "00", "ff", "1", "001", "0g", "", "AB"]), spoiled_field(2)),
    extras,
)


def huge(pieces):
    """PIECES repeated to a length in HUGE."""
    return st.tuples(pieces.filter(bool), st.integers(*HUGE)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
    )


valid_traceparents = st.builds(
    lambda t, s: f"00-{t}-{s}-01",
    hex_text(32).filter(lambda h: h != "0" * 32),
    hex_text(16).filter(lambda h: h != "0" * 16),
)
invalid_traceparents = st.one_of(
    structured_traceparents,
    st.text(max_size=80),
    st.text(alphabet=HEX + "-", max_size=70),
).filter(sdk_rejects)
huge_traceparents = st.one_of(
    # A valid traceparent with a version-00 tail, then tens of KB of it.
    huge(valid_traceparents.map(lambda v: v + "-")),
    huge(st.text(alphabet=HEX + "-", min_size=1, max_size=60)),
).filter(sdk_rejects)

# --- non-strings, as JSON carries them ---------------------------------------------------

huge_ints = st.integers(10**309, 10**4000) | st.integers(-(10**4000), -(10**309))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
)
# Containers may even hold a well-formed traceparent: the worker takes strings only, so a
# list or object is no context, whatever is inside.
non_strings = st.one_of(
    scalars,
    st.lists(st.one_of(scalars, valid_traceparents, st.text(max_size=20)), max_size=4),
    st.dictionaries(
        st.one_of(st.sampled_from(["traceparent", "tracestate", "baggage"]), st.text(max_size=8)),
        st.one_of(scalars, valid_traceparents, st.text(max_size=20)),
        max_size=4,
    ),
)
lone_surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)

# --- tracestate and baggage: malformed, oversized, or not strings ----------------------

list_members = st.tuples(
    st.text(max_size=12), st.sampled_from(["=", "==", "", " = ", "=%zz"]), st.text(max_size=12)
).map("".join)
member_lists = st.tuples(list_members, st.integers(1, 40), st.sampled_from([",", ", ", ",,", ";"]))
tracestates = st.one_of(
    st.text(max_size=100),
    member_lists.map(lambda t: t[2].join([t[0]] * t[1])),
    st.sampled_from(["=", ",", "KEY=value", "a=b=c", "a@@b=c", "a=" + "x" * 300, ",,,,"]),
    lone_surrogates.map(lambda s: f"k={s}"),
    non_strings,
)
baggages = st.one_of(
    st.text(max_size=100),
    member_lists.map(lambda t: t[2].join([t[0]] * t[1])),
    st.sampled_from(["=", "k", "k=v;", "%zz=%zz", "k=v;p=q;=", "k=" + "v" * 4097, "é=é"]),
    # Lone surrogates: JSON escapes them (\ud800) and the worker decodes them back.
    st.tuples(st.text(max_size=8), lone_surrogates).map(lambda t: f"k{t[0]}={t[1]}"),
    lone_surrogates,
    non_strings,
)

# --- the repo's own headers --------------------------------------------------------------

numberish = st.sampled_from(
    ["NaN", "nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "", "0", "1.7e9", "0x10", "now"]
)
published_ats = st.one_of(
    numberish, st.text(max_size=20), non_strings,
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, -0.0]),
)
new_traces = st.one_of(st.booleans(), numberish, st.text(max_size=20), non_strings)
previous_attempts = st.one_of(invalid_traceparents, non_strings)
traceparents = st.one_of(invalid_traceparents, non_strings)
# The request namespace of the worker: a header of this name shadows the slot where
# celery_signals keeps the running consumer span.
consumer_slots = non_strings

# Every header a carrier may hold besides traceparent, with what may fill it; the same
# keys again in other cases, since Celery's headers are case-sensitive and HTTP's are not.
OPTIONAL_HEADERS = {
    "tracestate": tracestates,
    "baggage": baggages,
    celery_signals.NEW_TRACE_HEADER: new_traces,
    celery_signals.PUBLISHED_AT_HEADER: published_ats,
    celery_signals.PREVIOUS_ATTEMPT_HEADER: previous_attempts,
    "otel_consumer": consumer_slots,
    "Traceparent": traceparents, "TRACEPARENT": traceparents, "TraceParent": traceparents,
    "Tracestate": tracestates, "TRACESTATE": tracestates,
    "Baggage": baggages, "BAGGAGE": baggages,
    "OTEL_NEW_TRACE": new_traces, "Otel_Published_At": published_ats,
    "OTEL_PREVIOUS_ATTEMPT": previous_attempts,
}
huge_members = huge(list_members.map(lambda m: m + ","))


def repeated(low, high):
    """One list member LOW to HIGH times, comma-separated."""
    return st.tuples(list_members, st.integers(low, high)).map(lambda t: ",".join([t[0]] * t[1]))


HUGE_VALUES = [
    ("traceparent", huge_traceparents), ("Traceparent", huge_traceparents),
    (celery_signals.PREVIOUS_ATTEMPT_HEADER, huge_traceparents),
    ("tracestate", huge_members), ("baggage", huge_members), ("Baggage", huge_members),
    ("baggage", huge(st.text(min_size=1, max_size=20))),
    # Past the SDK's limit of 180 baggage members, and 32 tracestate members.
    ("baggage", repeated(181, 2000)), ("tracestate", repeated(33, 2000)),
    (celery_signals.NEW_TRACE_HEADER, huge(st.text(min_size=1, max_size=20))),
    (celery_signals.PUBLISHED_AT_HEADER, huge(st.sampled_from(["9", "NaN", "1e9"]))),
]


@st.composite
def carriers(draw):
    """A hostile carrier; about one in eight has a header of tens of KB."""
    headers = {"traceparent": draw(traceparents)}
    # A few other headers, not all sixteen: fewer draws make many more cases per second.
    for key in draw(st.lists(st.sampled_from(list(OPTIONAL_HEADERS)), max_size=5, unique=True)):
        headers[key] = draw(OPTIONAL_HEADERS[key])
    if draw(st.integers(0, 7)) == 0:
        key, values = draw(st.sampled_from(HUGE_VALUES))
        headers[key] = draw(values)
    return headers


TRACEPARENT_KEYS = {
    key for key in ("traceparent", *OPTIONAL_HEADERS)
    if key.lower() in ("traceparent", celery_signals.PREVIOUS_ATTEMPT_HEADER)
}


# Carriers that once broke a receiver: always published first, whatever hypothesis draws.
REGRESSIONS = [
    # _start_consumer_span computes time.time() - published_at: OverflowError past float range.
    {"traceparent": "not a traceparent", celery_signals.PUBLISHED_AT_HEADER: 10**400},
    # The SDK's baggage propagator calls header.encode(): UnicodeEncodeError on a lone surrogate.
    {"traceparent": "not a traceparent", "baggage": "k=\ud800"},
    # A header of the request slot's name, when task_prerun failed to overwrite it.
    {"traceparent": "", celery_signals.PUBLISHED_AT_HEADER: 10**400, "otel_consumer": "xy"},
]


def judge(found, headers_json):
    """What is wrong with the consumer spans FOUND for one carrier (its headers in JSON):
    (problems, continued a foreign context?)."""
    if [span["name"] for span in found] != [RUN]:
        return [f"consumer spans {[span['name'] for span in found]}"], False
    span = found[0]
    foreign = []
    if span["parent_id"] is not None:
        foreign.append(f"parent {span['parent_id']}")
    if span["trace_id"] in headers_json.lower():
        foreign.append(f"trace {span['trace_id']}, found in its headers")
    if span["links"]:
        foreign.append(f"links {span['links']}")
    problems = list(foreign)
    if span["status"] != "ERROR":
        problems.append(f"status {span['status']}, not the task's LookupError")
    carried = span["attributes"].get("celery.trace_context")
    if carried != expected_trace_context(json.loads(headers_json)):
        problems.append(f"celery.trace_context {carried!r}")
    return problems, bool(foreign)


def expected_trace_context(headers):
    """What the consumer span must say the carrier held: every traceparent here is refused,
    so "malformed", unless the carrier has none (JSON null is none); a tracestate alone
    qualifies nothing, so it does not count."""
    return "absent" if headers.get("traceparent") is None else "malformed"
