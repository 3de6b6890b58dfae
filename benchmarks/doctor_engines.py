"""The doctor at production size, where the join runs as SQL: an OTLP JSON lines file read
with chDB, and the ClickHouse exporter's own table (in chDB here) judged by the query that a
ClickHouse server runs. Prints figures; not a test.

    python -m benchmarks.doctor_engines [--spans 1000000] [--compress none,gzip]
        [--table] [--folder DIR]

Each order is four spans: POST /orders (orders-web), its publish (a PRODUCER with a message
id), the run (a CONSUMER in orders-worker, continuing it) and a step inside the run. One
order in a thousand is run in a trace of its own (not-extracted), one in two thousand is
never consumed. chDB writes the data itself: rows of the exporter's table from numbers(),
and from them the OTLP JSON lines, 100 orders to a line as an SDK's batch would send them.
Then each measured run is `python doctor.py SOURCE --json` in a process of its own (wall
time, peak RSS), and its findings are checked against what was planted.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORTER_TABLE = ROOT / "tests" / "support" / "clickhouse_tables" / "otel_traces.sql"
START_NS = 1_798_761_600 * 10**9  # 2027-01-01, UTC
ORDERS_PER_LINE = 100
ORDERS_PER_CHUNK = 100_000
ORPHAN_EVERY, UNCONSUMED_EVERY = 1000, 2000
COLUMNS = ("Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, "
           "SpanAttributes, Duration, StatusCode")

# Rows of the exporter's table for orders FIRST .. FIRST + COUNT - 1. Span k of order n: 0
# request, 1 publish, 2 run, 3 a step of the run. Ids are hashes of (n, k): reproducible.
ORDERS = """
SELECT
    fromUnixTimestamp64Nano(toInt64({start_ns} + n * 1000000 + k * 100000)) AS Timestamp,
    lower(hex(sipHash128(n, if(k >= 2 AND n % {orphan_every} = 7, 1, 0)))) AS TraceId,
    leftPad(lower(hex(sipHash64(n, k))), 16, '0') AS SpanId,
    multiIf(k = 0, '', k = 2 AND n % {orphan_every} = 7, '',
            leftPad(lower(hex(sipHash64(n, toUInt8(k - 1)))), 16, '0')) AS ParentSpanId,
    ['POST /orders', 'celery.apply tasks.process_order', 'celery.run tasks.process_order',
     'charge_payment'][k + 1] AS SpanName,
    ['Server', 'Producer', 'Consumer', 'Internal'][k + 1] AS SpanKind,
    ['orders-web', 'orders-web', 'orders-worker', 'orders-worker'][k + 1] AS ServiceName,
    multiIf(
        k = 0, map('http.route', '/orders', 'http.request.method', 'POST'),
        k = 1, map('messaging.system', 'celery', 'messaging.operation.type', 'send',
                   'messaging.message.id', concat('order-', toString(n)),
                   'celery.task.name', 'tasks.process_order'),
        k = 2, map('messaging.system', 'celery', 'messaging.operation.type', 'process',
                   'messaging.message.id', concat('order-', toString(n)),
                   'celery.task.name', 'tasks.process_order', 'celery.attempt', '1',
                   'celery.trace_context', 'valid'),
        map('payment.provider', 'stripe')) AS SpanAttributes,
    toUInt64(if(k = 0, 900000, 50000)) AS Duration,
    'Unset' AS StatusCode,
    n AS order_number
FROM (SELECT number AS n FROM numbers({first}, {count}))
ARRAY JOIN [0, 1, 2, 3] AS k
WHERE NOT (k >= 2 AND n % {unconsumed_every} = 3)
"""
# The same rows as OTLP JSON lines: per line, a batch of ORDERS_PER_LINE orders, one
# resourceSpans per service.
LINES = """
SELECT concat('{{"resourceSpans":[',
              arrayStringConcat(groupArray(resource_spans), ','), ']}}')
