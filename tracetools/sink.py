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
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tracetools import otlp_json

MAX_BODY_BYTES = 16 * 1024 * 1024
BUSY_TIMEOUT_SECONDS = 30

# A span record (tracetools.span_record) a row; the last three columns hold JSON.
COLUMNS = ("trace_id", "span_id", "parent_id", "name", "kind", "service", "start_ns", "end_ns",
           "status", "attributes", "resource", "links")
JSON_COLUMNS = COLUMNS[-3:]
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
);
-- A time window (a test's poll since it posted, the doctor's --since) reads its own rows,
-- not the whole table.
CREATE INDEX IF NOT EXISTS spans_by_start ON spans (start_ns);
"""


def _connect(db_path, **options):
    # Every process's exporter writes here while tests, viewer and doctor read: wait for a
    # lock rather than fail with "database is locked".
    return sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_SECONDS, **options)


def create(db_path):
    """Make DB_PATH a trace sink database, if it is not one yet."""
    with closing(_connect(db_path)) as db:
        # Write-ahead logging: readers see the last commit and never block the writer.
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)


def write(db_path, spans):
    """Add SPANS (span records, any iterable: a generator is streamed) to the trace sink
    database DB_PATH, in one transaction."""
    with closing(_connect(db_path)) as db, db:
        db.executemany(
            f"INSERT INTO spans ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            ((*(span[column] for column in COLUMNS[:-3]),
              *(json.dumps(span[column]) for column in JSON_COLUMNS)) for span in spans),
        )


def iter_spans(db_path, since_ns=None, until_ns=None, resource=None):
    """The stored span records, one at a time as they are read, in no particular order: those
    that started in [SINCE_NS, UNTIL_NS) (either may be None) and whose resource has every
    attribute of RESOURCE (a dict). SQLite does the filtering: a test polling for its own
    spans reads its own rows, and decodes no one else's."""
    where, values = [], []
    if since_ns is not None:
        where.append("start_ns >= ?")
        values.append(since_ns)
    if until_ns is not None:
        where.append("start_ns < ?")
        values.append(until_ns)
    for key, value in (resource or {}).items():
        # A quoted path step: attribute names hold dots ("deployment.run").
        where.append("json_extract(resource, ?) = ?")
        values += ['$."' + key.replace('"', '\\"') + '"', value]
    query = f"SELECT {', '.join(COLUMNS)} FROM spans"
    if where:
        query += " WHERE " + " AND ".join(where)
    # Read-only: a reader never takes the write lock that the sink's writer needs.
    db = _connect(Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
    with closing(db):
        for row in db.execute(query, values):
            span = dict(zip(COLUMNS, row))
            for column in JSON_COLUMNS:
                span[column] = json.loads(span[column])
            yield span


class TraceSink:
    """An OTLP/HTTP receiver on 127.0.0.1, serving from a background thread."""

    def __init__(self, db_path, port=0, otlp_json_path=None):
        self.db_path = db_path
        self.otlp_json_path = otlp_json_path
        self._lock = threading.Lock()
        create(db_path)
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
        """Keep the spans of BODY, an OTLP protobuf export; return the refusals, one reason
        per span whose ids cannot be read."""
        export_request = ExportTraceServiceRequest()
        export_request.ParseFromString(body)
        # Decoded as OTLP JSON, by the reader that reads files and backends: one decoder.
        document = otlp_json.encode(export_request)
        refused = []
        spans = list(otlp_json.spans(document, refused.append))
        # One writer at a time: the exporter of every process posts here concurrently.
        with self._lock:
            if self.otlp_json_path:
                # Before the SQLite commit: whoever sees the spans there finds their line whole.
                with open(self.otlp_json_path, "a", encoding="utf-8") as lines:
                    lines.write(json.dumps(document) + "\n")
            write(self.db_path, spans)
        return refused

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
                    refused = sink.store(body)
                except (OSError, DecodeError) as error:
                    return self._reply(400, f"not an OTLP protobuf export: {error}".encode())
                # OTLP's partial success: the exporter logs what was refused, and why.
                answer = ExportTraceServiceResponse(partial_success=ExportTracePartialSuccess(
                    rejected_spans=len(refused), error_message=refused[0],
                )) if refused else ExportTraceServiceResponse()
                self._reply(200, answer.SerializeToString())

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
