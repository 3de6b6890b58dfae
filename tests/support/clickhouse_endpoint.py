"""A ClickHouse HTTP interface for tests, on 127.0.0.1: what it receives runs in chDB (the real
engine, in this process), in the exporter's exact tables, and it answers as ClickHouse does
(rows in the format asked for; an error as a status code and "Code: N. DB::Exception: ...").

    python tests/support/clickhouse_endpoint.py [--schema map|json] [--old-kinds] [--corpus NAMES]
        [--load FILE.jsonl ...] [--user U --password P] -- COMMAND ... {url} ...

loads the spans into otel.otel_traces (the default schema, tests/support/clickhouse_tables/), serves
it, runs COMMAND with {url} replaced by the endpoint's clickhouse:// URL, prints what COMMAND
printed and exits 0 (the README shows the doctor's report this way). Without COMMAND it
serves until stopped, after printing the URL on a line of its own.
"""

import argparse
import base64
import gzip
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
# Run as a script (the README does), it needs the repository root to import from.
sys.path[:0] = [str(ROOT)]

from tests.support import doctor_corpus  # noqa: E402
from tracetools import clickhouse, otlp_json  # noqa: E402

TABLES = {"map": HERE / "clickhouse_tables" / "otel_traces.sql",
          "json": HERE / "clickhouse_tables" / "otel_traces_json.sql"}
# How ClickHouse's HTTP interface answers some exceptions; any other is a 500.
STATUS = {"UNKNOWN_TABLE": 404, "UNKNOWN_DATABASE": 404, "UNKNOWN_IDENTIFIER": 400,
          "SYNTAX_ERROR": 400, "AUTHENTICATION_FAILED": 403}
KINDS = {"PRODUCER": "Producer", "CONSUMER": "Consumer", "CLIENT": "Client",
         "SERVER": "Server", "INTERNAL": "Internal", "UNSPECIFIED": "Unspecified"}
STATUSES = {"UNSET": "Unset", "OK": "Ok", "ERROR": "Error"}


class Store:
    """chDB holding the exporter's table otel.otel_traces, in SCHEMA "map" or "json"."""

    def __init__(self, schema="map"):
        from chdb import session

        self.schema = schema
        self.session = session.Session()
        self.lock = threading.Lock()  # one engine: one query at a time
        self.session.query("CREATE DATABASE IF NOT EXISTS otel")
        create = TABLES[schema].read_text().replace(
            f"otel.{TABLES[schema].stem}", "otel.otel_traces")
        self.session.query(create)

    def insert(self, spans, old_kinds=False):
        """Write SPANS (dicts in the trace sink's shape) as the exporter writes them: kinds
        as 'Consumer' (or 'SPAN_KIND_CONSUMER' with OLD_KINDS), attribute values as strings
        in a Map, or typed in a JSON column."""
        rows = [self._row(span, old_kinds) for span in spans]
        if rows:
            # RFC 3339 times, with their zone: no time zone of the engine's gets in the way.
            self.query("INSERT INTO otel.otel_traces "
                       "SETTINGS date_time_input_format = 'best_effort' FORMAT JSONEachRow\n"
                       + "\n".join(json.dumps(row) for row in rows))

    def _row(self, span, old_kinds):
        kind, status = KINDS[span["kind"]], STATUSES[span["status"]]
        if old_kinds:
            kind, status = f"SPAN_KIND_{span['kind']}", f"STATUS_CODE_{span['status']}"
        attributes = span["attributes"]
        if self.schema == "map":
            # What the exporter's pcommon AsString() writes: true, 3, 1.5, JSON for the rest.
            attributes = {key: _as_string(value) for key, value in attributes.items()}
        return {
            "Timestamp": clickhouse.timestamp(span["start_ns"]).replace(" ", "T") + "Z",
            "TraceId": span["trace_id"], "SpanId": span["span_id"],
            "ParentSpanId": span["parent_id"] or "",
            "SpanName": span["name"], "SpanKind": kind, "ServiceName": span["service"] or "",
            "ResourceAttributes": {k: _as_string(v) for k, v in span["resource"].items()},
            "SpanAttributes": attributes,
            "Duration": max(0, span["end_ns"] - span["start_ns"]),
            "StatusCode": status,
            "Links.TraceId": [link["trace_id"] for link in span["links"]],
            "Links.SpanId": [link["span_id"] for link in span["links"]],
            "Links.TraceState": ["" for _ in span["links"]],
            "Links.Attributes": [{} for _ in span["links"]],
        }

    def query(self, sql, format="TSV", params=None):
        with self.lock:
            return self.session.query(sql, format, params=params or {}).bytes()


