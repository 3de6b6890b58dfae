"""The orders table on a real SQLite file: each status step happens once."""

import orders_db


def test_a_step_happens_once_even_when_a_task_runs_twice(tmp_path):
    db = orders_db.connect(str(tmp_path / "orders.db"))
    order_id = orders_db.create_order(db, "book", 1)
    assert orders_db.advance(db, order_id, "queued", "charged")
    assert not orders_db.advance(db, order_id, "queued", "charged")
    assert orders_db.get_order(db, order_id)["status"] == "charged"


def test_a_deleted_order_is_gone(tmp_path):
    db = orders_db.connect(str(tmp_path / "orders.db"))
    order_id = orders_db.create_order(db, "book", 1)
    orders_db.delete_order(db, order_id)
    assert orders_db.get_order(db, order_id) is None
