"""The orders database's two sides under load, as processes of their own: the web app and
the workers writing orders (create, then three status steps), and readers (GET /orders/<id>)."""

import sqlite3
from contextlib import closing

import orders_db

STEPS = [("queued", "charged"), ("charged", "confirmed"), ("confirmed", "emailed")]


def write(path, orders, results):
    """Create ORDERS orders and take each through its steps, a connection per step as the
    app does; put the failures on the RESULTS queue."""
    failures = []
    for _ in range(orders):
        try:
            with closing(orders_db.connect(path)) as db:
                order_id = orders_db.create_order(db, "book", 1)
            for current, new in STEPS:
                with closing(orders_db.connect(path)) as db:
                    orders_db.get_order(db, order_id)
                    if not orders_db.advance(db, order_id, current, new):
                        failures.append(f"order {order_id} was not {current}")
        except sqlite3.Error as error:
            failures.append(f"{type(error).__name__}: {error}")
    results.put(("writer", failures))


def read(path, reads, results):
    """Read orders READS times, a connection per read as GET /orders/<id> does."""
    failures = []
    for number in range(reads):
        try:
            with closing(orders_db.connect(path)) as db:
                orders_db.get_order(db, number + 1)
        except sqlite3.Error as error:
            failures.append(f"{type(error).__name__}: {error}")
    results.put(("reader", failures))
