"""Where the doctor's join runs: in Python over the spans of every source, or as SQL where
the spans are (a ClickHouse server) or in an engine made for big files (chDB).

  clickhouse://... clickhouses://...   SQL on the server: only the findings come back
  an OTLP JSON file, compressed        chDB (Python reads no gzip or zstd)
  an OTLP JSON file of BIG_FILE or more  chDB when it is installed, else Python
  anything else                        Python (tracetools.sources, tracetools.doctor)

--engine chdb or --engine python overrides the choice for OTLP files.
"""

from pathlib import Path

from tracetools import chdb_file, clickhouse
from tracetools.sources import SQLITE_MAGIC, SourceError

ENGINES = ("auto", "python", "chdb")
BIG_FILE = 64 * 2**20  # past this, chDB's one pass beats a Python loop many times over


def in_store(sources, engine="auto"):
    """Does the join for SOURCES run as SQL (True), or in Python over their spans (False)?"""
    stored = [source for source in sources if _sql(str(source), engine)]
    if stored and len(sources) > 1:
        raise SourceError(f"{stored[0]} is diagnosed where it is read, alone: give it as the "
                          "only SOURCE")
    return bool(stored)


def is_server(source):
    """Is SOURCE a store that runs the SQL itself (a ClickHouse URL)?"""
    return clickhouse.handles(source)


def findings(source, since_ns, until_ns, worker_services, limit, timeout, warn):
    """tracetools.doctor.Findings for SOURCE, judged by SQL (see in_store())."""
    if clickhouse.handles(source):
        return clickhouse.diagnose_url(source, since_ns, until_ns, worker_services, limit,
                                       timeout, warn)
    return chdb_file.diagnose_file(source, since_ns, until_ns, worker_services, limit, warn)


def _sql(source, engine):
    if clickhouse.handles(source):
        return True
    path = Path(source)
    if engine == "python" or "://" in source or not path.is_file():
        return False  # a backend's URL, or a path that the Python reader refuses
    with open(path, "rb") as file:
        start = file.read(len(SQLITE_MAGIC))
    if start == SQLITE_MAGIC:
        return False  # the trace sink's SQLite file
    if engine == "chdb" or chdb_file.compression(path) != "none":
        return True
    return chdb_file.available() and path.stat().st_size >= BIG_FILE
