"""The orders database under concurrent load: web app and workers write while readers read,
and none sees "database is locked". Write-ahead logging keeps readers and writers apart, a
busy timeout queues the writers, and a read runs no statement but its own."""

import multiprocessing
import sqlite3
from contextlib import closing

import orders_db
from tests.support import orders_db_hammer

WRITERS, ORDERS = 4, 25
READERS, READS = 2, 200


def test_concurrent_writers_and_readers_never_see_a_locked_database(tmp_path):
    path = str(tmp_path / "orders.db")  # a new file: every process sets it up at once
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=orders_db_hammer.write, args=(path, ORDERS, results))
        for _ in range(WRITERS)
    ] + [
        context.Process(target=orders_db_hammer.read, args=(path, READS, results))
        for _ in range(READERS)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(60)
    assert [failure for _, failures in reports for failure in failures] == []
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert dict(db.execute("SELECT status, count(*) FROM orders GROUP BY status")) == {
            "emailed": WRITERS * ORDERS
        }


def test_a_read_runs_no_statement_but_its_own(tmp_path, monkeypatch):
    path = str(tmp_path / "orders.db")
    with closing(orders_db.connect(path)) as db:
        order_id = orders_db.create_order(db, "book", 1)
    statements = []
    connect = sqlite3.connect

    def traced_connect(*args, **kwargs):
        connection = connect(*args, **kwargs)
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr(orders_db.sqlite3, "connect", traced_connect)
    with closing(orders_db.connect(path)) as db:
        assert orders_db.get_order(db, order_id)["status"] == "queued"
    assert statements == ["SELECT * FROM orders WHERE id = ?".replace("?", str(order_id))]
