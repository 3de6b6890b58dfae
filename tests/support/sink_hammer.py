"""The two sides of the trace sink under load, as processes of their own: exporters posting
OTLP batches at once, and readers loading every span in a loop (tests, viewer, doctor)."""

import os
import time
import urllib.error
import urllib.request

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tracetools.sources import load

RUN_ATTRIBUTE = "hammer.run"


def export_request(run, writer, export, spans):
    """One OTLP export of SPANS spans, each named after its writer, export and place."""
    resource_spans = ResourceSpans()
    resource_spans.resource.attributes.append(KeyValue(key=RUN_ATTRIBUTE))
    resource_spans.resource.attributes[0].value.string_value = run
    scope = ScopeSpans()
    for number in range(spans):
        now = time.time_ns()
        scope.spans.append(Span(
            trace_id=os.urandom(16), span_id=os.urandom(8),
            name=f"writer {writer} export {export} span {number}",
            kind=Span.SpanKind.SPAN_KIND_INTERNAL, start_time_unix_nano=now,
            end_time_unix_nano=now,
        ))
    resource_spans.scope_spans.append(scope)
    return ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString()


def write(endpoint, run, writer, exports, spans, results):
    """Post EXPORTS exports one after the other, as one process's exporter would; put the
    failures (status or exception) on the RESULTS queue."""
    failures = []
    for export in range(exports):
        request = urllib.request.Request(
            endpoint + "/v1/traces", data=export_request(run, writer, export, spans),
            headers={"Content-Type": "application/x-protobuf"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                reply.read()
        except (OSError, urllib.error.HTTPError) as error:
            failures.append(f"{type(error).__name__}: {error}")
    results.put(("writer", writer, failures, exports))


def read(db_path, run, expected, deadline, reader, results):
    """Load every span in a loop until EXPECTED of RUN's are in, or DEADLINE seconds pass;
    put the failures and the number of loads on the RESULTS queue."""
    failures, loads, give_up = [], 0, time.monotonic() + deadline
    while time.monotonic() < give_up:
        try:
            found = sum(1 for _ in load(db_path, resource={RUN_ATTRIBUTE: run}))
        except Exception as error:  # whatever it is, it is the finding
            failures.append(f"{type(error).__name__}: {error}")
            continue
        loads += 1
        if found >= expected:
            break
    results.put(("reader", reader, failures, loads))
