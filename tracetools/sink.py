"""A tiny OTLP/HTTP trace receiver that keeps spans in SQLite: a tracing backend for laptops.

Run it on its own (python -m tracetools.sink --db spans.db) and point any OpenTelemetry SDK at
it with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318, or start it in-process with
TraceSink. Only what this tutorial needs: traces, protobuf, optional gzip. With --otlp-json FILE
it also appends every export to FILE as OTLP JSON lines, as the Collector's file exporter does.
"""

import argparse
import gzip
import json
import sqlite3
import threading
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tracetools import otlp_json

MAX_BODY_BYTES = 16 * 1024 * 1024
BUSY_TIMEOUT_SECONDS = 30

SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    service TEXT,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    attributes TEXT NOT NULL,
    resource TEXT NOT NULL,
    links TEXT NOT NULL
)
"""


def _value(any_value):
    field = any_value.WhichOneof("value")
    if field == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if field == "kvlist_value":
        return _attributes(any_value.kvlist_value.values)
    if field == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, field) if field else None


def _attributes(key_values):
    return {kv.key: _value(kv.value) for kv in key_values}


def _rows(export_request):
    for resource_spans in export_request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                links = [
                    {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                    for link in span.links
                ]
                yield (
                    span.trace_id.hex(),
                    span.span_id.hex(),
                    span.parent_span_id.hex() or None,
                    span.name,
                    Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    resource.get("service.name"),
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                    span.status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                    json.dumps(_attributes(span.attributes)),
                    json.dumps(resource),
                    json.dumps(links),
                )


def _connect(db_path, **options):
    # Every process's exporter writes here while tests, viewer and doctor read: wait for a
    # lock rather than fail with "database is locked".
    return sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_SECONDS, **options)


def iter_spans(db_path):
    """The stored spans, one at a time as they are read, in no particular order."""
    # Read-only: a reader never takes the write lock that the sink's writer needs.
    db = _connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
    with closing(db):
        db.row_factory = sqlite3.Row
        for row in db.execute("SELECT * FROM spans"):
            span = dict(row)
            for column in ("attributes", "resource", "links"):
                span[column] = json.loads(span[column])
            yield span


def load_spans(db_path, **resource_filter):
    """The stored spans, oldest first; keep those whose resource has every given attribute."""
    spans = [
        span for span in iter_spans(db_path)
        if all(span["resource"].get(k) == v for k, v in resource_filter.items())
    ]
    spans.sort(key=lambda span: span["start_ns"])
    return spans


class TraceSink:
    """An OTLP/HTTP receiver on 127.0.0.1, serving from a background thread."""

    def __init__(self, db_path, port=0, otlp_json_path=None):
        self.db_path = db_path
        self.otlp_json_path = otlp_json_path
        self._lock = threading.Lock()
        db = _connect(db_path)
        try:
            # Write-ahead logging: readers see the last commit and never block the writer.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
            db.commit()
        finally:
            db.close()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self):
        self._thread.start()
        return self

    def serve_forever(self):
        self._server.serve_forever()

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def store(self, body):
        export_request = ExportTraceServiceRequest()
        export_request.ParseFromString(body)
        rows = list(_rows(export_request))
        # One writer at a time: the exporter of every process posts here concurrently.
        with self._lock:
            if self.otlp_json_path:
                # Before the SQLite commit: whoever sees the spans there finds their line whole.
                with open(self.otlp_json_path, "a", encoding="utf-8") as lines:
                    lines.write(json.dumps(otlp_json.encode(export_request)) + "\n")
            db = _connect(self.db_path)
            try:
                with db:
                    db.executemany(f"INSERT INTO spans VALUES ({', '.join('?' * 12)})", rows)
            finally:
                db.close()

    def _handler_class(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                if self.path != "/v1/traces":
                    return self._reply(404, b"only /v1/traces is served here")
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    return self._reply(413, b"export request too large")
                body = self.rfile.read(length)
                try:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    sink.store(body)
                except (OSError, DecodeError) as error:
                    return self._reply(400, f"not an OTLP protobuf export: {error}".encode())
                self._reply(200, ExportTraceServiceResponse().SerializeToString())

            def _reply(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass  # one line per export would drown the demo's output

        return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="spans.db", help="SQLite file to keep spans in")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--otlp-json", metavar="FILE",
                        help="also append every export to FILE, as OTLP JSON lines")
    args = parser.parse_args()
    sink = TraceSink(args.db, args.port, otlp_json_path=args.otlp_json)
    also = f" and in {args.otlp_json}" if args.otlp_json else ""
    print(f"receiving OTLP/HTTP traces on {sink.endpoint}, storing them in {args.db}{also}")
    try:
        sink.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
