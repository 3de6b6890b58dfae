"""What the web app accepts of the trace headers its clients send.

Anyone can send `traceparent` and `baggage` to a public endpoint. By default the app
continues the caller's trace (right behind a gateway you trust); with the `link` policy it
starts a trace of its own that links to the caller's. Either way, inbound baggage reaches
the task headers only for the keys you allow, and oversized headers are dropped.
"""

from opentelemetry.propagate import extract
from opentelemetry.trace import get_current_span

POLICIES = ("continue", "link")
# W3C Trace Context: traceparent version 00 is exactly 55 characters; vendors must accept
# 512 characters of tracestate. W3C Baggage allows 8192 bytes in all.
MAX_LENGTHS = {"HTTP_TRACEPARENT": 55, "HTTP_TRACESTATE": 512, "HTTP_BAGGAGE": 8192}
CALLER_KEY = "inbound_trace_policy.caller"


class InboundTracePolicy:
    """WSGI middleware: wrap the Flask app's wsgi_app after instrumenting it, so that it
    runs before the OpenTelemetry middleware reads the headers."""

    def __init__(self, wsgi_app, policy="continue", baggage_allowlist=()):
        if policy not in POLICIES:
            raise ValueError(f"unknown inbound trace policy {policy!r}: choose one of {POLICIES}")
        self.wsgi_app = wsgi_app
        self.policy = policy
        self.baggage_allowlist = frozenset(baggage_allowlist)

    def __call__(self, environ, start_response):
        for key, limit in MAX_LENGTHS.items():
            if len(environ.get(key, "")) > limit:
                del environ[key]
        if "HTTP_BAGGAGE" in environ:
            self._keep_allowed_baggage(environ)
        if self.policy == "link":
            # Remember the caller's span for link_to_caller, and hide it from the server
            # span, which then starts a new trace.
            carrier = {"traceparent": environ.pop("HTTP_TRACEPARENT", "")}
            environ.pop("HTTP_TRACESTATE", None)
            environ[CALLER_KEY] = get_current_span(extract(carrier)).get_span_context()
        return self.wsgi_app(environ, start_response)

    def _keep_allowed_baggage(self, environ):
        members = [m for m in environ["HTTP_BAGGAGE"].split(",") if m.strip()]
        kept = [m for m in members if m.split("=", 1)[0].strip() in self.baggage_allowlist]
        if kept:
            environ["HTTP_BAGGAGE"] = ",".join(kept)
        else:
            del environ["HTTP_BAGGAGE"]


def link_to_caller(span, environ):
    """FlaskInstrumentor request_hook: link the server span to the caller's, if any."""
    caller = environ.get(CALLER_KEY)
    if caller is not None and caller.is_valid:
        span.add_link(caller)