FROM (
    SELECT batch, ServiceName,
        concat('{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"',
               ServiceName, '"}}}}]}},"scopeSpans":[{{"scope":{{"name":"bench"}},"spans":[',
               arrayStringConcat(groupArray(span), ','), ']}}]}}') AS resource_spans
    FROM (
        SELECT intDiv(order_number, {per_line}) AS batch, ServiceName,
            concat('{{"traceId":"', TraceId, '","spanId":"', SpanId,
                   '","parentSpanId":"', ParentSpanId, '","name":"', SpanName,
                   '","kind":', toString(indexOf(['Internal', 'Server', 'Client', 'Producer',
                                                  'Consumer'], SpanKind)),
                   ',"startTimeUnixNano":"', toString(toUnixTimestamp64Nano(Timestamp)),
                   '","endTimeUnixNano":"',
                   toString(toUnixTimestamp64Nano(Timestamp) + Duration),
                   '","attributes":[',
                   arrayStringConcat(arrayMap((key, value) -> concat(
                       '{{"key":"', key, '","value":{{"stringValue":"', value, '"}}}}'),
                       mapKeys(SpanAttributes), mapValues(SpanAttributes)), ','),
                   '],"status":{{}}}}') AS span
        FROM ({orders})
    )
    GROUP BY batch, ServiceName
)
GROUP BY batch
ORDER BY batch
"""


def orders_sql(first, count):
    return ORDERS.format(start_ns=START_NS, first=first, count=count,
                         orphan_every=ORPHAN_EVERY, unconsumed_every=UNCONSUMED_EVERY)


def planted(orders):
    """What the doctor must find among ORDERS orders."""
    never = len(range(3, orders, UNCONSUMED_EVERY))
    orphans = sum(1 for n in range(7, orders, ORPHAN_EVERY) if n % UNCONSUMED_EVERY != 3)
    return {"spans": 4 * orders - 2 * never, "orphans": orphans, "never_consumed": never}


def write_file(path, orders, compression):
    """The OTLP JSON lines of ORDERS orders at PATH, written by chDB chunk by chunk (bounded
    memory), compressed as COMPRESSION says."""
    from chdb import session

    store = session.Session()
    path.unlink(missing_ok=True)
    for first in range(0, orders, ORDERS_PER_CHUNK):
        count = min(ORDERS_PER_CHUNK, orders - first)
        lines = LINES.format(per_line=ORDERS_PER_LINE, orders=orders_sql(first, count))
        store.query(f"INSERT INTO FUNCTION file('{path}', 'LineAsString', 'line String', "
                    f"'{compression}') {lines}")
    store.close()


def write_table(folder, orders):
    """A chDB data folder holding otel.otel_traces, the exporter's table, with ORDERS orders."""
    from chdb import session

    data = folder / f"table-{orders}"
    store = session.Session(str(data))
    store.query("CREATE DATABASE IF NOT EXISTS otel")
    store.query(EXPORTER_TABLE.read_text())
    store.query("TRUNCATE TABLE otel.otel_traces")
    for first in range(0, orders, ORDERS_PER_CHUNK * 10):
        count = min(ORDERS_PER_CHUNK * 10, orders - first)
        store.query(f"INSERT INTO otel.otel_traces ({COLUMNS}) SELECT {COLUMNS} FROM ("
                    + orders_sql(first, count) + ")")
    store.query("OPTIMIZE TABLE otel.otel_traces FINAL")
    store.close()
    return data


# Runs the doctor's query on a chDB data folder in a process of its own, as a server would.
TABLE_RUN = """
import json, sys, time
from chdb import session
from tracetools import clickhouse
store = session.Session(sys.argv[1])
def execute(sql, params):
    out = store.query(sql, "JSONEachRow", params=params).bytes()
    return [json.loads(line) for line in out.splitlines() if line.strip()]
started = time.perf_counter()
found = clickhouse.diagnose(execute, "otel", "otel_traces", None, None, (), 10**6, print)
print(json.dumps({"seconds": time.perf_counter() - started, **found.diagnosis}))
"""


# Runs a command and reports its peak RSS. Measured from this small process, not from the
# benchmark's: a child forked from a process that holds gigabytes (chDB, having written the
# data) counts them in its own peak until it execs.
PEAK_OF = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(done.returncode)
"""


def measure(argv, label):
    """Run ARGV in a process of its own: its wall time, peak RSS and --json output."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_OF, *argv], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        sys.exit(f"{label} failed ({done.returncode}): {done.stderr[-2000:]}")
    diagnosis = json.loads(done.stdout.splitlines()[-1])
    return {"run": label, "wall_s": round(seconds, 2),
            "peak_rss_mb": round(int(done.stderr.splitlines()[-1]) / 1024),
            "spans": diagnosis["spans"], "orphans": diagnosis["causes"],
            "never_consumed": len(diagnosis["never_consumed"]), "query_s":
            round(diagnosis["seconds"], 2) if "seconds" in diagnosis else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--compress", default="none",
                        help="comma separated: none, gzip, zstd (%(default)s)")
    parser.add_argument("--table", action="store_true",
                        help="also the exporter's table in chDB, judged by the doctor's SQL")
    parser.add_argument("--folder", type=Path, help="keep the data here (default: temporary)")
    args = parser.parse_args(argv)
    orders = max(1, args.spans // 4)
    expect = planted(orders)
    with tempfile.TemporaryDirectory(prefix="doctor-engines-") as scratch:
        folder = args.folder or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()[0]
        results = []
        for compression in args.compress.split(","):
            suffix = {"none": "", "gzip": ".gz", "zstd": ".zst"}[compression]
            path = folder / f"spans-{expect['spans']}.jsonl{suffix}"
            started = time.perf_counter()
            write_file(path, orders, compression)
            written = time.perf_counter() - started
            result = measure([sys.executable, "doctor.py", str(path), "--json", "--engine",
                              "chdb", "--limit", str(10**6)],
                             f"OTLP JSON lines, {compression}, chDB")
            results.append({**result, "file_mb": round(path.stat().st_size / 2**20),
                            "written_s": round(written, 1)})
            path.unlink()
        if args.table:
            data = write_table(folder, orders)
            results.append(measure([sys.executable, "-c", TABLE_RUN, str(data)],
                                   "exporter's table (Map schema), chDB"))
        for result in results:
            problems = [f"{what}: {result[what]} found, {expect[what]} planted"
                        for what in ("spans", "never_consumed") if result[what] != expect[what]]
            found = sum(result["orphans"].values())
            if found != expect["orphans"]:
                problems.append(f"orphans: {found} found, {expect['orphans']} planted")
            result["as_planted"] = not problems
            if problems:
                print(f"doctor_engines: {result['run']}: {'; '.join(problems)}", file=sys.stderr)
        print(json.dumps({"spans": expect["spans"], "cpus": os.cpu_count(),
                          "load_average_at_start": round(load, 1), "results": results},
                         indent=2))
        return 0 if all(result["as_planted"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
