"""Name the cause of every orphaned Celery span in your traces, and the fix.

    python doctor.py SOURCE [SOURCE...] [--json] [--worker-service NAME ...]
    python doctor.py SOURCE --since 15m [--max-orphan-ratio 0.001]    # from cron or CI

SOURCE is the trace sink's SQLite file, an OTLP JSON file (the Collector's file exporter
writes JSON lines; gzip and zstd too, read with chDB), or the URL of a backend's query API:
Jaeger 2's /api/v3/traces (with --service) or Grafana Tempo's /api/traces/<trace id> or
/api/search; or ClickHouse's HTTP interface, clickhouse://HOST:8123/DATABASE?table=otel_traces
(clickhouses:// for HTTPS), where the join runs as SQL (tracetools/clickhouse.py).
--since and --until keep the spans that started in that window; the window ends --settle
before now unless --until says otherwise, since spans arrive late. Without them, every span
of a file, and the last hour of Jaeger, Tempo and ClickHouse (or --lookback).
Tempo is searched for the traces the verdicts need, not read whole: its orphans, eager runs
and unconsumed messages are the window's, but its totals (spans, traces, consumer spans,
connected) count only the traces it fetched.
Exit status: 0 nothing orphaned or unconsumed (or no more than --max-orphan-ratio of the
consumer spans), 1 something is, 2 bad input or a source that cannot be read.
The work is done in tracetools/doctor.py, which your tests can call too.
"""

import argparse
import json
import sys
import time
import urllib.parse
from datetime import datetime, timezone

from tracetools import engines, sources
from tracetools.doctor import NOT_CONTINUED, examine, failed, report

DEFAULT_SETTLE = "60s"


class BadInput(ValueError):
    """An option the doctor cannot use; its message is the one line the user sees."""


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--worker-service", action="append", default=[], metavar="NAME",
        help="a worker's service name: its root spans that are not Celery spans count as "
             "orphaned too (a worker that records no consumer span)",
    )
    parser.add_argument(
        "--service", action="append", default=[], metavar="NAME",
        help="Jaeger: a service to query; give every service that publishes or runs tasks, "
             "or a producer whose consumer was orphaned is not found",
    )
    parser.add_argument("--since", metavar="WHEN",
                        help="only spans that started then or later: a duration ago (90s, 15m, "
                             "2h, 1d) or an RFC 3339 time (2026-12-03T16:00:00Z)")
    parser.add_argument("--until", metavar="WHEN",
                        help="only spans that started before then, as --since (default: now "
                             "less --settle, when --since is given)")
    parser.add_argument("--settle", default=DEFAULT_SETTLE, metavar="DURATION",
                        help="how long spans take to arrive: the window ends that long before "
                             "now (%(default)s)")
    parser.add_argument("--max-orphan-ratio", metavar="R",
                        help="exit 1 only when orphans, eager runs that did not continue their "
                             "caller and unconsumed messages are more than R of the consumer "
                             "spans (default 0: any). With it or --since, a one-line summary "
                             "comes first (on stderr with --json)")
    parser.add_argument("--lookback", metavar="DURATION",
                        help="without --since: only spans that started this long ago or since, "
                             "e.g. 15m, 2h, up to now (Jaeger and Tempo: 1h unless told)")
    parser.add_argument("--limit", type=int, default=sources.DEFAULT_LIMIT,
                        help="Jaeger and Tempo searches: at most this many traces; ClickHouse "
                             "and chDB: at most this many orphans, eager roots and unconsumed "
                             "messages listed, all counted (%(default)s)")
    parser.add_argument("--timeout", type=float, default=sources.DEFAULT_TIMEOUT,
                        help="seconds to wait for each answer of a backend (%(default)s)")
    parser.add_argument("--engine", choices=engines.ENGINES, default="auto",
                        help="what reads an OTLP JSON file: chdb (big or compressed files), "
                             "python, or auto: chdb for compressed files and for files of "
                             "64 MiB or more when chdb is installed (%(default)s)")
    args = parser.parse_args(argv)

    def warn(message):
        print(f"doctor: {message}", file=sys.stderr)

    now = time.time()
    try:
        since, until = window(args.since, args.until, args.settle, now)
        if since is None and args.lookback is not None:
            since = now - seconds(args.lookback, "--lookback")
        max_ratio = ratio(args.max_orphan_ratio)
        if engines.in_store(args.sources, args.engine):
            source = args.sources[0]  # a ClickHouse table, or a file for chDB: the join in SQL
            if since is None and engines.is_server(source):
                since = now - sources.DEFAULT_LOOKBACK
            findings = engines.findings(
                source, sources.nanoseconds(since), sources.nanoseconds(until),
                args.worker_service, args.limit, args.timeout, warn,
            )
        else:
            spans = sources.load(args.sources, services=args.service,
                                 worker_services=args.worker_service, since=since, until=until,
                                 limit=args.limit, timeout=args.timeout, warn=warn)
            findings = examine(spans, args.worker_service)
    except (BadInput, sources.SourceError) as error:
        warn(str(error))
        return 2
    diagnosis = findings.diagnosis
    if not diagnosis["spans"]:
        named = ", ".join(map(_without_login, args.sources))
        warn(f"no spans in {named}{_between(since, until, ' that started')}: "
             "nothing to diagnose")
        return 2
    verdict = 1 if _ratio(diagnosis) > (max_ratio or 0) else 0
    if args.since is not None or max_ratio is not None:
        # First, and on one line: what a cron job's mail or a CI step's log shows.
        line = summary(diagnosis, max_ratio or 0, since, until)
        print(line, file=sys.stderr if args.json else sys.stdout)
    print(json.dumps(diagnosis) if args.json else report(findings))
    return verdict


