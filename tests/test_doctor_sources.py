"""Where the doctor reads spans: the sink's SQLite file, OTLP JSON in every shape the
backends serve, Jaeger 2 and Tempo over HTTP, and input it must refuse or read around."""

import json
import random
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from fractions import Fraction

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

import doctor
from harness.fake_backends import Backend, FakeTempo
from harness.polling import poll_until, port_answers
from harness.processes import ROOT, free_port
from tracetools import otlp_json, sources
from tracetools.doctor import diagnose
from tracetools.sink import TraceSink
from tracetools.sources import load

MESSAGE = {"messaging.system": "celery", "messaging.message.id": "m1",
           "celery.task.name": "tasks.add"}


class ShortTraceIds(RandomIdGenerator):
    """Trace ids with leading zeros, which Tempo's search drops."""

    def generate_trace_id(self):
        return random.getrandbits(96)


def tracer(service, exporter, ids=None):
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer(__name__)


@pytest.fixture(scope="module")
def export():
    """An export request of real SDK spans: a web request publishes message m1 (in one
    trace), a worker runs it as a root of its own (another trace), though the message carried
    a usable context: not-extracted."""
    exporter = InMemorySpanExporter()
    web, worker = tracer("web", exporter), tracer("worker", exporter, ShortTraceIds())
    with web.start_as_current_span("POST /orders", kind=SpanKind.SERVER):
        with web.start_as_current_span("celery.apply tasks.add", kind=SpanKind.PRODUCER,
                                       attributes=MESSAGE):
            pass
    with worker.start_as_current_span(
        "celery.run tasks.add", kind=SpanKind.CONSUMER,
        attributes={**MESSAGE, "celery.attempt": 1, "celery.queue_time_ms": 1.5,
                    "celery.trace_context": "valid",
                    "flags": [True, False]},
    ) as run:
        run.set_status(Status(StatusCode.ERROR, "failed on purpose"))
    request = encode_spans(exporter.get_finished_spans())
    # Value types the SDK's API does not offer, but other SDKs send.
    request.resource_spans[0].scope_spans[0].spans[0].attributes.extend([
        KeyValue(key="raw", value=AnyValue(bytes_value=b"\x01\xff")),
        KeyValue(key="map", value=AnyValue(kvlist_value=KeyValueList(
            values=[KeyValue(key="k", value=AnyValue(string_value="v"))]))),
    ])
    return request


@pytest.fixture(scope="module")
def sink_files(export, tmp_path_factory):
    """The sink's SQLite file and OTLP JSON lines after it received EXPORT."""
    folder = tmp_path_factory.mktemp("sink")
    db, lines = str(folder / "spans.db"), str(folder / "spans.jsonl")
    with TraceSink(db, otlp_json_path=lines) as sink:
        sink.store(export.SerializeToString())
    return db, lines


def by_id(spans):
    return sorted(spans, key=lambda span: span["span_id"])


def protobuf_json(export, **options):
    """protobuf's own JSON mapping: base64 ids, as Tempo serves them."""
    return json_format.MessageToDict(export, **options)


