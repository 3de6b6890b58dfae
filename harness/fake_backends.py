"""Tracing backends' query APIs on 127.0.0.1, for tests and benchmarks.

    with Backend(lambda path, query: (200, {"result": {}})) as jaeger: ...
    with FakeTempo(spans) as tempo:
        list(load(f"{tempo.url}/api/search"))
        tempo.calls  # every request, in order: ("search", q) or ("trace", trace id)

FakeTempo serves span records and answers as Tempo does: /api/search?q=<TraceQL>&start=
&end=&limit= with the ids of the matching traces, leading zeros dropped, and
/api/traces/<trace id> with {"batches": ...} and base64 ids. It evaluates the TraceQL that
tracetools.sources sends, no other: each query is parsed, then rebuilt with sources' own
function and compared, and anything else gets a 400, as Tempo answers a query it cannot
parse, so a changed query fails loudly.
"""

import base64
import json
import re
import threading
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

from tracetools import otlp_json, sources
from tracetools.span_record import MESSAGE_ID_KEYS, message_id, message_side

TRACE_PATH = re.compile(r"/api/traces/([0-9a-f]{32})")
# The values a search compares with: each "..." after an =, with \" and \\ escaped.
QUOTED = re.compile(r'= "((?:[^"\\]|\\.)*)"')
LASTED = re.compile(r"duration >= (\d+)ns")


class Backend(ThreadingHTTPServer):
    """A tracing backend's query API on 127.0.0.1, answering GET requests with
    ANSWER(path, query) -> (status, body): a body of bytes as it is, anything else as JSON.
    Every request is kept in .asked as (path, query)."""

    def __init__(self, answer):
        self.asked = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler):
                url = urllib.parse.urlsplit(handler.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                self.asked.append((url.path, query))
                status, body = answer(url.path, query)
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class _Trace(NamedTuple):
    """What Tempo's search knows of a trace besides its spans."""

    start_ns: int
    end_ns: int
    span_ids: set
    consumer_parents: set  # the parent ids of its consumer spans
    root_service: str  # trace:rootService: the service of its root span, or None


def _trace(spans):
    root = next((span for span in spans if span["parent_id"] is None), None)
    return _Trace(min(span["start_ns"] for span in spans), max(span["end_ns"] for span in spans),
                  {span["span_id"] for span in spans},
                  {span["parent_id"] for span in spans if message_side(span) == "CONSUMER"},
                  root and root["service"])


class FakeTempo(Backend):
    """Grafana Tempo's query API over SPANS (span records)."""

    def __init__(self, spans):
        self.traces = defaultdict(list)
        for span in spans:
            self.traces[span["trace_id"]].append(span)
        self.searched = {trace_id: _trace(spans) for trace_id, spans in self.traces.items()}
        super().__init__(self._answer)

    @property
    def calls(self):
        """Every request, in order: ("search", its TraceQL) or ("trace", its trace id)."""
        return [("search", query.get("q")) if path == "/api/search" else ("trace", path[-32:])
                for path, query in self.asked]

    def _answer(self, path, query):
        if path == "/api/search":
            found = self.search(query.get("q", ""), int(query.get("start", 0)),
                                int(query.get("end", 2**40)), int(query.get("limit", 20)))
            if found is None:
                return 400, {"error": f"unsupported TraceQL: {query.get('q')}"}
            return 200, {"traces": [{"traceID": trace.lstrip("0")} for trace in found]}
        trace = TRACE_PATH.fullmatch(path)
        answer = trace and self.trace(trace[1])
        return (200, answer) if answer else (404, {"error": "trace not found"})

    def search(self, q, start, end, limit):
        """The ids of the traces that overlap [START, END] (seconds) and hold a span matching
        Q. Tempo keeps a trace when it started by END and ended at START or later (its
        vparquet blocks' StartTimeUnixNano and EndTimeUnixNano), wherever the span is."""
        matches = self._matcher(q)
        if matches is None:
            return None
        found = [trace_id for trace_id, trace in self.searched.items()
                 if trace.start_ns <= end * 10**9 and trace.end_ns >= start * 10**9
                 and any(matches(span, trace) for span in self.traces[trace_id])]
        return found[:limit]

    def _matcher(self, q):
        """A function (span, _Trace) -> bool for the TraceQL Q, or None if sources sends no
        such query."""
        if q == sources.TEMPO_CONSUMERS:
            return lambda span, _: message_side(span) == "CONSUMER"
        if q == sources.TEMPO_UNPARENTED_CONSUMERS:
            return lambda span, trace: (message_side(span) == "CONSUMER"
                                        and span["parent_id"] not in trace.span_ids)
        if q == sources.TEMPO_CHILDLESS_PRODUCERS:
            return lambda span, trace: (message_side(span) == "PRODUCER"
                                        and span["span_id"] not in trace.consumer_parents)
        quoted = [re.sub(r"\\(.)", r"\1", value) for value in QUOTED.findall(q)]
        for wanted_side, traceql in (("PRODUCER", sources.TEMPO_PRODUCER),
                                     ("CONSUMER", sources.TEMPO_CONSUMER)):
            ids = quoted[::len(MESSAGE_ID_KEYS)]  # each id once per attribute name
            if ids and q == sources.tempo_by_message_ids(traceql, ids):
                return lambda span, _, s=wanted_side, ids=set(ids): (
                    message_side(span) == s and message_id(span) in ids)
        if quoted and q == sources.tempo_rooted_in(quoted):
            return lambda _, trace: trace.root_service in quoted
        lasted = LASTED.search(q)
        if lasted and len(quoted) == 1 \
                and q == sources.tempo_open_around(quoted[0], int(lasted[1])):
            return lambda span, _: (span["service"] == quoted[0]
                                    and span["end_ns"] - span["start_ns"] >= int(lasted[1]))
        return None

    def trace(self, trace_id):
        spans = self.traces.get(trace_id)
        if not spans:
            return None
        batches = otlp_json.document_of(spans)["resourceSpans"]
        for batch in batches:  # base64 ids, as Tempo's v1 trace API gives them
            for span in batch["scopeSpans"][0]["spans"]:
                for field in ("traceId", "spanId", "parentSpanId"):
                    span[field] = base64.b64encode(bytes.fromhex(span[field])).decode()
        return {"batches": batches}