def window(since, until, settle, now):
    """(since, until) in unix seconds from the options, or (None, None) for all spans."""
    since = None if since is None else when(since, "--since", now)
    until = None if until is None else when(until, "--until", now)
    settle = seconds(settle, "--settle")
    if since is not None and until is None:
        until = now - settle  # spans arrive late: the newest are not all in yet
    if since is not None and until is not None and since >= until:
        raise BadInput(f"--since {_rfc3339(since)} is not before --until {_rfc3339(until)}: "
                       "the window holds nothing")
    return since, until


def when(text, option, now):
    """A point in time in unix seconds: a DURATION ago, or an RFC 3339 time."""
    if sources.DURATION.fullmatch(text.strip()):
        return now - seconds(text, option)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadInput(f"bad {option} {text!r}: say a duration ago (90s, 15m, 2h, 1d) or an "
                       "RFC 3339 time with its offset (2026-12-03T16:00:00Z)")
    return moment.timestamp()


def seconds(text, option):
    try:
        return sources.duration(text)
    except sources.SourceError:
        raise BadInput(f"bad {option} {text!r}: say e.g. 90s, 15m, 2h or 1d") from None


def ratio(text):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value >= 0:  # NaN too
        raise BadInput(f"bad --max-orphan-ratio {text!r}: say a share of the consumer spans, "
                       "e.g. 0.001 for one in a thousand")
    return value


def _ratio(diagnosis):
    return failed(diagnosis) / max(diagnosis["consumer_spans"], 1)


def summary(diagnosis, max_ratio, since, until):
    """One line: what failed, against how many consumer spans, and whether that is OK."""
    # Counted by cause: a store lists only the first --limit orphans, but counts them all.
    orphaned = sum(diagnosis["causes"].values())
    parts = [f"{orphaned:,} of {diagnosis['consumer_spans']:,} Celery consumer spans orphaned"]
    not_continued = sum(r["verdict"] == NOT_CONTINUED for r in diagnosis["eager_roots"])
    if not_continued:
        parts.append(f"{not_continued:,} eager run{'s' * (not_continued > 1)} not continued")
    if diagnosis["never_consumed"]:
        never = len(diagnosis["never_consumed"])
        parts.append(f"{never:,} message{'s' * (never > 1)} never consumed")
    share = _ratio(diagnosis)
    verdict = "FAIL" if share > max_ratio else "OK"
    return (f"doctor: {', '.join(parts)}: {_percent(share)} failed, max "
            f"{_percent(max_ratio)}: {verdict}{_between(since, until, '; spans')}")


def _percent(share):
    return f"{share * 100:.3g}%"


def _between(since, until, prefix):
    """The window, as the one-line messages say it; "" for all spans."""
    if since is None:
        return "" if until is None else f"{prefix} before {_rfc3339(until)}"
    return f"{prefix} from {_rfc3339(since)} to {'now' if until is None else _rfc3339(until)}"


def _rfc3339(unix_seconds):
    moment = datetime.fromtimestamp(unix_seconds, timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _without_login(source):
    """SOURCE as it may be printed: a URL's user and password are for the server alone."""
    parts = urllib.parse.urlsplit(str(source))
    if parts.password is None and parts.username is None:
        return str(source)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


if __name__ == "__main__":
    sys.exit(main())