def run_doctor(capsys, *argv):
    status = doctor.main([*map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_sinks_otlp_json_follows_the_spec_and_reads_back_as_sqlite_does(sink_files):
    db, lines = sink_files
    (line,) = open(lines).read().splitlines()
    span = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16  # hex, not base64
    assert isinstance(span["kind"], int) and isinstance(span["startTimeUnixNano"], str)
    expected = by_id(load(db))
    assert by_id(load(lines)) == expected
    consumer = next(s for s in expected if s["kind"] == "CONSUMER")
    assert consumer["status"] == "ERROR" and consumer["attributes"]["flags"] == [True, False]


def test_the_sink_keeps_values_as_the_sdk_set_them(sink_files):
    spans = list(load(sink_files[0]))
    attributes = {key: value for span in spans for key, value in span["attributes"].items()}
    assert attributes["celery.attempt"] == 1 and attributes["celery.queue_time_ms"] == 1.5
    assert attributes["raw"] == "01ff" and attributes["map"] == {"k": "v"}


def test_the_sink_refuses_a_span_with_unreadable_ids_and_keeps_the_others(export, tmp_path):
    broken = type(export)()
    broken.CopyFrom(export)
    broken.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x01"
    with TraceSink(str(tmp_path / "spans.db")) as sink:
        reply = urllib.request.urlopen(urllib.request.Request(
            f"{sink.endpoint}/v1/traces", data=broken.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"}), timeout=10)
        answer = ExportTraceServiceResponse.FromString(reply.read())
    assert reply.status == 200  # OTLP's partial success: the exporter logs it, never retries
    assert answer.partial_success.rejected_spans == 1
    assert "span id" in answer.partial_success.error_message
    assert len(list(load(sink.db_path))) == 2


def test_each_span_comes_once_however_often_it_was_stored_and_wherever(export, sink_files,
                                                                       tmp_path):
    db = str(tmp_path / "twice.db")
    with TraceSink(db) as sink:
        for _ in range(2):  # an exporter that retried after a timeout
            sink.store(export.SerializeToString())
    spans = list(load([db, sink_files[1], sink_files[0]]))
    assert len(spans) == 3 and by_id(spans) == by_id(load(sink_files[0]))


@pytest.mark.parametrize("source", ["sqlite", "otlp-json"])
def test_a_window_keeps_exactly_the_spans_that_started_in_it(sink_files, source):
    path = sink_files[0 if source == "sqlite" else 1]
    spans = sorted(load(path), key=lambda span: span["start_ns"])
    second = spans[1]["start_ns"]
    # [since, until) in seconds, exact to the nanosecond: the first span starts before, the
    # third at or after the end.
    window = {"since": Fraction(second, 10**9), "until": Fraction(spans[2]["start_ns"], 10**9)}
    assert [s["span_id"] for s in load(path, **window)] == [spans[1]["span_id"]]
    assert by_id(load(path, since=Fraction(second, 10**9))) == by_id(spans[1:])
    assert by_id(load(path, until=Fraction(second, 10**9))) == by_id(spans[:1])


@pytest.mark.parametrize("source", ["sqlite", "otlp-json"])
def test_a_resource_filter_keeps_the_spans_of_that_resource(sink_files, source):
    path = sink_files[0 if source == "sqlite" else 1]
    worker = list(load(path, resource={"service.name": "worker"}))
    assert [span["name"] for span in worker] == ["celery.run tasks.add"]
    assert list(load(path, resource={"service.name": "worker", "other": "x"})) == []


def test_the_sink_command_writes_otlp_json_lines_with_its_flag(export, tmp_path):
    port = free_port()
    db, lines = tmp_path / "spans.db", tmp_path / "spans.jsonl"
    sink = subprocess.Popen(
        [sys.executable, "-m", "tracetools.sink", "--db", str(db), "--port", str(port),
         "--otlp-json", str(lines)], cwd=ROOT, stdout=subprocess.DEVNULL,
    )
    try:
        poll_until(lambda: port_answers(port, timeout=0.2), 20, "the sink listens",
                   check=lambda: sink.poll() is None or pytest.fail("the sink exited"))
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/traces", data=export.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        ), timeout=10).close()
    finally:
        sink.terminate()
        sink.wait(10)
    assert len(by_id(load(lines))) == 3
    assert by_id(load(lines)) == by_id(load(db))


@pytest.mark.parametrize("shape", [
    "jaeger-v3", "tempo-v1", "tempo-v2", "old-jaeger-strings", "pretty-printed",
])
def test_every_backends_shape_gives_the_same_spans(export, sink_files, tmp_path, shape):
    hex_ids = json.loads(open(sink_files[1]).readline())
    base64_ids = protobuf_json(export, use_integers_for_enums=True)
    document = {
        "jaeger-v3": {"result": hex_ids},
        "tempo-v1": {"batches": base64_ids["resourceSpans"]},
        "tempo-v2": {"trace": base64_ids, "status": "COMPLETE"},
        "old-jaeger-strings": protobuf_json(export),  # "SPAN_KIND_PRODUCER", base64 ids
        "pretty-printed": hex_ids,
    }[shape]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(document, indent=2 if shape == "pretty-printed" else None))
    assert by_id(load(path)) == by_id(load(sink_files[0]))


def test_the_command_diagnoses_a_collector_file(sink_files, capsys):
    status, out, _ = run_doctor(capsys, sink_files[1], "--json")
    assert status == 1
    diagnosis = json.loads(out)
    assert [o["cause"] for o in diagnosis["orphans"]] == ["not-extracted"]
    assert set(diagnosis) == {"spans", "traces", "consumer_spans", "connected", "orphans",
                              "eager_roots", "never_consumed", "causes"}


def write(tmp_path, content):
    path = tmp_path / "input"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("content, reason", [
    ("", "is empty"),
    ("\n  \n", "is empty"),
    (random.Random(0).randbytes(4096), "is not OTLP JSON"),
    ('{"data": [{"traceID": "abc"}]}', "is not OTLP JSON: no resourceSpans"),
    ("[1, 2]", "is not OTLP JSON"),
    ('{"resourceSpans": {"not": "a list"}}', "is not OTLP JSON"),
])
def test_input_that_is_not_otlp_exits_2_with_one_line_saying_why(tmp_path, capsys, content,
                                                                  reason):
    status, out, err = run_doctor(capsys, write(tmp_path, content))
    assert (status, out) == (2, "")
    assert reason in err and err.count("\n") == 1


def test_missing_files_and_other_databases_exit_2(tmp_path, capsys):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    for source, reason in [(tmp_path / "nope.jsonl", "no such file"),
                           (other, "not a trace sink database")]:
        status, _, err = run_doctor(capsys, source)
        assert status == 2 and reason in err


def test_a_truncated_line_is_skipped_and_counted(sink_files, tmp_path, capsys):
    line = open(sink_files[1]).readline()
    path = write(tmp_path, line + line[: len(line) // 2])  # a writer stopped mid-line
    assert by_id(load(path, warn=lambda message: None)) == by_id(load(sink_files[0]))
    status, _, err = run_doctor(capsys, path)
    assert status == 1
    assert "skipped 1 unreadable line" in err


def test_ids_of_the_wrong_length_skip_their_span_and_all_of_them_exit_2(sink_files, tmp_path,
                                                                         capsys):
    document = json.loads(open(sink_files[1]).readline())
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0]["spanId"] = spans[0]["spanId"][:-2]
    status, _, err = run_doctor(capsys, write(tmp_path, json.dumps(document)))
    assert "skipped 1 span with unreadable ids" in err
    for batch in document["resourceSpans"]:
        for span in batch["scopeSpans"][0]["spans"]:
            span["traceId"] = "abc"
    status, _, err = run_doctor(capsys, write(tmp_path, json.dumps(document)))
    assert status == 2 and "no readable span" in err


@pytest.fixture
def backend():
    servers = []

    def serve(routes):
        servers.append(Backend(
            lambda path, query: routes.get(path, (404, {"error": "not found"}))))
        return servers[-1]

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_jaeger_2_is_asked_for_each_service_in_a_time_window(sink_files, backend, capsys):
    # Jaeger 2 answers as the spec says: hex ids, integer kinds.
    hex_ids = json.loads(open(sink_files[1]).readline())
    jaeger = backend({"/api/v3/traces": (200, {"result": hex_ids})})
    status, out, _ = run_doctor(capsys, f"{jaeger.url}/api/v3/traces", "--service", "web",
                                "--service", "worker", "--lookback", "2h", "--json")
    assert status == 1
    diagnosis = json.loads(out)
    # Both queries found both traces: each span counts once.
    assert diagnosis["spans"] == 3 and diagnosis["causes"]["not-extracted"] == 1
    assert [query["query.service_name"] for _, query in jaeger.asked] == ["web", "worker"]
    window = [jaeger.asked[0][1][f"query.start_time_{end}"] for end in ("min", "max")]
    start, end = (time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) for t in window)
    assert end - start == pytest.approx(7200, abs=2) and window[0].endswith("Z")
    assert jaeger.asked[0][1]["query.num_traces"] == "1000"


def test_tempo_is_searched_for_orphans_and_only_their_traces_fetched(export, capsys):
    spans = list(records_of(export))
    with FakeTempo(spans) as tempo:
        status, out, _ = run_doctor(capsys, f"{tempo.url}/api/search", "--json")
    assert status == 1
    diagnosis = json.loads(out)
    assert [o["cause"] for o in diagnosis["orphans"]] == ["not-extracted"]
    assert diagnosis["spans"] == 3
    # A sample of the traffic; the worker's root consumer span; the producer span no consumer
    # span is under: one trace each, found by three searches, each fetched once.
    searches = [q for kind, q in tempo.calls if kind == "search"]
    assert searches == [sources.TEMPO_CONSUMERS, sources.TEMPO_UNPARENTED_CONSUMERS,
                        sources.TEMPO_CHILDLESS_PRODUCERS]
    fetched = [trace for kind, trace in tempo.calls if kind == "trace"]
    assert sorted(fetched) == sorted({span["trace_id"] for span in spans})


def records_of(export):
    """The span records of an export request, as the sink would store them."""
    return otlp_json.spans(otlp_json.encode(export))


def orders(count, orphans, unconsumed=0):
    """COUNT traces of one order each: a request, its publish, the run under it; ORPHANS of them
    with the run cut off into a trace of its own, UNCONSUMED with no run at all. Each run
    records that its message carried a usable context: an orphan is not-extracted."""
    spans = []
    received = {"celery.trace_context": "valid"}
    for number in range(count):
        trace, message = f"{number + 1:032x}", f"message-{number}"
        request, publish, run = (f"{number + 1:04x}{part:012x}" for part in (1, 2, 3))
        start = 1_700_000_000_000_000_000 + number * 1_000_000
        spans += [
            made_span(trace, request, None, "POST /orders", "SERVER", "web", start),
            made_span(trace, publish, request, "celery.apply tasks.add", "PRODUCER", "web",
                      start + 1, message),
        ]
        if number >= count - unconsumed:
            continue
        if number < orphans:
            spans.append(made_span(f"{number + 1:016x}{'f' * 16}", run, None,
                                   "celery.run tasks.add", "CONSUMER", "worker", start + 2,
                                   message, **received))
        else:
            spans.append(made_span(trace, run, publish, "celery.run tasks.add", "CONSUMER",
                                   "worker", start + 2, message, **received))
    return spans


def made_span(trace_id, span_id, parent_id, name, kind, service, start_ns, message=None,
              **recorded):
    attributes = {"messaging.system": "celery", "celery.task.name": "tasks.add",
                  "messaging.message.id": message, **recorded} if message else {}
    return {"trace_id": trace_id, "span_id": span_id, "parent_id": parent_id, "name": name,
            "kind": kind, "service": service, "start_ns": start_ns, "end_ns": start_ns + 10,
            "status": "UNSET", "attributes": attributes, "resource": {"service.name": service},
            "links": []}


def tempo_calls(spans, worker_services=()):
    """The HTTP calls the doctor's Tempo source makes for SPANS, and its diagnosis."""
    with FakeTempo(spans) as tempo:
        diagnosis = diagnose(load(f"{tempo.url}/api/search", since=1_600_000_000,
                                  worker_services=worker_services), worker_services)
    return len(tempo.calls), diagnosis


@pytest.mark.parametrize("orphans", [3, 6])
def test_tempo_costs_http_calls_per_orphan_not_per_trace(orphans):
    calls, diagnosis = tempo_calls(orders(50, orphans))
    assert [o["cause"] for o in diagnosis["orphans"]] == ["not-extracted"] * orphans
    # Ten times the traffic, the same orphans: the same calls.
    assert tempo_calls(orders(500, orphans))[0] == calls
    # Three searches, a sample of the traffic, and per orphan its trace and its producer's.
    assert calls <= 3 + sources.TEMPO_SAMPLE_TRACES + 2 * orphans


def test_a_healthy_tempo_window_reads_as_healthy_not_as_empty():
    calls, diagnosis = tempo_calls(orders(500, orphans=0))
    assert diagnosis["orphans"] == [] and diagnosis["never_consumed"] == []
    assert diagnosis["consumer_spans"] == diagnosis["connected"] == sources.TEMPO_SAMPLE_TRACES
    assert calls == 3 + sources.TEMPO_SAMPLE_TRACES


def test_tempo_finds_messages_never_consumed_without_reading_every_trace():
    calls, diagnosis = tempo_calls(orders(200, orphans=2, unconsumed=3))
    assert [n["message_id"] for n in diagnosis["never_consumed"]] == [
        "message-197", "message-198", "message-199"]
    assert len(diagnosis["orphans"]) == 2
    # 3 searches, the sample's traces, 2 orphan traces and their 2 producers' traces, 3
    # unconsumed producers' traces, then 1 search for consumers of those 3 messages: none.
    assert calls <= 3 + sources.TEMPO_SAMPLE_TRACES + 2 + 2 + 3 + 1


def test_tempo_finds_worker_roots_and_eager_callers_with_a_search_each():
    def window(count):
        """COUNT healthy orders, then a legacy worker's root span, and an eager run that
        started a trace of its own inside a cron tick (another trace, open around it)."""
        after = 1_700_000_000_000_000_000 + count * 1_000_000
        return [*orders(count, orphans=0),
                made_span("e" * 32, "e" * 16, None, "legacy charge", "INTERNAL", "legacy", after),
                {**made_span("c" * 32, "c" * 16, None, "cron tick", "INTERNAL", "cron", after),
                 "end_ns": after + 100},
                made_span("d" * 32, "d" * 16, None, "celery.run tasks.add", "CONSUMER", "cron",
                          after + 10, "eager-1", **{"celery.is_eager": True})]

    calls, diagnosis = tempo_calls(window(50), worker_services=["legacy"])
    assert [(o["span_id"], o["cause"]) for o in diagnosis["orphans"]] == [
        ("e" * 16, "not-extracted")]
    [eager] = diagnosis["eager_roots"]
    assert (eager["verdict"], eager["caller"]["span_id"]) == ("not-continued", "c" * 16)
    # Ten times the traffic, the same findings: the same calls.
    assert tempo_calls(window(500), worker_services=["legacy"])[0] == calls
    # The three searches, the legacy worker's roots, the eager run's callers (never its
    # producer: an eager run publishes nothing); the sample, the legacy, eager and cron traces.
    assert calls <= 5 + sources.TEMPO_SAMPLE_TRACES + 3


def test_one_trace_from_tempos_v2_api(export, backend, capsys):
    document = protobuf_json(export, use_integers_for_enums=True)
    tempo = backend({"/api/v2/traces/0af7651916cd43dd8448eb211c80319c": (
        200, {"trace": document, "status": "COMPLETE"})})
    status, out, _ = run_doctor(
        capsys, f"{tempo.url}/api/v2/traces/0af7651916cd43dd8448eb211c80319c", "--json")
    assert status == 1 and json.loads(out)["spans"] == 3


@pytest.mark.parametrize("path, routes, reason", [
    ("/", {}, "bad URL"),
    ("/api/v3/traces", {}, "needs a service"),
    ("/api/traces/abc", {"/api/traces/abc": (500, {"error": "boom"})}, "answered 500"),
    ("/api/traces/abc", {"/api/traces/abc": (200, b"<html>")}, "did not answer JSON"),
    ("/api/traces/abc", {"/api/traces/abc": (200, {"traces": []})}, "did not answer OTLP"),
    ("/api/search", {"/api/search": (200, {"hits": 0})}, "did not answer a Tempo search"),
    # Jaeger's answer when nothing matched: no spans is no verdict, not a clean bill of health.
    ("/api/v3/traces/abc", {"/api/v3/traces/abc": (200, {"result": {}})}, "no spans in"),
])
def test_a_backend_answering_nonsense_exits_2(backend, capsys, path, routes, reason):
    status, out, err = run_doctor(capsys, backend(routes).url + path)
    assert (status, out) == (2, "")
    assert reason in err and err.count("\n") == 1


def test_a_backend_that_refuses_or_never_answers_exits_2_in_bounded_time(capsys):
    refusing = free_port()  # nothing listens there
    silent = socket.socket()  # listens, never accepts, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        for port, reason in [(refusing, "refused"), (silent.getsockname()[1], "within 0.5 s")]:
            started = time.monotonic()
            status, _, err = run_doctor(
                capsys, f"http://127.0.0.1:{port}/api/traces/abc", "--timeout", "0.5")
            assert status == 2 and "backend unreachable" in err and reason in err
            assert time.monotonic() - started < 10  # the timeout, with a wide margin
    finally:
        silent.close()


def test_a_url_of_another_scheme_is_refused(capsys):
    status, _, err = run_doctor(capsys, "ftp://example.com/traces.json")
    assert status == 2 and "only http and https" in err


def test_the_command_runs_and_its_help_says_what_tempos_totals_cover():
    # The README tells readers to run `python doctor.py`: it must be a command, not a module.
    shown = subprocess.run([sys.executable, "doctor.py", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "totals (spans, traces, consumer spans, connected) count only the traces it " \
           "fetched" in " ".join(shown.stdout.split())
