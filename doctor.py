"""Name the cause of every orphaned Celery span in your traces, and the fix.

    python doctor.py SOURCE [SOURCE...] [--json] [--worker-service NAME ...]

SOURCE is the trace sink's SQLite file, an OTLP JSON file (the Collector's file exporter
writes JSON lines; gzip and zstd too, read with chDB), or the URL of a backend's query API:
Jaeger 2's /api/v3/traces (with --service and --lookback), Grafana Tempo's
/api/traces/<trace id> or /api/search, or ClickHouse's HTTP interface,
clickhouse://HOST:8123/DATABASE?table=otel_traces (clickhouses:// for HTTPS), where the join
runs as SQL (tracetools/clickhouse.py).
Exit status: 0 nothing orphaned or unconsumed, 1 something is, 2 a source cannot be read.
The work is done in tracetools/doctor.py, which your tests can call too.
"""

import argparse
import itertools
import json
import sys

from tracetools import engines, sources
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
    parser.add_argument("--lookback", default=sources.DEFAULT_LOOKBACK,
                        help="Jaeger and Tempo searches: how far back, e.g. 15m, 2h (%(default)s)")
    parser.add_argument("--limit", type=int, default=sources.DEFAULT_LIMIT,
                        help="Jaeger and Tempo searches: at most this many traces (%(default)s)")
    parser.add_argument("--timeout", type=float, default=sources.DEFAULT_TIMEOUT,
                        help="seconds to wait for each answer of a backend (%(default)s)")
    parser.add_argument("--engine", choices=engines.ENGINES, default="auto",
                        help="what reads an OTLP JSON file: chdb (big or compressed files), "
                             "python, or auto: chdb for compressed files and for files of "
                             "64 MiB or more when chdb is installed (%(default)s)")
    args = parser.parse_args(argv)

    def warn(message):
        print(f"doctor: {message}", file=sys.stderr)

    try:
        if engines.in_store(args.sources, args.engine):
            findings = engines.findings(args.sources[0], None, None, args.worker_service,
                                        args.limit, args.timeout, warn)
        else:
            spans = itertools.chain.from_iterable(
                sources.load(source, args.service, args.lookback, args.limit, args.timeout,
                             warn)
                for source in args.sources
            )
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
