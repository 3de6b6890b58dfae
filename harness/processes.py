"""Start and stop the web and worker processes, exactly as the demo, the tests and
docker-compose.yml run them."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness.polling import poll_until, port_answers

ROOT = Path(__file__).resolve().parent.parent

# --without-mingle/-gossip/-heartbeat: kombu's filesystem transport has no broadcast
# exchange for them, and the demo needs none of them on Redis either.
WORKER_OPTIONS = [
    "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat",
]
WEB_ARGS = ["app.py"]
# The production web tier: gunicorn serving the app factory. gunicorn reads gunicorn.conf.py
# from the repository root (its default name): where to listen, and tracing in each worker.
GUNICORN_APP = "app:create_app()"
WEB_SERVERS = ("flask", "gunicorn")


class ProcessFailed(RuntimeError):
    """A process exited early or did not become ready: the message holds its log."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, env, log_path):
    """Start `python ARGS` in the repository with ENV added, its output going to LOG_PATH."""
    log = open(log_path, "wb")
    # A session of its own, so that stop() can reach a prefork worker's children too.
    process = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **env},
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    process.log_path = log_path
    return process


def worker_args(pool="prefork", concurrency=1, extra_args=(), app="tasks"):
    """`python ARGS` runs a worker of the Celery app in module APP (the example app's by
    default; the tutorial's small apps use it too)."""
    return ["-m", "celery", "-A", app, "worker", *WORKER_OPTIONS, "--pool", pool,
            "--concurrency", str(concurrency), *extra_args]


def start_worker(env, log_path, pool="prefork", concurrency=1, extra_args=()):
    return start(worker_args(pool, concurrency, extra_args), env, log_path)


def wait_until_ready(worker, deadline=30.0):
    """Wait for the worker to consume: broadcasts (revoke) sent before then are lost."""
    _wait_for(worker, lambda: " ready." in log_text(worker), deadline, "worker ready")


def web_args(server="flask", workers=4, preload=False, app=GUNICORN_APP):
    """How to run the web app: `python app.py` (Flask's own server, for the tutorial), or
    gunicorn serving APP with WORKERS forked worker processes, importing it before the fork
    if PRELOAD."""
    if server == "flask":
        return list(WEB_ARGS)
    if server != "gunicorn":
        raise ValueError(f"unknown web server {server!r}: choose from {WEB_SERVERS}")
    return [
        "-m", "gunicorn", "--workers", str(workers), *(["--preload"] if preload else []), app,
    ]


def start_web(env, log_path, deadline=20.0, **server):
    """Start the web app on a free port; return (process, base URL) once it accepts.

    SERVER (server, workers, preload, app) chooses how it runs: see web_args()."""
    port = free_port()
    args = web_args(**server)
    process = start(args, {**env, "FLASK_RUN_PORT": str(port)}, log_path)
    _wait_for(process, lambda: port_answers(port, timeout=0.2), deadline, f"listening on {port}")
    return process, f"http://127.0.0.1:{port}"


def _wait_for(process, condition, deadline, what):
    try:
        poll_until(condition, deadline, what, check=lambda: check_alive(process), interval=0.05)
    except TimeoutError as error:
        raise ProcessFailed(f"{error}\n{log_tail(process)}") from None


def check_alive(process):
    if process.poll() is not None:
        raise ProcessFailed(f"process exited with code {process.returncode}\n{log_tail(process)}")


def log_text(process):
    return Path(process.log_path).read_text(errors="replace")


def log_tail(process, lines=30):
    return "\n".join(log_text(process).splitlines()[-lines:])


def stop(process, deadline=15.0):
    """Ask for a warm shutdown (SIGTERM: spans are flushed on the way out), then insist."""
    stop_all([process], deadline)


def stop_all(processes, deadline=15.0):
    """stop() several at once: each takes seconds to shut down, so ask them all first."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            # Once, and to the main process only: it shuts its pool children down in order,
            # letting each flush its spans. A second SIGTERM, or a signal to the whole group,
            # could cut a flush short.
            process.terminate()
    give_up = time.monotonic() + deadline
    for process in processes:
        try:
            process.wait(max(0.0, give_up - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        # Whatever is left of the session (a prefork child that outlived its parent) goes.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
