"""Hostile trace headers through the real worker path, fuzzed with hypothesis.

Every generated carrier is garbage as far as trace context goes: traceparents the SDK's own
propagator rejects (bad versions, lengths, characters, case, all-zero ids, extra fields),
huge or malformed tracestate and baggage, non-string values, the repo's own otel_* headers
filled with nonsense, and the same keys again in other cases. Each carrier goes to a real
worker (Redis, threads pool) with a task whose order does not exist: the task runs, fails
with LookupError, and its consumer span must be a fresh root with no links, in a trace of
its own, while the worker logs no error from our signal handlers.

The test prints how many cases went through ("hostile headers: N cases ..."), even without
-s, and gives the README's Reliability table its row (default size only). HOSTILE_CASES=50000
runs a longer fuzz; HOSTILE_REPORT=path.json writes the figures, timings included, to a file
(they are in junit XML too, as the property hostile_headers).
"""

import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from celery import signals
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from traces import RUN

import celery_signals

# About 200 carriers a second go through on 2 cores (100-130 while other work shares them):
# the worker spends ~4 ms of CPU on each failing task, this process ~3 ms drawing and
# publishing one: the default 10,000 take about 45 s, HOSTILE_CASES=50000 about 7 minutes.
DEFAULT_CASES = 10_000
CASES = int(os.environ.get("HOSTILE_CASES") or DEFAULT_CASES)
# No order has an id this large: every task fails with LookupError, after its span started.
FIRST_ORDER = 10**9 + 10**6
WORKER_THREADS = 8

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


@contextmanager
def headers_published_as_given():
    """Publish without this process's own before_task_publish receiver.

    conftest imports tasks.py, which installs celery_signals here too: its receiver would
    overwrite otel_published_at with the time of publishing (its inject is a no-op, since
    this process has no TracerProvider). Disconnected, the headers reach the broker exactly
    as generated.
    """
    pairs = [
        (signals.before_task_publish, celery_signals._start_publish_span),
        (signals.after_task_publish, celery_signals._end_publish_span),
    ]
    removed = [(signal, receiver) for signal, receiver in pairs if signal.disconnect(receiver)]
    try:
        yield
    finally:
        for signal, receiver in removed:
            signal.connect(receiver, weak=False)


# A record of Celery's log: "[2025-01-01 10:00:00,000: ERROR/MainProcess] ..."
LOG_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: ", re.MULTILINE)


def log_problems(log):
    """Log records that show our handlers (or the worker) failing, not the tasks' LookupError."""
    problems = []
    for record in LOG_RECORD.split(log):
        if "Failed to detach context" in record or "Signal handler" in record:
            problems.append(record)
        elif "Traceback" in record or "celery_signals" in record:
            expected = (
                "Task tasks.process_order[" in record
                and "raised unexpected: LookupError" in record
                and "celery_signals" not in record
            )
            if not expected:
                problems.append(record)
    return problems


HANDLER_ERROR = re.compile(r"Signal handler <function (\w+) at 0x[0-9a-f]+> raised: (\w+)")


def handler_errors(log):
    """How many times each of our receivers raised, by exception type."""
    counts = {}
    for match in HANDLER_ERROR.finditer(log):
        key = f"{match[1]}: {match[2]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def shorten(text, limit=300):
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# Carriers that once broke a receiver: always published first, whatever hypothesis draws.
REGRESSIONS = [
    # _start_consumer_span computes time.time() - published_at: OverflowError past float range.
    {"traceparent": "not a traceparent", celery_signals.PUBLISHED_AT_HEADER: 10**400},
    # The SDK's baggage propagator calls header.encode(): UnicodeEncodeError on a lone surrogate.
    {"traceparent": "not a traceparent", "baggage": "k=\ud800"},
    # A header of the request slot's name, when task_prerun failed to overwrite it.
    {"traceparent": "", celery_signals.PUBLISHED_AT_HEADER: 10**400, "otel_consumer": "xy"},
]
TASK_FAILED = re.compile(
    r"Task tasks\.process_order\[([0-9a-f-]+)\] raised unexpected: LookupError"
)


README_ROW = "hostile trace headers through a real worker"


