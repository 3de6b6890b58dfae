"""Where the doctor reads spans: the trace sink's SQLite file, an OTLP JSON file (JSON lines,
as the Collector's file exporter writes them, or one document), or a backend's query API over
http(s): Jaeger 2 (/api/v3/traces) or Grafana Tempo (/api/traces/<id>, /api/search).

Every source gives spans in the trace sink's shape, one at a time, so that a file of a
million spans never has to be held whole.
"""

import json
import logging
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from tracetools import otlp_json, sink

SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_LOOKBACK = "1h"
DEFAULT_LIMIT = 1000  # traces per backend query: Jaeger and Tempo return 20 unless told
DEFAULT_TIMEOUT = 10.0
# What a Tempo search looks for unless the URL has a q of its own: every trace with a
# message in it, on either side.
TEMPO_QUERY = "{ kind = producer || kind = consumer }"
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source that cannot be read: missing, not OTLP, a backend that does not answer."""


def load(source, services=(), lookback=DEFAULT_LOOKBACK, limit=DEFAULT_LIMIT,
         timeout=DEFAULT_TIMEOUT, warn=_log.warning):
    """The spans of SOURCE (a path or an http(s) URL), as an iterator: read it once.

    SERVICES, LOOKBACK (e.g. "90s", "15m", "2h", "1d") and LIMIT (traces) shape a Jaeger
    /api/v3/traces query; LOOKBACK and LIMIT a Tempo /api/search. TIMEOUT bounds each
    request. Unreadable lines and spans are skipped and counted, and WARN(message) says so
    once per source; a source with nothing readable raises SourceError.
    """
    source = str(source)
    scheme = urllib.parse.urlsplit(source).scheme
    if scheme in ("http", "https"):
        return _from_url(source, services, _seconds(lookback), limit, timeout)
    if "://" in source:
        raise SourceError(f"bad URL {source}: only http and https are read")
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{source}: no such file")
    if not path.is_file():
        raise SourceError(f"{source} is not a file")
    with open(path, "rb") as file:
        magic = file.read(len(SQLITE_MAGIC))
    if magic == SQLITE_MAGIC:
        return _from_sink(path)
    return _from_otlp_file(path, warn)


def _seconds(lookback):
    match = DURATION.fullmatch(str(lookback).strip())
    if not match:
        raise SourceError(f"bad lookback {lookback!r}: say e.g. 90s, 15m, 2h or 1d")
    return float(match[1]) * SECONDS[match[2]]


def _from_sink(path):
    try:
        yield from sink.iter_spans(path)
    except sqlite3.DatabaseError as error:
        raise SourceError(f"{path} is not a trace sink database: {error}") from None


def _from_otlp_file(path, warn):
    """JSON lines, one batch a line; or, when the first line is not JSON, one document."""
    skipped = _Skipped(path, warn)
    with open(path, "rb") as file:
        first = next((line for line in file if line.strip()), None)
        if first is None:
            # What a collector leaves before its first export: no spans yet.
            raise SourceError(f"{path} is empty")
        file.seek(0)
        document = None if _is_json(first) else _json_or_none(file)
        if document is not None:
            try:
                yield from skipped.counted(otlp_json.spans(document, skipped.span))
            except otlp_json.NotOtlp as error:
                raise SourceError(f"{path} is not OTLP JSON: {error}") from None
        else:
            file.seek(0)
            yield from skipped.counted(_lines(file, skipped))
            if not skipped.batches:
                raise SourceError(f"{path} is not OTLP JSON: {skipped.first_reason}")
    if skipped.spans and not skipped.yielded:
        raise SourceError(f"{path} holds no readable span: {skipped.first_reason}")
    skipped.report()


def _lines(file, skipped):
    for line in file:
        if not line.strip():
            continue
        # The file exporter appends batch after batch, in no order: a line cut short by a
        # writer that stopped is lost alone, and the others still count.
        try:
            batch_spans = list(otlp_json.spans(json.loads(line), skipped.span))
        except (ValueError, otlp_json.NotOtlp) as error:
            skipped.line(error)
            continue
        skipped.batches += 1
        yield from batch_spans


def _is_json(line):
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _json_or_none(file):
    try:
        return json.load(file)
    except ValueError:  # binary garbage, or JSON lines with a broken first line
        return None


class _Skipped:
    """What a source could not read, said once at its end."""

    def __init__(self, source, warn):
        self.source, self.warn = source, warn
        self.lines = self.spans = self.batches = self.yielded = 0
        self.first_reason = None

    def counted(self, spans):
        for span in spans:
            self.yielded += 1
            yield span

    def line(self, error):
        self.lines += 1
        reason = str(error) if isinstance(error, otlp_json.NotOtlp) else f"not JSON: {error}"
        self.first_reason = self.first_reason or reason[:200]

    def span(self, reason):
        self.spans += 1
        self.first_reason = self.first_reason or reason[:200]

    def report(self):
        parts = [f"{count} {what}{'s' * (count > 1)}" for count, what in
                 ((self.lines, "unreadable line"), (self.spans, "span with unreadable ids"))
                 if count]
        if parts:
            self.warn(f"{self.source}: skipped {' and '.join(parts)} ({self.first_reason})")


def _from_url(url, services, lookback_seconds, limit, timeout):
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise SourceError(f"bad URL {url}: no host")
    path = parts.path.rstrip("/")
    query = dict(urllib.parse.parse_qsl(parts.query))
    now = time.time()
    if path.endswith("/api/v3/traces"):
        requests = _jaeger_queries(parts, path, query, services, now - lookback_seconds, now,
                                   limit)
    elif re.search(r"/api/(v3/|v2/)?traces/[0-9A-Fa-f]+$", path):
        requests = [url]  # one trace: Jaeger 2's v3, Tempo's v1 or v2
    elif path.endswith("/api/search"):
        requests = _tempo_traces(parts, path, query, now - lookback_seconds, now, limit, timeout)
    else:
        raise SourceError(
            f"bad URL {url}: give the query API's path, Jaeger 2's /api/v3/traces or "
            "Tempo's /api/traces/<trace id> or /api/search"
        )
    return _spans_at(requests, timeout)


def _spans_at(urls, timeout):
    # A trace found by two queries (two services of one trace, say) comes back twice.
    seen = set()
    for url in urls:
        try:
            spans = list(otlp_json.spans(_get_json(url, timeout)))
        except otlp_json.NotOtlp as error:
            raise SourceError(f"{url} did not answer OTLP JSON: {error}") from None
        for span in spans:
            if span["span_id"] not in seen:
                seen.add(span["span_id"])
                yield span


def _jaeger_queries(parts, path, query, services, start, end, limit):
    if "query.service_name" in query:
        services = [query["query.service_name"]]
    if not services:
        raise SourceError(
            "Jaeger's /api/v3/traces needs a service: give --service NAME, once for each "
            "service that publishes or runs tasks"
        )
    window = {
        "query.start_time_min": _rfc3339(start),
        "query.start_time_max": _rfc3339(end),
        "query.num_traces": str(limit),
    }
    return [
        urllib.parse.urlunsplit(parts._replace(
            path=path, query=_encode({**window, **query, "query.service_name": service}),
        ))
        for service in services
    ]


def _tempo_traces(parts, path, query, start, end, limit, timeout):
    params = {"q": TEMPO_QUERY, "start": str(int(start)), "end": str(int(end) + 1),
              "limit": str(limit), **query}
    search = urllib.parse.urlunsplit(parts._replace(path=path, query=_encode(params)))
    found = _get_json(search, timeout)
    traces = found.get("traces") if isinstance(found, dict) else None
    if not isinstance(traces, list):
        raise SourceError(f"{search} did not answer a Tempo search: no traces list")
    base = path.removesuffix("/api/search")
    for trace in traces:
        # Tempo's search drops the leading zeros of a trace id; its trace API wants all 32.
        trace_id = str(trace.get("traceID", "")).rjust(32, "0")
        yield urllib.parse.urlunsplit(parts._replace(path=f"{base}/api/traces/{trace_id}",
                                                     query=""))


def _rfc3339(seconds):
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def _encode(params):
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def _get_json(url, timeout):
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        detail = error.read(300).decode(errors="replace").strip()
        raise SourceError(f"{url} answered {error.code}: {detail or error.reason}") from None
    except TimeoutError:
        raise SourceError(f"backend unreachable: {url} did not answer within {timeout:g} s") \
            from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise SourceError(
                f"backend unreachable: {url} did not answer within {timeout:g} s"
            ) from None
        raise SourceError(f"backend unreachable: {url}: {error.reason}") from None
    except (OSError, ValueError) as error:  # a reset connection; a port out of range
        raise SourceError(f"backend unreachable: {url}: {error}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise SourceError(f"{url} did not answer JSON: {body[:80]!r}") from None