def _as_string(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def corpus_spans(scenarios=None, start_ns=doctor_corpus.START_NS):
    """The conformance corpus's spans (tests/support/doctor_corpus.py), all or of SCENARIOS."""
    spans = otlp_json.spans(doctor_corpus.document(start_ns))
    if scenarios is None:
        return list(spans)
    slots = {doctor_corpus.slot_start_ns(name, start_ns) // doctor_corpus.SLOT_NS
             for name in scenarios}
    return [span for span in spans if span["start_ns"] // doctor_corpus.SLOT_NS in slots]


class Endpoint:
    """STORE served over HTTP on 127.0.0.1 as ClickHouse's HTTP interface, with one login."""

    def __init__(self, store, user="default", password=""):
        self.store, self.login = store, (user, password)
        handler = type("Handler", (_Handler,), {"endpoint": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, table="otel_traces", login=""):
        return f"clickhouse://{login}127.0.0.1:{self.port}/otel?table={table}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    endpoint = None

    def do_POST(self):  # noqa: N802 (http.server's name)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self._user() != self.endpoint.login:
            return self._error(f"Code: 516. DB::Exception: {self._user()[0]}: Authentication "
                               "failed: password is incorrect, or there is no user with such "
                               "name. (AUTHENTICATION_FAILED)")
        params = {k.removeprefix("param_"): v for k, v in query.items()
                  if k.startswith("param_")}
        try:
            body = self.endpoint.store.query(sql, query.get("default_format", "TSV"), params)
        except RuntimeError as error:  # chDB's ChdbError: the server's own message
            return self._error(str(error))
        self._answer(200, body)

    def _user(self):
        basic = self.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            return user, password
        return (self.headers.get("X-ClickHouse-User", "default"),
                self.headers.get("X-ClickHouse-Key", ""))

    def _error(self, message):
        name = message.rsplit("(", 1)[-1].rstrip(")") if message.endswith(")") else ""
        self._answer(STATUS.get(name, 500), (message.strip() + " (version 26.9)\n").encode(),
                     {"X-ClickHouse-Exception-Code": message.split(".")[0].split()[-1]})

    def _answer(self, status, body, headers=None):
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain; charset=UTF-8", **(headers or {}),
                            "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # quiet: a test reads the doctor's output, not the server's log


# -- for tests: the endpoint in a process of its own, and the corpus as files -------------

DEADLINE = 120


class Served:
    """tests/support/clickhouse_endpoint.py serving OPTIONS in a process of its own (chDB holds one
    engine per process: the doctor's file path needs its own)."""

    def __init__(self, *options):
        self.process = subprocess.Popen(
            [sys.executable, __file__, *options], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("clickhouse://"):
            self.process.kill()
            _, error = self.process.communicate(timeout=DEADLINE)
            raise RuntimeError(f"the endpoint did not start: {error[-2000:]}")

    def stop(self):
        self.process.kill()
        self.process.wait(timeout=DEADLINE)
        self.process.stdout.close()
        self.process.stderr.close()


def write_corpus(path, compression, document=None):
    """The corpus (or DOCUMENT) as OTLP JSON lines, a batch a line, compressed as
    COMPRESSION says (none, gzip or zstd)."""
    document = doctor_corpus.document() if document is None else document
    lines = [json.dumps({"resourceSpans": [batch]}) for batch in document["resourceSpans"]]
    plain = path if compression == "none" else path.with_suffix(".plain")
    plain.write_text("\n".join(lines) + "\n")
    if compression == "gzip":
        path.write_bytes(gzip.compress(plain.read_bytes()))
    elif compression == "zstd":
        # The stdlib has no zstd: chDB writes it, in a process of its own.
        subprocess.run([sys.executable, "-c", (
            "import sys; from chdb import session; session.Session().query("
            "f\"INSERT INTO FUNCTION file('{sys.argv[2]}', 'LineAsString', 'line String', "
            "'zstd') SELECT line FROM file('{sys.argv[1]}', 'LineAsString', 'line String')\")"
        ), str(plain), str(path)], check=True, timeout=DEADLINE)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", choices=sorted(TABLES), default="map")
    parser.add_argument("--old-kinds", action="store_true",
                        help="write 'SPAN_KIND_CONSUMER', as exporters did before")
    parser.add_argument("--corpus", metavar="NAMES",
                        help="load these scenarios of tests/support/doctor_corpus.py "
                             "(comma separated)")
    parser.add_argument("--minutes-ago", type=int, metavar="M",
                        help="the corpus starts M minutes ago, not on its fixed date")
    parser.add_argument("--load", action="append", default=[], metavar="FILE",
                        help="load an OTLP JSON file")
    parser.add_argument("--user", default="default")
    parser.add_argument("--password", default="")
    parser.add_argument("command", nargs="*")
    args = parser.parse_args(argv)
    store = Store(args.schema)
    if args.corpus:
        start_ns = doctor_corpus.START_NS if args.minutes_ago is None else \
            (int(time.time()) - 60 * args.minutes_ago) * 10**9
        store.insert(corpus_spans(args.corpus.split(","), start_ns), args.old_kinds)
    for path in args.load:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                store.insert(otlp_json.spans(json.loads(line)), args.old_kinds)
    with Endpoint(store, args.user, args.password) as endpoint:
        if not args.command:
            print(endpoint.url(), flush=True)
            threading.Event().wait()
        command = [sys.executable if part == "python" else part.replace("{url}", endpoint.url())
                   for part in args.command]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
