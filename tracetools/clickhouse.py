"""The doctor where the spans are: the join runs as SQL inside ClickHouse, on the table the
OpenTelemetry Collector's ClickHouse exporter writes, and only the findings come back.

    python doctor.py "clickhouse://HOST:8123/DATABASE?table=otel_traces" --lookback 1h

clickhouse:// speaks HTTP to ClickHouse's HTTP interface (port 8123 unless the URL says);
clickhouses:// speaks HTTPS (port 8443 unless the URL says). DATABASE defaults to
"default" (where ClickStack puts the table), table= to otel_traces. The login comes from the
URL (clickhouse://USER:PASSWORD@HOST...), else from CLICKHOUSE_USER and CLICKHOUSE_PASSWORD,
as clickhouse-client reads them, else user "default" with no password.

The query is tracetools/sql/diagnosis.sql, which reads both of the exporter's schemas (Map and
JSON attribute columns) and which a user can paste into clickhouse-client. The stdlib's
urllib is the whole client: the doctor needs no driver on the host that reaches the store.
"""

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from tracetools.doctor import CAUSES, Findings
from tracetools.sources import SourceError

SCHEMES = {"clickhouse": ("http", 8123), "clickhouses": ("https", 8443)}
SQL = Path(__file__).with_name("sql")
DIAGNOSIS = (SQL / "diagnosis.sql").read_text()
DEFAULT_DATABASE = "default"
DEFAULT_TABLE = "otel_traces"
# The window when none is given: DateTime64(9) holds no time outside it.
EARLIEST_NS, LATEST_NS = 0, 9_223_372_036 * 10**9


def handles(source):
    """Is SOURCE a ClickHouse URL?"""
    return urllib.parse.urlsplit(str(source)).scheme in SCHEMES


def diagnose_url(url, since_ns=None, until_ns=None, worker_services=(), limit=1000,
                 timeout=10.0, warn=print):
    """Findings (tracetools.doctor.Findings) for the spans in the table at URL whose start
    is in [SINCE_NS, UNTIL_NS) (nanoseconds since the epoch; None: unbounded). At most
    LIMIT orphans, eager roots and never-consumed messages come back; the counts are whole.
    TIMEOUT bounds the answer, on the server (max_execution_time) and on the wire. WARN
    (message) says what LIMIT left out."""
    server, database, table, login = _parse(url)

    def execute(sql, params):
        return _post(server, login, sql, params, timeout)

    return diagnose(execute, database, table, since_ns, until_ns, worker_services, limit,
                    warn)


def diagnose(execute, database, table, since_ns, until_ns, worker_services, limit, warn):
    """Findings from diagnosis.sql run by EXECUTE(sql, params) -> rows (dicts) on
    DATABASE.TABLE: a ClickHouse server over HTTP, or chDB in this process."""
    rows = execute(DIAGNOSIS, {
        "database": database, "table": table,
        "since": timestamp(EARLIEST_NS if since_ns is None else since_ns),
        "until": timestamp(LATEST_NS if until_ns is None else until_ns),
        "worker_services": _array(worker_services),
        "limit": str(int(limit)),
    })
    found = _findings(rows[0])
    for name, total in found.totals.items():
        listed = len(found.findings.diagnosis[name])
        if total > listed:
            warn(f"{name.replace('_', ' ')}: the first {listed} of {total} (--limit)")
    return found.findings


class _Found(NamedTuple):
    findings: Findings
    totals: dict  # {list: its length before --limit}


def _findings(row):
    """Findings from diagnosis.sql's one row (see the SELECT at its end for the fields)."""
    spans, traces, newest_end_ns = row["totals"]
    diagnosis = {
        "spans": spans,
        "traces": traces,
        "consumer_spans": row["consumer_spans"],
        "connected": row["connected"],
        "orphans": [_orphan(*fields) for fields in row["orphans"]],
        "eager_roots": [_eager_root(*fields) for fields in row["eager_roots"]],
        "never_consumed": [
            {"trace_id": trace_id, "span_id": span_id, "task": task or None,
             "message_id": message_id or None}
            for _, span_id, trace_id, task, message_id in row["never_consumed"]
        ],
        "causes": {cause: row["causes"].get(cause, 0) for cause in CAUSES},
    }
    return _Found(Findings(
        diagnosis, row["celery_spans"], row["linked"], frozenset(row["consumed_tasks"]),
        newest_end_ns if spans else None,
        row["last_unconsumed_ns"] if row["never_consumed_count"] else None,
    ), {"orphans": sum(row["causes"].values()), "eager_roots": row["eager_root_count"],
        "never_consumed": row["never_consumed_count"]})


