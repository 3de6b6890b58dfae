"""gunicorn's settings for the web app. gunicorn reads this file from its working directory
(its default name), so `python -m gunicorn --workers 4 'app:create_app()'` needs nothing else.

Tracing in forked workers, the same question as Celery's prefork pool:

- Each worker sets tracing up after the fork (post_fork below), so it owns its tracer
  provider, its export thread and its connection to the collector, with --preload or without:
  the master serves no request and exports nothing.
- If tracing was set up before the fork anyway (your app does it at import, and you run
  --preload), each worker inherits the master's provider, and setup_tracing() hands that one
  back. That is safe too: the SDK restarts its export thread in the child and drops the spans
  the parent had queued, tracing.py closes the inherited HTTP connections in the child, and
  the SDK renews service.instance.id (and process.pid, with the process detector) so that each
  worker's spans name the worker, not the master.
- No flush hook is needed: a worker leaves through sys.exit(), on a graceful stop (SIGTERM to
  the master), a restart, max_requests or a timeout (SIGABRT), so the SDK's atexit shutdown
  runs and exports what is still queued. Only a worker killed with SIGKILL (gunicorn does that
  after graceful_timeout) loses its last spans. tests/test_gunicorn.py proves all three
  cases on a graceful stop: workers that set tracing up, with and without --preload, and
  workers that inherit the master's.
"""

import os

from tracing import setup_tracing

# Where to listen: the variables `python app.py` reads too.
_host = os.environ.get("FLASK_RUN_HOST", "127.0.0.1")
_port = os.environ.get("FLASK_RUN_PORT", "5000")
bind = f"{_host}:{_port}"
# gunicorn's control socket has one default path per user: several servers on one machine (the
# tests run many at once) would take it from each other. Nothing here uses gunicornc.
control_socket_disable = True


def post_fork(server, worker):
    setup_tracing("orders-web")
