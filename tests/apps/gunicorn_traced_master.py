"""The web app as many apps are written: tracing set up when the module is imported.

Under `gunicorn --preload tests.apps.gunicorn_traced_master:app` that import happens in the master,
before it forks its workers: they inherit its tracer provider, its export thread and the
connection it opened to the collector. The master exports one span first, so that it really
holds such a connection when it forks.
"""

from opentelemetry import trace

from app import create_app
from tracing import flush_tracing, setup_tracing

MASTER_SPAN = "gunicorn master loaded the app"

setup_tracing("orders-web")
with trace.get_tracer(__name__).start_as_current_span(MASTER_SPAN):
    pass
flush_tracing()

app = create_app()
