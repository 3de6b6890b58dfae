"""The web process: tracing first, then Django (`gunicorn orders_site.wsgi`)."""

import os

from django.core.wsgi import get_wsgi_application
from opentelemetry.instrumentation.django import DjangoInstrumentor

from tracing import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_site.settings")
setup_tracing("orders-web")
DjangoInstrumentor().instrument()
application = get_wsgi_application()
