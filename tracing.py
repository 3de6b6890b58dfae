"""OpenTelemetry set-up for one process: the web app or a worker."""

import logging
import os

import requests
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_provider = None


class _ReportOnce(logging.Filter):
    """Let the first export failure through, marked as the only one; drop the rest.

    The exporter logs every batch it fails to send, and every retry: a collector that is
    down for an hour would flood the worker's log.
    """

    reported = False

    def filter(self, record):
        if self.reported:
            return False
        self.reported = True
        record.msg += (
            " (spans are dropped while the collector is unreachable; this is the only report)"
        )
        return True


def setup_tracing(default_service_name):
    """Export this process's spans over OTLP/HTTP; return the TracerProvider.

    The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318) and the
    propagators read OTEL_PROPAGATORS, so only the service name is ours to choose.
    """
    global _provider
    # OpenTelemetry lets a process set its provider once; a second one would be ignored
    # with a warning, and the spans meant for it would go nowhere.
    if _provider is not None:
        return _provider
    # Attributes passed to Resource.create win over the environment, so give
    # OTEL_SERVICE_NAME its precedence here.
    service_name = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    # A prefork worker's children inherit this provider. The SDK restarts its export thread
    # in each child; the open HTTP connections are ours to drop, or parent and child would
    # write their exports into one shared socket.
    session = requests.Session()
    os.register_at_fork(after_in_child=session.close)
    logging.getLogger(OTLPSpanExporter.__module__).addFilter(_ReportOnce())
    _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(session=session)))
    trace.set_tracer_provider(_provider)
    return _provider


def flush_tracing():
    """Export the spans still queued, for processes that exit without running atexit.

    Billiard ends prefork children with os._exit(), so the SDK's own atexit shutdown never
    runs there: a child recycled by worker_max_tasks_per_child would take its last spans
    with it.
    """
    if _provider is not None:
        _provider.force_flush()
