"""One corpus, every source, one diagnosis: the doctor's rules must not depend on where the
spans are read. Each source below is loaded with tests/support/doctor_corpus.py, and `doctor.py
--json` on it must print the corpus's expected diagnosis, "detail" aside.
Then the scheduled check on the same corpus: its window, settling margin, ratio and exit codes.

A new source joins SOURCES: a function that loads the corpus DOCUMENT into it (FOLDER is its
own temporary folder, STACK an ExitStack for servers to stop) and returns the doctor's
arguments that read it back."""

import base64
import json
import random
import time
import urllib.request
from contextlib import ExitStack

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import doctor
from harness.fake_backends import Backend, FakeTempo
from tests.support import doctor_corpus
from tests.support.clickhouse_endpoint import Served, write_corpus
from tracetools import otlp_json
from tracetools.sink import TraceSink

# Ten minutes ago, on a whole second: inside every backend's default lookback.
START_NS = (int(time.time()) - 600) * 10**9
WORKER_ARGS = [arg for service in doctor_corpus.WORKER_SERVICES
               for arg in ("--worker-service", service)]


def _raw(value, size):
    """An id's bytes, whichever way the corpus wrote it (hex or base64)."""
    return bytes.fromhex(value) if len(value) == 2 * size else base64.b64decode(value)


def _spans(document):
    for batch in document["resourceSpans"]:
        for scope in batch["scopeSpans"]:
            yield batch, scope["spans"]


def export_request(document):
    """DOCUMENT as the protobuf an SDK's OTLP exporter posts: protobuf's own JSON mapping
    wants base64 ids, so each is turned into bytes first."""
    copy = json.loads(json.dumps(document))
    for _, spans in _spans(copy):
        for span in spans:
            for field, size in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
                if field in span:
                    span[field] = base64.b64encode(_raw(span[field], size)).decode()
            for link in span.get("links", ()):
                link["traceId"] = base64.b64encode(_raw(link["traceId"], 16)).decode()
                link["spanId"] = base64.b64encode(_raw(link["spanId"], 8)).decode()
    return json_format.ParseDict(copy, ExportTraceServiceRequest())


# -- the sources -----------------------------------------------------------------------------

