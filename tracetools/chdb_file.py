"""Big OTLP JSON files, read by ClickHouse's own engine in this process (chDB), not by a
Python loop: the Collector's file exporter's JSON lines, plain, gzip or zstd.

The file goes once through tracetools/sql/otlp_json_lines.sql into a table of the ClickHouse
exporter's shape, in a scratch directory; then tracetools/sql/diagnosis.sql, the same query
that runs on a ClickHouse server, judges it. chDB is an extra (pip install
"celery-trace-doctor[files]"): the tutorial's own install stays light.
"""

import atexit
import itertools
import json
import shutil
import tempfile
from pathlib import Path

from tracetools import clickhouse
from tracetools.sources import SourceError

# The first bytes of each compressed format that chDB reads here.
MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
FILE_TO_TABLE = (clickhouse.SQL / "otlp_json_lines.sql").read_text()
# The exporter's columns that diagnosis.sql reads, under its names and types.
TABLE = """
CREATE TABLE otel.otel_traces (
    Timestamp DateTime64(9),
    TraceId String,
    SpanId String,
    ParentSpanId String,
    SpanName LowCardinality(String),
    SpanKind LowCardinality(String),
    ServiceName LowCardinality(String),
    SpanAttributes Map(LowCardinality(String), String),
    Duration UInt64,
    StatusCode LowCardinality(String),
    `Links.SpanId` Array(String)
) ENGINE = MergeTree ORDER BY tuple()
"""
# Read the file in small pieces and keep no more of it in memory than they: pread, not mmap
# (a mapped file's pages count in the process's RSS), and a JSON object (a batch of hundreds
# of spans) is a row, so 64 of them to a block. The table is written in parts of 131072 rows,
# not the default million: an insert holds a whole part's rows (attribute maps and all) before
# it writes them, half a gigabyte at the default. A batch cut short (a collector that stopped
# mid-write) is left out, as the Python reader leaves it out, though unannounced here; a
# compressed stream that is cut short or corrupt is an error.
STREAMING = ("storage_file_read_method = 'pread', max_block_size = 64, "
             "min_chunk_bytes_for_parallel_parsing = 1048576, "
             "max_insert_block_size = 131072, min_insert_block_size_rows = 131072, "
             "min_insert_block_size_bytes = 67108864, "
             "input_format_allow_errors_num = 1000")
# diagnosis.sql counts spans and traces, and finds the few ids that are missing, with GROUP
# BY: past this many bytes a grouping goes to disk in pieces instead of holding ten million
# ids (less spills too often: 10M spans took 71 s at 100 MB, 56 s at 300 MB, in 750 MB).
SPILL = "SET max_bytes_before_external_group_by = 300000000"
COLUMNS = ("Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, "
           "SpanAttributes, Duration, StatusCode, `Links.SpanId`")


def available():
    """Is chDB installed?"""
    try:
        import chdb  # noqa: F401
    except ImportError:
        return False
    return True


def compression(path):
    """"gzip", "zstd" or "none", from the file's first bytes (not its name)."""
    with open(path, "rb") as file:
        start = file.read(4)
    return next((name for magic, name in MAGIC.items() if start.startswith(magic)), "none")


def diagnose_file(path, since_ns=None, until_ns=None, worker_services=(), limit=1000,
                  warn=print):
    """tracetools.doctor.Findings for the OTLP JSON file at PATH, as diagnose_url() gives
    them for a table: the spans that started in [SINCE_NS, UNTIL_NS), at most LIMIT of each
    list. SourceError when the file cannot be read: missing, corrupt, cut short."""
    if not available():
        raise SourceError(f"{path}: reading OTLP files with chDB needs it installed: "
                          'pip install "celery-trace-doctor[files]" (or chdb)')
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    store = _store()
    # A database of its own for each file: a process may read several, one after another.
    database = f"file_{next(_files)}"

    def execute(sql, params):
        result = store.query(sql, "JSONEachRow", params=params)
        return [json.loads(line) for line in result.bytes().splitlines() if line.strip()]

    try:
        store.query(f"CREATE DATABASE {database}")
        store.query(TABLE.replace("otel.otel_traces", f"{database}.otel_traces"))
        store.query(
            f"INSERT INTO {database}.otel_traces SELECT {COLUMNS} FROM ({FILE_TO_TABLE}) "
            f"SETTINGS {STREAMING}",
            params={"path": str(path.resolve()), "compression": compression(path)})
        return clickhouse.diagnose(execute, database, "otel_traces", since_ns, until_ns,
                                   worker_services, limit, warn)
    except RuntimeError as error:  # chdb's ChdbError: ClickHouse's own message
        raise SourceError(f"{path}: {clickhouse.one_line(str(error))}") from None
    finally:
        store.query(f"DROP DATABASE IF EXISTS {database} SYNC")


_files = itertools.count()
_session = None


def _store():
    """The process's chDB session, its data in a scratch folder removed at exit. chDB runs
    one engine per process, in one folder: every file read here shares it."""
    global _session
    if _session is None:
        from chdb import session

        scratch = tempfile.mkdtemp(prefix="doctor-chdb-")
        _session = session.Session(scratch)
        _session.query(SPILL)
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        atexit.register(_session.close)
    return _session