def test_hostile_headers_start_a_fresh_trace_and_break_nothing(
    deploy, figures, capsys, record_property, tmp_path
):
    deployment = deploy(
        "fixed", "redis", web=False, pool="threads",
        # Later options win: this overrides the fixture's --concurrency 1.
        worker_args=["--concurrency", str(WORKER_THREADS)],
        # Thousands of spans in a burst: the SDK's default queue (2048) could drop some.
        env={"OTEL_BSP_MAX_QUEUE_SIZE": str(4 * CASES + 2048)},
    )
    log_offset = len(deployment.worker_log())
    published = []  # (task id, the headers as sent, in JSON)

    @settings(
        max_examples=CASES, deadline=None, database=None, derandomize=False,
        suppress_health_check=[
            HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
    @given(carriers())
    def publish(headers):
        for key in TRACEPARENT_KEYS & headers.keys():
            if isinstance(headers[key], str):
                assert sdk_rejects(headers[key]), f"{key}={headers[key]!r} is a valid traceparent"
        order = FIRST_ORDER + len(published)
        result = deployment.send_task("tasks.process_order", [order], headers=headers)
        published.append((result.id, json.dumps(headers)))

    for regression in REGRESSIONS:
        publish = example(regression)(publish)

    since = time.time_ns()
    started = time.monotonic()
    with headers_published_as_given():
        publish()
    publishing = time.monotonic() - started
    ids = {task_id for task_id, _ in published}

    def consumer_spans(spans):
        # Every CONSUMER span of these tasks, whatever its name: celery.run, but also the
        # celery.failed or celery.revoked records that must not appear.
        return [
            span for span in spans
            if span["kind"] == "CONSUMER"
            and span["attributes"].get("messaging.message.id") in ids
        ]

    def tasks_ran(log):
        return ids & set(TASK_FAILED.findall(log))

    # The worker's log first, read twice a second: loading every span ten times a second
    # would take CPU from the worker while it still has a backlog.
    give_up = time.monotonic() + 30 + len(ids) / 50
    while len(tasks_ran(deployment.worker_log()[log_offset:])) < len(ids):
        deployment.check_alive()
        if time.monotonic() > give_up:
            break
        time.sleep(0.5)
    # Then the spans, which leave the worker every 100 ms (OTEL_BSP_SCHEDULE_DELAY).
    try:
        spans = deployment.wait_for_spans(
            lambda spans: len({
                span["attributes"]["messaging.message.id"] for span in consumer_spans(spans)
            }) >= len(ids),
            since, deadline=15,
        )
    except TimeoutError:
        spans = deployment.spans(since)
    elapsed = time.monotonic() - started
    log = deployment.worker_log()[log_offset:]
    ran = tasks_ran(log)

    by_id = {}
    for span in consumer_spans(spans):
        by_id.setdefault(span["attributes"]["messaging.message.id"], []).append(span)
    failures, failed_carriers = [], []
    continued = 0
    for task_id, headers in published:
        found = by_id.get(task_id, [])
        if [span["name"] for span in found] != [RUN]:
            failed_carriers.append(headers)
            received = f"[{task_id}] received" in log
            failures.append(
                f"task {task_id}: consumer spans {[span['name'] for span in found]} "
                f"(received: {received}, ran: {task_id in ran}); headers {shorten(headers)}"
            )
            continue
        span = found[0]
        foreign = []
        if span["parent_id"] is not None:
            foreign.append(f"parent {span['parent_id']}")
        if span["trace_id"] in headers.lower():
            foreign.append(f"trace {span['trace_id']}, found in its headers")
        if span["links"]:
            foreign.append(f"links {span['links']}")
        continued += bool(foreign)
        problems = foreign
        if span["status"] != "ERROR":
            problems = [*foreign, f"status {span['status']}, not the task's LookupError"]
        if problems:
            failed_carriers.append(headers)
            failures.append(f"task {task_id}: {', '.join(problems)}; headers {shorten(headers)}")

    measured = {
        "cases": len(published),
        "tasks_ran": len(ran),
        "consumer_spans": sum(len(found) for found in by_id.values()),
        "continued_foreign_context": continued,
        "failed_cases": len(failures),
        "receiver_errors": handler_errors(log),
        "publish_seconds": round(publishing, 1),
        "total_seconds": round(elapsed, 1),
        "cases_per_second": round(len(published) / elapsed, 1),
        "worker": f"redis, threads pool, concurrency {WORKER_THREADS}",
    }
    record_property("hostile_headers", measured)
    if os.environ.get("HOSTILE_REPORT"):
        with open(os.environ["HOSTILE_REPORT"], "w") as report:
            json.dump(measured, report, indent=2)
    with capsys.disabled():
        print(
            f"\nhostile headers: {len(published)} cases through a real worker, "
            f"{continued} continued a foreign context, {len(failures)} failed "
            f"({elapsed:.1f} s, {measured['cases_per_second']} cases/s)"
        )

    assert len(published) >= CASES
    problems = log_problems(log)
    if failures:
        # Whole, for replaying: the message shortens them.
        replay = tmp_path / "failed-carriers.json"
        replay.write_text("[\n" + ",\n".join(failed_carriers) + "\n]\n")
        raise AssertionError(
            f"{len(failures)} of {len(published)} cases failed (every failed carrier, whole, "
            f"is in {replay}):\n" + "\n".join(failures[:20])
            + f"\n\nour receivers raised: {measured['receiver_errors']}"
            + "\nfirst worker log problems:\n"
            + "\n".join(shorten(problem, 2000) for problem in problems[:3])
        )
    # The worker built a request from every message and ran the task: nothing was rejected.
    assert ran == ids, f"{len(ids - ran)} tasks never reached their LookupError"
    assert not problems, f"{len(problems)} worker log problems:\n" + "\n".join(
        shorten(problem, 2000) for problem in problems[:10]
    )
    # The README reports the default run only: no timings, so that the table is stable.
    if CASES == DEFAULT_CASES:
        figures[README_ROW] = (
            f"{len(published):,} hypothesis-generated carriers: every task ran, "
            f"{continued} continued a foreign context, 0 receiver errors"
        )
