"""The orders table, in SQLite: the web app creates orders, the worker updates them."""

import os
import sqlite3
import tempfile

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    status TEXT NOT NULL
)
"""


def database_path():
    return os.environ.get("ORDERS_DB") or os.path.join(tempfile.gettempdir(), "orders.db")


# The files this process has set up already: see connect().
_prepared = set()


def connect(path=None):
    path = path or database_path()
    # The web app and the workers are separate processes writing one file: wait for the
    # other's lock rather than failing with "database is locked".
    connection = sqlite3.connect(path, timeout=10)
    connection.row_factory = sqlite3.Row
    if path not in _prepared:
        _prepare(connection)
        _prepared.add(path)
    return connection


def _prepare(connection):
    """Set a database file up, once per process rather than on every connect: a read (GET
    /orders/<id>) then runs no statement but its own."""
    # Write-ahead logging: readers never block the writer nor wait for it, and a commit
    # appends to the log instead of rewriting pages. The setting stays with the file. It
    # needs every process on one machine (shared memory): no network file system.
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(SCHEMA)


def create_order(connection, item, quantity):
    with connection:
        cursor = connection.execute(
            "INSERT INTO orders (item, quantity, status) VALUES (?, ?, 'queued')",
            (item, quantity),
        )
    return cursor.lastrowid


def delete_order(connection, order_id):
    with connection:
        connection.execute("DELETE FROM orders WHERE id = ?", (order_id,))


def get_order(connection, order_id):
    row = connection.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    return dict(row) if row else None


def advance(connection, order_id, current, new):
    """Move an order from status CURRENT to NEW; False if it was not in CURRENT.

    A task can run twice (messages are acknowledged after the task, and a worker lost
    mid-task hands its message to another): each step happens once all the same.
    """
    with connection:
        cursor = connection.execute(
            "UPDATE orders SET status = ? WHERE id = ? AND status = ?", (new, order_id, current)
        )
    return cursor.rowcount == 1
