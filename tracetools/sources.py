"""Where tracetools reads spans: the trace sink's SQLite file, an OTLP JSON file (JSON lines,
as the Collector's file exporter writes them, or one document), or a backend's query API over
http(s): Jaeger 2 (/api/v3/traces) or Grafana Tempo (/api/traces/<id>, /api/search).

load() is the one way in, for the doctor, the viewer, the waterfall page, the harness and the
tutorial: every source gives span records (tracetools.span_record), one at a time, so that a
file of a million spans never has to be held whole.
"""

import json
import logging
import os
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from fractions import Fraction
from itertools import chain
from pathlib import Path

from tracetools import otlp_json, sink
from tracetools.span_record import (
    MESSAGE_ID_KEYS,
    OPERATION_SIDES,
    is_eager,
    message_id,
    message_side,
)

SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_LOOKBACK = 3600.0  # seconds: how far back a Jaeger or Tempo search looks, unless told
DEFAULT_LIMIT = 1000  # traces per backend query: Jaeger and Tempo return 20 unless told
DEFAULT_TIMEOUT = 10.0
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Tempo: message ids per search when asking for the spans that carry them, joined with ||.
# Each id adds two comparisons (both attribute names): 20 keep the URL under 4 KB.
TEMPO_IDS_PER_SEARCH = 20

