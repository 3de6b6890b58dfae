"""The web API: bad input gets a clear JSON error, a dead broker a 503 and no stray order."""

import pytest

import orders_db
from harness.deployment import Deployment
from tests.support.traces import PUBLISH, REQUEST, one


@pytest.fixture
def client(tmp_path):
    from app import create_app

    return create_app({"ORDERS_DB": str(tmp_path / "orders.db")}).test_client()


@pytest.mark.parametrize(
    "body, problem",
    [
        ("not json", "the body must be a JSON object"),
        ("[1, 2]", "the body must be a JSON object"),
        ('{"quantity": 1}', "item must be a non-empty string of at most 200 characters"),
        ('{"item": "  ", "quantity": 1}', "item must be a non-empty string"),
        ('{"item": "' + "x" * 201 + '", "quantity": 1}', "item must be a non-empty string"),
        ('{"item": "book"}', "quantity must be an integer"),
        ('{"item": "book", "quantity": "2"}', "quantity must be an integer"),
        ('{"item": "book", "quantity": true}', "quantity must be an integer"),
        ('{"item": "book", "quantity": 1.5}', "quantity must be an integer"),
        ('{"item": "book", "quantity": 0}', "quantity must be between 1 and 1000"),
        ('{"item": "book", "quantity": 1001}', "quantity must be between 1 and 1000"),
    ],
)
def test_bad_orders_get_400_with_a_json_error(client, body, problem):
    response = client.post("/orders", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(problem)


def test_unknown_order_and_wrong_method_get_json_errors(client):
    missing = client.get("/orders/42")
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "order 42 not found"}
    wrong = client.delete("/orders/42")
    assert wrong.status_code == 405
    assert "error" in wrong.get_json()


@pytest.mark.parametrize(
    "broker_url", ["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1//"]
)
def test_a_dead_broker_gets_503_and_leaves_no_order(sink, tmp_path, figures, broker_url):
    deployment = Deployment(sink, tmp_path, "fixed", broker_url).start("web")
    try:
        status, body = deployment.post("/orders", {"item": "book", "quantity": 1})
    finally:
        deployment.stop()
    assert (status, body) == (503, {"error": "the task queue is unavailable; try again later"})
    db = orders_db.connect(deployment.env["ORDERS_DB"])
    assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 0
    # The publish that failed still leaves its span, ended, with the error, under the request.
    spans = deployment.spans()  # the web app flushed them on its way out
    request, publish = one(spans, REQUEST), one(spans, PUBLISH)
    assert publish["parent_id"] == request["span_id"]
    assert (publish["status"], request["status"]) == ("ERROR", "ERROR")
    figures["broker down when an order is posted"] = (
        "503 with a JSON error, no order left behind; the failed publish's span ends in error"
    )