def _orphan(start_ns, span_id, trace_id, name, service, task, message_id, cause, candidates,
            decided_by, parent_id, parent_task_id, producer, matched_by):
    return {
        "trace_id": trace_id, "span_id": span_id, "name": name, "service": service,
        "task": task or None, "message_id": message_id or None, "cause": cause,
        "candidates": candidates, "decided_by": decided_by or None,
        "detail": _detail(service, task, message_id, trace_id, parent_id, parent_task_id,
                          producer, matched_by),
    }


def _detail(service, task, message_id, trace_id, parent_id, parent_task_id, producer,
            matched_by):
    """The evidence the query sent back, in a sentence."""
    if not task:
        return (f"a root span of worker service {service} that is not a Celery span: the "
                "task ran with no consumer span to continue its producer's context")
    if parent_id:
        return f"its parent span {parent_id} never arrived"
    message = f"message {message_id}" if message_id else "its message (no id)"
    producer_span_id, producer_trace_id, producer_service = producer
    if producer_span_id:
        return (f"producer span {producer_span_id} ({producer_service}, trace "
                f"{producer_trace_id}) published {message}, matched by {matched_by}; this "
                f"consumer span started trace {trace_id} instead of continuing it")
    if parent_task_id:
        return (f"no producer span for {message}; it was published from inside task "
                f"{parent_task_id}")
    return f"no producer span for {message} and no parent task recorded"


def _eager_root(start_ns, span_id, trace_id, name, service, task, verdict, caller):
    caller_span_id, caller_trace_id, caller_name = caller
    return {"trace_id": trace_id, "span_id": span_id, "name": name, "service": service,
            "task": task or None, "verdict": verdict,
            "caller": {"trace_id": caller_trace_id, "span_id": caller_span_id,
                       "name": caller_name} if caller_span_id else None}


def timestamp(ns):
    """NS (nanoseconds since the epoch) as DateTime64(9, 'UTC') reads text, in UTC: no
    time zone of the server's gets in the way."""
    seconds, fraction = divmod(ns, 10**9)
    when = datetime.fromtimestamp(seconds, timezone.utc)
    return f"{when:%Y-%m-%d %H:%M:%S}.{fraction:09d}"


def _array(strings):
    # A query parameter of type Array(String), in ClickHouse's text format.
    return "[" + ",".join("'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
                          for s in strings) + "]"


def _parse(url):
    """(server URL, database, table, (user, password)) from a clickhouse(s):// URL."""
    parts = urllib.parse.urlsplit(url)
    scheme, default_port = SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise SourceError(f"bad URL {url}: the port is not a number") from None
    if not parts.hostname:
        raise SourceError(f"bad URL {url}: no host")
    query = dict(urllib.parse.parse_qsl(parts.query))
    unknown = set(query) - {"table"}
    if unknown:
        raise SourceError(f"bad URL {url}: only table= is read, not {', '.join(sorted(unknown))}")
    database = urllib.parse.unquote(parts.path.strip("/")) or DEFAULT_DATABASE
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    user = urllib.parse.unquote(parts.username) if parts.username else \
        os.environ.get("CLICKHOUSE_USER", "default")
    password = urllib.parse.unquote(parts.password) if parts.password is not None else \
        os.environ.get("CLICKHOUSE_PASSWORD", "")
    return (f"{scheme}://{host}:{port}/", database, query.get("table", DEFAULT_TABLE),
            (user, password))


def _post(server, login, sql, params, timeout):
    """Rows of SQL run with PARAMS by the server's HTTP interface, or SourceError."""
    query = {f"param_{name}": value for name, value in params.items()}
    query.update(default_format="JSONEachRow", max_execution_time=str(max(1, int(timeout))),
                 output_format_json_quote_64bit_integers="0")  # numbers, not strings
    url = server + "?" + urllib.parse.urlencode(query)
    where = f"ClickHouse at {server.rstrip('/')}"
    request = urllib.request.Request(url, data=sql.encode(), method="POST", headers={
        # Headers, not the URL, so that the password shows in no log of the URL.
        "X-ClickHouse-User": login[0], "X-ClickHouse-Key": login[1],
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        raise SourceError(f"{where}: {one_line(error.read(2000))}") from None
    except (TimeoutError, urllib.error.URLError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            raise SourceError(f"{where} did not answer within {timeout:g} s") from None
        raise SourceError(f"{where} unreachable: {reason}") from None
    except (OSError, ValueError) as error:  # a reset connection
        raise SourceError(f"{where} unreachable: {error}") from None
    try:
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    except ValueError:
        # An exception that struck after the first rows went out comes in the body.
        raise SourceError(f"{where}: {one_line(body)}") from None


def one_line(message):
    """ClickHouse's error MESSAGE (text or bytes) on one line: 'Code: 60. DB::Exception:
    ...'."""
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    start = text.find("Code: ")
    return " ".join((text[start:] if start >= 0 else text).split())[:400] or "no answer"
