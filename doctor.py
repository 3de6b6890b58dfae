"""Name the cause of every orphaned Celery span in your traces, and the fix.

    python doctor.py SOURCE [SOURCE...] [--json] [--worker-service NAME ...]

SOURCE is the trace sink's SQLite file, an OTLP JSON file (the Collector's file exporter
writes JSON lines), or the URL of a backend's query API: Jaeger 2's /api/v3/traces (with
--service and --lookback) or Grafana Tempo's /api/traces/<trace id> or /api/search.
Exit status: 0 nothing orphaned or unconsumed, 1 something is, 2 a source cannot be read.
The work is done in tracetools/doctor.py, which your tests can call too.
"""

import argparse
import json
import sys
import time

from tracetools import sources
from tracetools.doctor import examine, report


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
    parser.add_argument(
        "--lookback",
        help="only spans that started this long ago or since, e.g. 15m, 2h, from any source "
             "(Jaeger and Tempo look 1h back unless told)",
    )
    parser.add_argument("--limit", type=int, default=sources.DEFAULT_LIMIT,
                        help="Jaeger and Tempo searches: at most this many traces (%(default)s)")
    parser.add_argument("--timeout", type=float, default=sources.DEFAULT_TIMEOUT,
                        help="seconds to wait for each answer of a backend (%(default)s)")
    args = parser.parse_args(argv)

    def warn(message):
        print(f"doctor: {message}", file=sys.stderr)

    try:
        since = time.time() - sources.duration(args.lookback) if args.lookback else None
        spans = sources.load(args.sources, services=args.service, since=since,
                             limit=args.limit, timeout=args.timeout, warn=warn)
        findings = examine(spans, args.worker_service)
    except sources.SourceError as error:
        warn(str(error))
        return 2
    diagnosis = findings.diagnosis
    if not diagnosis["spans"]:
        warn(f"no spans in {', '.join(args.sources)}: nothing to diagnose")
        return 2
    print(json.dumps(diagnosis) if args.json else report(findings))
    return 1 if diagnosis["orphans"] or diagnosis["never_consumed"] else 0


if __name__ == "__main__":
    sys.exit(main())
