"""A collector that is down or never answers costs the orders nothing, and each process
says so once rather than at every export."""

import socket
import threading
import time

import pytest

from harness.polling import poll_until
from harness.processes import free_port


class BlackHole:
    """A collector that accepts connections and never answers."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.connections.append(self.server.accept()[0])
            except OSError:
                return

    def close(self):
        self.server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def collector_port(request):
    if request.param == "down":
        yield free_port()
        return
    black_hole = BlackHole()
    yield black_hole.port
    black_hole.close()


@pytest.mark.parametrize("collector_port", ["down", "not answering"], indirect=True)
def test_a_missing_collector_costs_orders_nothing_and_is_reported_once(
    started, figures, collector_port, request
):
    orders = 20
    deployment = started(
        parts=("worker", "email-worker", "web"),
        # A short export timeout only shortens the shutdown at the end of the test.
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
             "OTEL_EXPORTER_OTLP_TIMEOUT": "2"},
    )
    slowest, ids = 0.0, []
    for _ in range(orders):
        start = time.monotonic()
        ids.append(deployment.post_order())
        slowest = max(slowest, time.monotonic() - start)
    poll_until(
        lambda: all(deployment.order_status(i) == "emailed" for i in ids), 60,
        "every order processed", check=deployment.check_alive, interval=0.2,
    )
    deployment.stop()
    logs = [path.read_text() for path in deployment.workdir.glob("*.log")]
    reports = [log.count("Failed to export") + log.count("Transient error") for log in logs]
    assert max(reports) <= 1, "export failures must be reported once per process"
    assert any("this is the only report" in log for log in logs)
    collector = request.node.callspec.id
    figures[f"collector {collector}"] = (
        f"{orders} of {orders} orders processed, at most 1 log line per process"
    )
    # A figure, not a test: an export that blocked a request would show here as seconds.
    print(f"collector {collector}: slowest POST /orders {slowest * 1000:.0f} ms")
