"""Where the doctor reads spans: the sink's SQLite file, OTLP JSON in every shape the
backends serve, Jaeger 2 and Tempo over HTTP, and input it must refuse or read around."""

import base64
import json
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

import doctor
from harness.polling import poll_until, port_answers
from harness.processes import ROOT, free_port
from tracetools.sink import TraceSink, load_spans
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
    expected = by_id(load_spans(db))
    assert by_id(load(lines)) == by_id(load(db)) == expected
    consumer = next(s for s in expected if s["kind"] == "CONSUMER")
    assert consumer["status"] == "ERROR" and consumer["attributes"]["flags"] == [True, False]


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
    assert by_id(load(lines)) == by_id(load_spans(db))


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
    assert by_id(load(path)) == by_id(load_spans(sink_files[0]))


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
    assert by_id(load(path, warn=lambda message: None)) == by_id(load_spans(sink_files[0]))
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


class Backend(ThreadingHTTPServer):
    """A tracing backend's query API on 127.0.0.1: ROUTES maps a path to (status, body)."""

    def __init__(self, routes):
        self.routes, self.asked = routes, []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler):
                url = urllib.parse.urlsplit(handler.path)
                self.asked.append((url.path, dict(urllib.parse.parse_qsl(url.query))))
                status, body = self.routes.get(url.path, (404, {"error": "not found"}))
                body = body if isinstance(body, bytes) else json.dumps(body).encode()
                handler.send_response(status)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        # A short poll: shutdown() waits for the loop to notice, and every test stops one.
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_port}"


@pytest.fixture
def backend():
    servers = []

    def serve(routes):
        servers.append(Backend(routes))
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


def test_tempo_is_searched_then_each_trace_fetched_with_base64_ids(export, backend, capsys):
    document = protobuf_json(export, use_integers_for_enums=True)
    routes = {"/api/search": (200, {"traces": []})}
    for batch in document["resourceSpans"]:
        trace_id = base64.b64decode(batch["scopeSpans"][0]["spans"][0]["traceId"]).hex()
        # Tempo's search drops leading zeros; the trace API is asked with all 32 digits.
        routes["/api/search"][1]["traces"].append({"traceID": trace_id.lstrip("0")})
        routes[f"/api/traces/{trace_id}"] = (200, {"batches": [batch]})
    tempo = backend(routes)
    status, out, _ = run_doctor(capsys, f"{tempo.url}/api/search", "--json")
    assert status == 1
    assert json.loads(out)["causes"]["not-extracted"] == 1
    search = tempo.asked[0][1]
    assert set(search) == {"q", "start", "end", "limit"}
    assert len(tempo.asked) == 3


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
