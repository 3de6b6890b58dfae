"""The production web tier: gunicorn's forked workers trace like any other process.

Each worker's spans arrive, told apart by their resource (process.pid and
service.instance.id, which the SDK renews after a fork); no worker writes into an exporter
connection it inherited; and a graceful stop (SIGTERM to the master) delivers every span
still queued, with and without --preload.
"""

import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest

from harness.deployment import Deployment
from harness.polling import poll_until
from harness.processes import log_text
from tests.support.traces import PUBLISH, REQUEST
from tracetools.sink import TraceSink

WORKERS = 4
# Ten minutes between exports: the workers export nothing while they serve, so what arrives
# after the stop was sent by the flush on the way out.
ENV = {
    "OTEL_BSP_SCHEDULE_DELAY": "600000",
    # The SDK's process detector: process.pid and process.parent_pid on every span's resource.
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "process",
    # gunicorn's access log, with the pid of the worker that served each request.
    "GUNICORN_CMD_ARGS": "--access-logfile - --access-logformat '%(p)s %(m)s %(U)s %(s)s'",
}
MODES = {
    "workers import the app": {"preload": False},
    "--preload": {"preload": True},
    # Tracing set up at import, so the provider and an open exporter connection are the
    # master's, inherited by every worker.
    "--preload, tracing set up in the master": {
        "preload": True, "web_app": "tests.apps.gunicorn_traced_master:app",
    },
}
# The span tests/apps/gunicorn_traced_master.py exports from the master (importing that module
# here would set tracing up in this process).
MASTER_SPAN = "gunicorn master loaded the app"
ROW = "gunicorn (4 workers), SIGTERM with every span still queued, {mode}"
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
SERVED = re.compile(r"^<(\d+)> POST /orders 202$", re.MULTILINE)


class KeepAliveSink(TraceSink):
    """The trace sink, keeping connections open between exports as real collectors do
    (HTTP/1.1): an exporter's connection then outlives the export, and a fork copies it."""

    def _handler_class(self):
        return type("KeepAliveHandler", (super()._handler_class(),),
                    {"protocol_version": "HTTP/1.1"})


@pytest.fixture(scope="module")
def keep_alive_sink(tmp_path_factory):
    with KeepAliveSink(str(tmp_path_factory.mktemp("sink") / "spans.db")) as running:
        yield running


def sink_sockets(pid, port):
    """The inodes of the TCP sockets that process PID holds open to 127.0.0.1:PORT."""
    connected = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[9]
            if remote_port == port and inode != "0":
                connected.add(inode)
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            held.add(target[len("socket:["):-1])
    return held & connected


def served(deployment):
    """{worker pid: POST /orders it answered}, from gunicorn's access log."""
    return Counter(int(pid) for pid in SERVED.findall(log_text(deployment.web)))


@pytest.mark.parametrize("mode", MODES)
def test_every_gunicorn_worker_traces_on_a_socket_of_its_own_and_flushes_at_stop(
    keep_alive_sink, tmp_path, figures, mode
):
    deployment = Deployment(
        keep_alive_sink, tmp_path, "fixed", "filesystem", web_server="gunicorn",
        web_workers=WORKERS, env=ENV, **MODES[mode],
    )
    try:
        deployment.start("web")
        master, sink_port = deployment.web.pid, urlparse(keep_alive_sink.endpoint).port
        workers = poll_until(
            lambda: len(pids := set(map(int, BOOTED.findall(log_text(deployment.web)))))
            >= WORKERS and pids, 60, "every gunicorn worker booted",
            check=deployment.check_alive,
        )
        # Post orders, eight at a time, until every worker has answered some: gunicorn's
        # workers take connections from one shared socket, first come first served.
        with ThreadPoolExecutor(8) as clients:
            poll_until(
                lambda: list(clients.map(lambda _: deployment.post_order(), range(8)))
                and set(served(deployment)) >= workers,
                120, "every worker served an order", check=deployment.check_alive,
            )
        # No worker holds a socket of the master's: tracing.py closed the inherited
        # connections in each child (os.register_at_fork), before it could write to them.
        master_sockets = sink_sockets(master, sink_port)
        if "master" in mode:
            assert master_sockets, "the master should hold its exporter connection"
        held = {pid: sink_sockets(pid, sink_port) for pid in workers}
        for pid, sockets in held.items():
            assert not sockets & master_sockets, f"worker {pid} holds the master's socket"
            for other, theirs in held.items():
                assert other == pid or not sockets & theirs, f"{pid} and {other} share one"
    finally:
        deployment.stop()  # SIGTERM to the master, which stops its workers gracefully
    requests = served(deployment)
    spans = deployment.spans()
    by_process = Counter(
        (span["name"], span["resource"]["process.pid"]) for span in spans
    )
    # Every request's two spans, from the worker that served it (the access log says which).
    for pid, count in requests.items():
        assert by_process[REQUEST, pid] == count, f"worker {pid}"
        assert by_process[PUBLISH, pid] == count, f"worker {pid}"
    assert sum(n for (name, _), n in by_process.items() if name == REQUEST) == sum(
        requests.values()
    )
    # Each worker is a service instance of its own, and its resource names it, not the
    # master it was forked from.
    instances = {}
    for span in spans:
        resource = span["resource"]
        instances.setdefault(resource["process.pid"], set()).add(resource["service.instance.id"])
    worker_instances = [instances[pid] for pid in workers]
    assert all(len(ids) == 1 for ids in worker_instances)
    assert len(set().union(*worker_instances)) == WORKERS
    for span in spans:
        if span["resource"]["process.pid"] in workers:
            assert span["resource"]["process.parent_pid"] == master
    if "master" in mode:
        master_spans = [s for s in spans if s["name"] == MASTER_SPAN]
        assert [s["resource"]["process.pid"] for s in master_spans] == [master]
        assert not instances[master] & set().union(*worker_instances)
    figures[ROW.format(mode=mode)] = (
        "every request's spans exported, from each of the 4 workers; "
        "no exporter connection shared"
    )