def sink_source(document, folder, stack):
    """The trace sink, sent the corpus as an SDK sends it: OTLP protobuf over HTTP."""
    db = folder / "spans.db"
    with TraceSink(str(db)) as sink:
        urllib.request.urlopen(urllib.request.Request(
            f"{sink.endpoint}/v1/traces", data=export_request(document).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"}), timeout=30).close()
    return [db]


def otlp_json_lines(document, folder, stack):
    """A batch a line, shuffled: the file exporter promises no order."""
    batches = [{"resourceSpans": [batch]} for batch in document["resourceSpans"]]
    random.Random(18).shuffle(batches)
    path = folder / "traces.jsonl"
    path.write_text("".join(json.dumps(batch) + "\n" for batch in batches))
    return [path]


def otlp_json_document(document, folder, stack):
    path = folder / "traces.json"
    path.write_text(json.dumps(document, indent=1))
    return [path]


def jaeger(document, folder, stack):
    """Jaeger 2's /api/v3/traces, asked once per service: each answer holds every trace, as
    when each trace has a span of every service; the doctor counts each span once."""
    services = sorted({attribute["value"]["stringValue"]
                       for batch in document["resourceSpans"]
                       for attribute in batch["resource"]["attributes"]
                       if attribute["key"] == "service.name"})
    backend = stack.enter_context(Backend(lambda path, query: (
        (200, {"result": document}) if path == "/api/v3/traces"
        else (404, {"error": "not found"}))))
    return [f"{backend.url}/api/v3/traces",
            *(arg for service in services for arg in ("--service", service))]


def tempo(document, folder, stack):
    """Tempo, searched with TraceQL as the doctor searches it (harness.fake_backends.FakeTempo
    evaluates exactly those queries), and only the traces found fetched."""
    tempo = stack.enter_context(FakeTempo(otlp_json.spans(document)))
    return [f"{tempo.url}/api/search"]


def clickhouse(schema, *options):
    """ClickHouse's HTTP interface on chDB (tests/support/clickhouse_endpoint.py), the corpus in the
    exporter's table of SCHEMA (map or json): the join runs there, as SQL."""
    def load(document, folder, stack):
        spans = write_corpus(folder / "traces.jsonl", "none", document)
        endpoint = Served("--schema", schema, *options, "--load", str(spans))
        stack.callback(endpoint.stop)
        return [endpoint.url]
    return load


def chdb_file(compression):
    """An OTLP JSON lines file read with chDB: the same SQL as ClickHouse's."""
    def load(document, folder, stack):
        name = {"none": "traces.jsonl", "gzip": "traces.jsonl.gz", "zstd": "traces.zst"}
        return [write_corpus(folder / name[compression], compression, document),
                "--engine", "chdb"]
    return load


SOURCES = {
    "sink": sink_source,
    "otlp-json-lines": otlp_json_lines,
    "otlp-json-document": otlp_json_document,
    "jaeger": jaeger,
    "tempo": tempo,
    # Both exporter schemas, both SpanKind spellings ('Consumer', 'SPAN_KIND_CONSUMER').
    "clickhouse-map": clickhouse("map"),
    "clickhouse-map-old-kinds": clickhouse("map", "--old-kinds"),
    "clickhouse-json": clickhouse("json"),
    "clickhouse-json-old-kinds": clickhouse("json", "--old-kinds"),
    "chdb-file": chdb_file("none"),
    "chdb-file-gzip": chdb_file("gzip"),
    "chdb-file-zstd": chdb_file("zstd"),
}


# Tempo is asked only for the traces its verdicts need, in HTTP calls that grow with the
# orphans, not with the traffic (tracetools/sources.py): its totals count the traces it
# fetched, not the whole corpus. Everything else must be the same.
TOTALS_OF_FETCHED_TRACES = {"tempo": ("spans", "traces", "consumer_spans", "connected")}


def run_doctor(capsys, *argv):
    status = doctor.main([*map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("source", SOURCES)
def test_every_source_gives_the_corpus_its_expected_diagnosis(source, tmp_path, capsys):
    with ExitStack() as stack:
        args = SOURCES[source](doctor_corpus.document(START_NS), tmp_path, stack)
        status, out, err = run_doctor(capsys, *args, "--json", *WORKER_ARGS)
    assert status == 1, err
    diagnosis = doctor_corpus.without_detail(json.loads(out))
    expected = doctor_corpus.expected(START_NS)
    for total in TOTALS_OF_FETCHED_TRACES.get(source, ()):
        del diagnosis[total], expected[total]
    assert diagnosis == expected


def test_the_corpus_covers_every_cause_and_verdict():
    diagnosis = doctor_corpus.expected()
    assert all(diagnosis["causes"].values()), diagnosis["causes"]
    assert {r["verdict"] for r in diagnosis["eager_roots"]} == {"by-design", "not-continued"}
    candidates = {tuple(o["candidates"]) for o in diagnosis["orphans"]
                  if o["cause"] == "undetermined"}
    assert candidates == {("not-extracted", "not-injected"),
                          ("not-injected", "republished-without-context")}


# -- the scheduled check ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "traces.jsonl"
    path.write_text(json.dumps(doctor_corpus.document()) + "\n")
    return path


def rfc3339(ns):
    return doctor._rfc3339(ns / 1e9)


def names_between(first, stop):
    """The scenarios from FIRST up to, not including, STOP (None: to the end)."""
    names = [scenario.name for scenario in doctor_corpus.SCENARIOS]
    return names[names.index(first):None if stop is None else names.index(stop)]


def test_the_window_keeps_spans_that_started_in_it_half_open(corpus_file, capsys):
    # Both edges fall on a span's start: the first is in, the last is out.
    since = doctor_corpus.slot_start_ns("not-injected")
    until = doctor_corpus.slot_start_ns("parent-missing")
    status, out, _ = run_doctor(capsys, corpus_file, "--json", *WORKER_ARGS,
                                "--since", rfc3339(since), "--until", rfc3339(until))
    assert status == 1
    assert doctor_corpus.without_detail(json.loads(out)) == doctor_corpus.expected(
        scenarios=names_between("not-injected", "parent-missing"))


def test_without_until_the_window_ends_a_settling_margin_before_now(corpus_file, capsys,
                                                                    monkeypatch):
    # Now is 90 s after the slot of the eager run whose parent never arrived begins: with
    # 90 s to settle, the window ends where that slot begins, and only the run under its
    # caller is in.
    first, cut = "eager-under-caller", "eager-parent-missing"
    now = doctor_corpus.slot_start_ns(cut) / 1e9 + 90
    monkeypatch.setattr(doctor.time, "time", lambda: now)
    since = rfc3339(doctor_corpus.slot_start_ns(first))
    status, out, _ = run_doctor(capsys, corpus_file, "--json", *WORKER_ARGS, "--since", since,
                                "--settle", "90s")
    assert status == 0
    assert doctor_corpus.without_detail(json.loads(out)) == doctor_corpus.expected(
        scenarios=[first])
    # The default margin, a minute, lets every later scenario in.
    status, out, _ = run_doctor(capsys, corpus_file, "--json", *WORKER_ARGS, "--since", since)
    assert status == 1
    later = names_between(first, None)
    assert doctor_corpus.without_detail(json.loads(out)) == doctor_corpus.expected(
        scenarios=later)


def test_the_summary_line_and_the_exit_status_follow_the_ratio(corpus_file, capsys):
    everything = ["--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z"]
    window = "spans from 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z"
    # 18 orphans, 1 eager run not continued and 6 unconsumed messages, of 27 consumer spans.
    for ratio, status, verdict in (("0.93", 0, "OK"), ("0.92", 1, "FAIL")):
        got, out, _ = run_doctor(capsys, corpus_file, *WORKER_ARGS, *everything,
                                 "--max-orphan-ratio", ratio)
        assert got == status
        assert out.splitlines()[0] == (
            "doctor: 18 of 27 Celery consumer spans orphaned, 1 eager run not continued, "
            f"6 messages never consumed: 92.6% failed, max {float(ratio) * 100:g}%: "
            f"{verdict}; {window}")
    # A window with one connected order: OK at the default ratio, 0.
    since, until = (doctor_corpus.slot_start_ns(name) for name in ("connected", "not-extracted"))
    status, out, err = run_doctor(capsys, corpus_file, "--json", "--since", rfc3339(since),
                                  "--until", rfc3339(until))
    assert status == 0
    assert err == ("doctor: 0 of 1 Celery consumer spans orphaned: 0% failed, max 0%: OK; "
                   f"spans from {rfc3339(since)} to {rfc3339(until)}\n")
    assert json.loads(out)["connected"] == 1  # --json keeps stdout for the object


@pytest.mark.parametrize("options, reason", [
    (["--since", "15 minutes"], "bad --since '15 minutes'"),
    (["--since", "2027-01-01T00:00:00"], "with its offset"),
    (["--since", "1h", "--until", "2h"], "is not before --until"),
    (["--settle=-5s"], "bad --settle"),
    (["--max-orphan-ratio", "-0.1"], "bad --max-orphan-ratio '-0.1'"),
    (["--max-orphan-ratio", "a lot"], "bad --max-orphan-ratio"),
    (["--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02T00:00:00Z"],
     "nothing to diagnose"),
])
def test_bad_options_and_an_empty_window_exit_2_in_one_line(corpus_file, capsys, options,
                                                            reason):
    status, out, err = run_doctor(capsys, corpus_file, *options)
    assert (status, out) == (2, "")
    assert reason in err and err.count("\n") == 1
