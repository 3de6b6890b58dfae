"""A Redis server of a test's own, which the test can stop, start and configure."""

import subprocess

from harness.polling import poll_until, port_answers
from harness.processes import free_port


class PrivateRedis:
    """A Redis of this test's own, that it can stop and start again on the same port. The
    append-only file keeps what was queued across the restart, as production Redis should."""

    def __init__(self, folder):
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        subprocess.run(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize",
             "yes", "--dir", str(self.folder), "--appendonly", "yes", "--save", ""],
            check=True, capture_output=True, timeout=10,
        )
        poll_until(lambda: port_answers(self.port), 30, "private Redis started")

    def stop(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True,
                       timeout=10)
        poll_until(lambda: not port_answers(self.port), 30, "private Redis stopped")