_log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source that cannot be read: missing, not OTLP, a backend that does not answer."""


def load(source, *, services=(), worker_services=(), since=None, until=None,
         limit=DEFAULT_LIMIT, timeout=DEFAULT_TIMEOUT, warn=_log.warning, resource=None):
    """The span records of SOURCE, as an iterator: read it once. SOURCE is a path (the sink's
    SQLite file, an OTLP JSON file) or an http(s) URL, or a list of them, read in turn.

    Each span comes once, however many times it was stored or however many sources hold it.
    SINCE and UNTIL (unix seconds, or None) keep exactly the spans that started in [SINCE,
    UNTIL). RESOURCE (a dict) keeps the spans whose resource has all of its attributes. Both
    filters run in the store where it can (SQL on the sink's file, the search of a backend).
    SERVICES (Jaeger's query needs them) and LIMIT (traces per query) shape a backend's
    search, whose window is [SINCE, UNTIL), SINCE defaulting to DEFAULT_LOOKBACK seconds ago
    and UNTIL to now. WORKER_SERVICES (the doctor's --worker-service) are searched for in
    Tempo, which is asked only for the traces the doctor needs. TIMEOUT bounds each request.
    Unreadable lines and spans are skipped and counted, and WARN(message) says so once per
    source; a source with nothing readable raises SourceError, as does one that is missing,
    not OTLP or does not answer.
    """
    window = (nanoseconds(since), nanoseconds(until))
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    # Opened now, read later: a missing file or a bad URL is said before anything is read.
    readers = [_reader(str(one), services, worker_services, window, limit, timeout, warn,
                       resource or {})
               for one in sources]
    return _each_once(chain.from_iterable(readers))


def duration(text):
    """Seconds in TEXT: "90s", "15m", "2h", "1d"."""
    match = DURATION.fullmatch(str(text).strip())
    if not match:
        raise SourceError(f"bad duration {text!r}: say e.g. 90s, 15m, 2h or 1d")
    return float(match[1]) * SECONDS[match[2]]


def nanoseconds(seconds):
    """Unix SECONDS (or None) as integer nanoseconds, as every source compares start times."""
    # Exactly, through Fraction: a float times 1e9 rounds differently from source to source.
    return None if seconds is None else int(Fraction(seconds) * 1_000_000_000)


def _each_once(spans):
    # The only de-duplication in tracetools: a sink can receive an export twice (an exporter
    # retries after a timeout), and two sources, or two backend queries, can overlap.
    seen = set()
    for span in spans:
        if span["span_id"] not in seen:
            seen.add(span["span_id"])
            yield span


def _reader(source, services, worker_services, window, limit, timeout, warn, resource):
    scheme = urllib.parse.urlsplit(source).scheme
    if scheme in ("http", "https"):
        spans = _from_url(source, services, worker_services, window, limit, timeout, warn)
        return _kept(spans, window, resource)
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
        return _from_sink(path, window, resource)
    return _kept(_from_otlp_file(path, warn), window, resource)


def _kept(spans, window, resource):
    """The SPANS in WINDOW whose resource has RESOURCE's attributes: for the sources that cannot
    filter themselves."""
    since, until = window
    if since is None and until is None and not resource:
        return spans  # a whole file: a million spans need no test each
    return _filtered(spans, since, until, resource)


def _filtered(spans, since, until, resource):
    for span in spans:
        if (since is None or span["start_ns"] >= since) \
                and (until is None or span["start_ns"] < until) \
                and all(span["resource"].get(key) == value for key, value in resource.items()):
            yield span


def _from_sink(path, window, resource):
    try:
        yield from sink.iter_spans(path, *window, resource)
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


def _from_url(url, services, worker_services, window, limit, timeout, warn):
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise SourceError(f"bad URL {url}: no host")
    path = parts.path.rstrip("/")
    query = dict(urllib.parse.parse_qsl(parts.query))
    # A backend is searched over a window, always: a search with none finds nothing, or all.
    now = time.time()
    since, until = window
    start = now - DEFAULT_LOOKBACK if since is None else since / 1e9
    end = now if until is None else until / 1e9
    if path.endswith("/api/v3/traces"):
        return _spans_at(_jaeger_queries(parts, path, query, services, start, end, limit),
                         timeout)
    if re.search(r"/api/(v3/|v2/)?traces/[0-9A-Fa-f]+$", path):
        return _spans_at([url], timeout)  # one trace: Jaeger 2's v3, Tempo's v1 or v2
    if path.endswith("/api/search"):
        tempo = _Tempo(parts, path.removesuffix("/api/search"), query, start, end, limit,
                       timeout, warn, worker_services)
        return tempo.spans()
    raise SourceError(
        f"bad URL {url}: give the query API's path, Jaeger 2's /api/v3/traces or "
        "Tempo's /api/traces/<trace id> or /api/search"
    )


def _spans_at(urls, timeout):
    for url in urls:
        yield from _trace_spans(url, timeout)


def _trace_spans(url, timeout):
    try:
        return list(otlp_json.spans(_get_json(url, timeout)))
    except otlp_json.NotOtlp as error:
        raise SourceError(f"{url} did not answer OTLP JSON: {error}") from None


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


# Tempo has no bulk export and TraceQL judges one trace at a time, so fetching every trace of
# the window to find a few orphans costs one HTTP call per trace. Instead, Tempo is asked for
# the few traces the doctor's verdicts depend on, with searches whose answers grow with the
# orphans and the unconsumed messages (K), not with the traffic (N):
#
# 1. a few traces with a consumer span, whatever they hold: in a healthy window the searches
#    below find nothing, and reading nothing would say "no Celery span here" where there were
#    thousands, all connected. A sample of the traffic says so instead.
# 2. consumer spans that are no span's child in their own trace: roots, and spans whose
#    parent never arrived. `{ } !> { X }`, TraceQL's not-child operator, is "X with no parent
#    among all the spans". Not `nestedSetParent = -1`: Tempo numbers the spans that hang from
#    a root it holds, and may leave one whose parent is missing unnumbered, so parent-missing
#    orphans could go unseen. The structural negations are marked experimental for their false
#    positives, which cost a fetch here, not a verdict: the doctor judges each trace whole.
# 3. producer spans that are no consumer span's parent, `{ consumer } !< { producer }`: the
#    producers of the orphans in 2, and the messages nobody consumed. In a healthy trace the
#    consumer span is the producer's child, so these are few too.
# 4. the producer spans carrying the message ids of the consumer spans in 2, by id (one
#    message can be published several times: a retry's second publish is not in 3).
# 5. the consumer spans carrying the message ids of the producer spans in 3, by id: a
#    message is "never consumed" only if no consumer span anywhere carries its id, and the
#    consumer may sit in a trace that 2 did not return (it linked to its producer, or its
#    parent is another publish of the same id).
# 6. with --worker-service, the traces whose root span is of a worker service
#    (`trace:rootService`): a worker that records no consumer span leaves no trace for 2 to
#    find, only a root of its own service. A worker that continues its callers' traces is
#    not their root service: what this finds are the roots the doctor judges.
# 7. for each eager run that is a root (found in 2), the traces with a span of its service
#    that lasted at least as long as the run, searched over the seconds the run took: Tempo
#    keeps the traces that overlap a search's window, so the caller's (a span open around the
#    run, in another trace) is among them. Without it the run would look "by design". One
#    search per eager root, each bounded by --limit.
#
# Every trace found is fetched whole, once. What the doctor then counts (spans, traces,
# consumer spans, connected ones) covers those traces, not the whole window: the orphans, their
# causes, the eager roots' verdicts and the unconsumed messages are the same as from a whole
# export.


def _traceql_side(side):
    """TraceQL for the spans of SIDE (PRODUCER or CONSUMER), as message_side() judges them."""
    operations = "|".join(op for op, its in OPERATION_SIDES.items() if its == side)
    return (f'kind = {side.lower()} || span.messaging.operation.type =~ "{operations}"'
            f' || span.messaging.operation =~ "{operations}"')


TEMPO_CONSUMER = _traceql_side("CONSUMER")
TEMPO_PRODUCER = _traceql_side("PRODUCER")
TEMPO_CONSUMERS = f"{{ {TEMPO_CONSUMER} }}"
TEMPO_SAMPLE_TRACES = 5
TEMPO_UNPARENTED_CONSUMERS = f"{{ }} !> {{ {TEMPO_CONSUMER} }}"
TEMPO_CHILDLESS_PRODUCERS = f"{{ {TEMPO_CONSUMER} }} !< {{ {TEMPO_PRODUCER} }}"


def tempo_by_message_ids(side, ids):
    """The TraceQL search for the spans of SIDE (TEMPO_PRODUCER or TEMPO_CONSUMER) that carry
    one of the message IDS, under either attribute name."""
    wanted = " || ".join(f"span.{key} = {_traceql_string(one)}"
                         for one in ids for key in MESSAGE_ID_KEYS)
    return f"{{ ({side}) && ({wanted}) }}"


def tempo_rooted_in(services):
    """The TraceQL search for the traces whose root span is of one of SERVICES."""
    return "{ " + " || ".join(f"trace:rootService = {_traceql_string(service)}"
                              for service in services) + " }"


def tempo_open_around(service, duration_ns):
    """The TraceQL search for the spans of SERVICE that lasted DURATION_NS or longer: with the
    search's window on a run, the spans that may have been open around it."""
    return (f"{{ resource.service.name = {_traceql_string(service)} "
            f"&& duration >= {duration_ns}ns }}")


def _traceql_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Tempo:
    """One Tempo /api/search source: the searches above, and the traces they find."""

    def __init__(self, parts, base, query, start, end, limit, timeout, warn, worker_services):
        self.parts, self.base, self.timeout, self.warn = parts, base, timeout, warn
        self.worker_services = sorted(worker_services)
        # A q of the URL's own narrows the searches that look for candidates.
        self.narrow = query.pop("q", None)
        self.params = {"start": str(int(start)), "end": str(int(end) + 1), "limit": str(limit),
                       **query}
        self.limit = limit
        self.traces = {}  # trace id: its spans, fetched once

    def spans(self):
        self._fetch(self._search(TEMPO_CONSUMERS, narrow=True, limit=TEMPO_SAMPLE_TRACES))
        self._fetch(self._search(TEMPO_UNPARENTED_CONSUMERS, narrow=True)
                    + self._search(TEMPO_CHILDLESS_PRODUCERS, narrow=True)
                    + (self._search(tempo_rooted_in(self.worker_services), narrow=True)
                       if self.worker_services else []))
        fetched = [span for spans in self.traces.values() for span in spans]
        produced = {message_id(s) for s in fetched if message_side(s) == "PRODUCER"}
        # An eager run consumed no message and is never joined to a producer, whatever id it
        # carries: it neither needs a producer nor makes a message consumed.
        received = [s for s in fetched
                    if message_side(s) == "CONSUMER" and not is_eager(s["attributes"])]
        consumed = {message_id(s) for s in received}
        parents = {s["parent_id"] for s in fetched if message_side(s) == "CONSUMER"}
        ids = {s["span_id"] for s in fetched}
        unparented = {message_id(s) for s in received if s["parent_id"] not in ids}
        childless = {message_id(s) for s in fetched
                     if message_side(s) == "PRODUCER" and s["span_id"] not in parents}
        self._fetch_carrying(TEMPO_PRODUCER, unparented - produced - {None})
        self._fetch_carrying(TEMPO_CONSUMER, childless - consumed - {None})
        self._fetch_callers()
        for spans in self.traces.values():
            yield from spans

    def _fetch_callers(self):
        """The traces that may hold the caller of each eager run that is a root (7 above)."""
        # A span without a service.name cannot be searched by it.
        eager_roots = [span for spans in self.traces.values() for span in spans
                       if message_side(span) == "CONSUMER" and span["parent_id"] is None
                       and is_eager(span["attributes"]) and span["service"]]
        for run in eager_roots:
            # Whole seconds around the run: Tempo's search window is in seconds.
            window = (run["start_ns"] // 10**9, run["end_ns"] // 10**9 + 1)
            self._fetch(self._search(
                tempo_open_around(run["service"], run["end_ns"] - run["start_ns"]),
                window=window))

    def _fetch_carrying(self, side, message_ids):
        ordered = sorted(message_ids)
        for first in range(0, len(ordered), TEMPO_IDS_PER_SEARCH):
            batch = ordered[first:first + TEMPO_IDS_PER_SEARCH]
            self._fetch(self._search(tempo_by_message_ids(side, batch)))

    def _search(self, traceql, narrow=False, limit=None, window=None):
        if narrow and self.narrow:
            traceql = f"({traceql}) && ({self.narrow})"
        params = {**self.params, "q": traceql, **({"limit": str(limit)} if limit else {})}
        if window:
            params["start"], params["end"] = map(str, window)
        search = urllib.parse.urlunsplit(self.parts._replace(
            path=f"{self.base}/api/search", query=_encode(params),
        ))
        found = _get_json(search, self.timeout)
        traces = found.get("traces") if isinstance(found, dict) else None
        if not isinstance(traces, list):
            raise SourceError(f"{search} did not answer a Tempo search: no traces list")
        if limit is None and len(traces) >= self.limit:
            self.warn(f"Tempo found {self.limit} traces or more for {traceql}: the rest are "
                      "not read (a higher --limit, or a shorter window)")
        # Tempo's search drops the leading zeros of a trace id; its trace API wants all 32.
        return [str(trace.get("traceID", "")).rjust(32, "0") for trace in traces]

    def _fetch(self, trace_ids):
        for trace_id in trace_ids:
            if trace_id not in self.traces:
                self.traces[trace_id] = _trace_spans(urllib.parse.urlunsplit(self.parts._replace(
                    path=f"{self.base}/api/traces/{trace_id}", query="",
                )), self.timeout)


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
