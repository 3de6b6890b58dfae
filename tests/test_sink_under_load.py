"""The trace sink under concurrent load: many exporters posting at once while readers load
every span in a loop never see "database is locked", and every span is stored once.

What makes it so: write-ahead logging, where readers and the writer never wait for each
other, and readers that never write. The first two tests hold each side's lock open and show
the other side carry on; the last hammers the sink with both at once.
"""

import multiprocessing
import sqlite3
import threading
import urllib.request
import uuid
from contextlib import closing

import pytest

from tests.support import sink_hammer
from tracetools.sink import TraceSink
from tracetools.sources import load

WRITERS, EXPORTS, SPANS = 8, 20, 20
READERS = 4
DEADLINE = 240.0
ROW = "the trace sink under concurrent load"


@pytest.fixture
def sink(tmp_path):
    with TraceSink(str(tmp_path / "spans.db")) as running:
        yield running


def post(sink, run, spans=5):
    request = urllib.request.Request(
        sink.endpoint + "/v1/traces", data=sink_hammer.export_request(run, 0, 0, spans),
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return reply.status


def stored(sink, run):
    """The names of RUN's rows, straight from SQLite: the loader would hide a row stored twice,
    since it gives each span id once."""
    with closing(sqlite3.connect(sink.db_path)) as db:
        return [name for name, in db.execute(
            "SELECT name FROM spans WHERE json_extract(resource, ?) = ?",
            (f'$."{sink_hammer.RUN_ATTRIBUTE}"', run),
        )]


def test_a_reader_in_the_middle_of_a_read_holds_up_no_export(sink):
    run = uuid.uuid4().hex
    post(sink, run)
    reader = sqlite3.connect(f"file:{sink.db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        # A read transaction that has started and not finished: a slow load().
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM spans").fetchone() == (5,)
        assert post(sink, run) == 200  # with a rollback journal, it would wait for the reader
        # The reader still sees the snapshot it started with; a new read sees both exports.
        assert reader.execute("SELECT count(*) FROM spans").fetchone() == (5,)
        assert len(stored(sink, run)) == 10
    finally:
        reader.close()


def test_the_writer_holding_its_lock_holds_up_no_reader(sink):
    run = uuid.uuid4().hex
    post(sink, run)
    writer = sqlite3.connect(sink.db_path, isolation_level=None)
    try:
        # The strongest lock a writer takes, held open: readers read the last commit.
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("DELETE FROM spans")
        loaded = []
        reading = threading.Thread(target=lambda: loaded.append(len(list(
            load(sink.db_path, resource={sink_hammer.RUN_ATTRIBUTE: run})))))
        reading.start()
        reading.join(60)
        assert loaded == [5]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_concurrent_exporters_and_readers_never_see_a_locked_database(tmp_path, figures):
    run, expected = uuid.uuid4().hex, WRITERS * EXPORTS * SPANS
    # Processes of their own, as exporters and readers are: each its own SQLite connections.
    # spawn: the sink's server threads run in this process, and a fork would copy them.
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with TraceSink(str(tmp_path / "spans.db")) as sink:
        processes = [
            context.Process(target=sink_hammer.write,
                            args=(sink.endpoint, run, writer, EXPORTS, SPANS, results))
            for writer in range(WRITERS)
        ] + [
            context.Process(target=sink_hammer.read,
                            args=(sink.db_path, run, expected, DEADLINE, reader, results))
            for reader in range(READERS)
        ]
        for process in processes:
            process.start()
        reports = [results.get(timeout=DEADLINE + 60) for _ in processes]
        for process in processes:
            process.join(60)
        names = stored(sink, run)
    failures = [failure for _, _, found, _ in reports for failure in found]
    assert failures == []
    loads = sum(count for role, _, _, count in reports if role == "reader")
    assert all(count > 0 for role, _, _, count in reports if role == "reader")
    assert len(names) == len(set(names)) == expected
    figures[ROW] = (
        f"{WRITERS} exporters posting {WRITERS * EXPORTS} batches ({expected} spans) while "
        f"{READERS} readers load every span in a loop: 0 \"database is locked\", "
        f"{expected} of {expected} spans stored once"
    )
    print(f"sink hammer: {loads} loads by {READERS} readers")
