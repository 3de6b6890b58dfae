"""OTLP JSON, read and written: what the Collector's file exporter, Jaeger 2 and Tempo serve.

The one decoder of spans in tracetools: the sink turns each protobuf export into this JSON
(encode) and reads it back here like any file or backend answer, so that both wire formats
give the same span records (tracetools.span_record) by one path.

The spec's JSON encoding differs from protobuf's own JSON mapping in the ways that bite: trace
and span ids are hex (protobuf's mapping, and Tempo, give base64), enums such as `kind` are
integers (old Jaeger gateways gave "SPAN_KIND_SERVER"), and 64-bit integers, times included,
are strings. The reader takes all of these; the writers write what the spec says.
"""

import base64
import binascii
import re

from google.protobuf import json_format

from tracetools.span_record import Span

KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUSES = ("UNSET", "OK", "ERROR")
TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8
HEX = re.compile(r"[0-9a-fA-F]*")


class NotOtlp(ValueError):
    """A document that holds no OTLP trace data."""


def encode(export_request):
    """An ExportTraceServiceRequest as the OTLP JSON object the spec describes: hex ids."""
    document = json_format.MessageToDict(export_request, use_integers_for_enums=True)
    # protobuf's mapping leaves out an empty list: an empty export is still a document.
    document.setdefault("resourceSpans", [])
    for span in _spans_of(document):
        for field in ("traceId", "spanId", "parentSpanId"):
            if field in span:
                span[field] = base64.b64decode(span[field]).hex()
        for link in span.get("links", ()):
            for field in ("traceId", "spanId"):
                if field in link:
                    link[field] = base64.b64decode(link[field]).hex()
    return document


def document_of(spans):
    """SPANS (span records) as one OTLP JSON document, hex ids: what a file exporter or a
    backend would hold for them, one resourceSpans per resource."""
    batches = {}
    for span in spans:
        resource = span["resource"]
        if span["service"] is not None and "service.name" not in resource:
            resource = {**resource, "service.name": span["service"]}
        batch = batches.setdefault(repr(sorted(resource.items())), {
            "resource": {"attributes": _key_values(resource)},
            "scopeSpans": [{"scope": {"name": "tracetools"}, "spans": []}],
        })
        batch["scopeSpans"][0]["spans"].append({
            "traceId": span["trace_id"], "spanId": span["span_id"],
            "parentSpanId": span["parent_id"] or "", "name": span["name"],
            "kind": KINDS.index(span["kind"]),
            "startTimeUnixNano": str(span["start_ns"]), "endTimeUnixNano": str(span["end_ns"]),
            "attributes": _key_values(span["attributes"]),
            "status": {"code": STATUSES.index(span["status"])},
            "links": [{"traceId": link["trace_id"], "spanId": link["span_id"]}
                      for link in span["links"]],
        })
    return {"resourceSpans": list(batches.values())}


def resource_spans(document):
    """The resourceSpans list inside any envelope we know: a TracesData or export request,
    Jaeger 2's {"result": ...}, Tempo's {"batches": [...]} and its v2 {"trace": ...}."""
    if not isinstance(document, dict):
        raise NotOtlp(f"a JSON {type(document).__name__}, not an object")
    for envelope in ("result", "trace"):
        if isinstance(document.get(envelope), dict):
            # Jaeger answers a search that found nothing with an empty TracesData.
            return _list(document[envelope].get("resourceSpans", []))
    for key in ("resourceSpans", "batches"):
        if key in document:
            return _list(document[key])
    raise NotOtlp(f"no resourceSpans, only {', '.join(sorted(document)) or 'nothing'}")


def spans(document, on_malformed=None):
    """The spans of an OTLP JSON DOCUMENT, as span records.

    A span whose ids cannot be read is left out, and ON_MALFORMED(reason) called for it.
    """
    for batch in resource_spans(document):
        if not isinstance(batch, dict):
            raise NotOtlp("a resourceSpans entry that is not an object")
        try:
            resource = _attributes((batch.get("resource") or {}).get("attributes"))
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            raise NotOtlp(f"a resource that cannot be read: {error!r}") from None
        # instrumentationLibrarySpans: the name before OTLP 0.15, still served by old Tempos.
        for scope in _list(batch.get("scopeSpans") or batch.get("instrumentationLibrarySpans")):
            for span in _list(scope.get("spans") if isinstance(scope, dict) else None):
                try:
                    yield _span(span, resource)
                except (ValueError, TypeError, AttributeError, KeyError) as error:
                    if on_malformed is not None:
                        on_malformed(str(error) or repr(error))


def _spans_of(document):
    for batch in document.get("resourceSpans", ()):
        for scope in batch.get("scopeSpans", ()):
            yield from scope.get("spans", ())


def _list(value):
    if value is None:
        return []
    if not isinstance(value, list):
        raise NotOtlp(f"a {type(value).__name__} where a list belongs")
    return value


def _span(span, resource) -> Span:
    parent_id = _id(span.get("parentSpanId"), SPAN_ID_BYTES, "parent span id", optional=True)
    status = span.get("status") or {}
    return {
        "trace_id": _id(span.get("traceId"), TRACE_ID_BYTES, "trace id"),
        "span_id": _id(span.get("spanId"), SPAN_ID_BYTES, "span id"),
        "parent_id": parent_id,
        "name": str(span.get("name", "")),
        "kind": _enum(span.get("kind"), KINDS, "SPAN_KIND_"),
        "service": resource.get("service.name"),
        "start_ns": int(span.get("startTimeUnixNano") or 0),
        "end_ns": int(span.get("endTimeUnixNano") or 0),
        "status": _enum(status.get("code"), STATUSES, "STATUS_CODE_"),
        "attributes": _attributes(span.get("attributes")),
        "resource": resource,
        "links": [
            {
                "trace_id": _id(link.get("traceId"), TRACE_ID_BYTES, "link trace id"),
                "span_id": _id(link.get("spanId"), SPAN_ID_BYTES, "link span id"),
            }
            for link in span.get("links") or ()
        ],
    }


def _id(value, size, what, optional=False):
    """Hex, whatever the encoding: 2*SIZE hex digits, or SIZE bytes in base64 (Tempo)."""
    if optional and not value:
        return None  # a root: "" or absent
    if not isinstance(value, str):
        raise ValueError(f"{what} is {value!r}, not a string")
    # The length tells the encodings apart: 32 hex digits or 24 base64 characters.
    if len(value) == 2 * size and HEX.fullmatch(value):
        hex_id = value.lower()
    else:
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != size:
            raise ValueError(f"{what} {value[:40]!r} is neither {2 * size} hex digits nor base64")
        hex_id = raw.hex()
    if not hex_id.strip("0"):
        if optional:
            return None  # an all-zero parent id is how some exporters say "root"
        raise ValueError(f"{what} is all zeros: invalid")
    return hex_id


def _enum(value, names, prefix):
    if isinstance(value, str) and value.removeprefix(prefix) in names:
        return value.removeprefix(prefix)
    number = int(value or 0)  # a number, or a number in a string
    return names[number] if 0 <= number < len(names) else names[0]


def _attributes(key_values):
    return {kv["key"]: _value(kv.get("value") or {}) for kv in key_values or ()}


def _value(any_value):
    # As an SDK set them: ints as ints, bytes as hex, arrays and maps as lists and dicts.
    for field, value in any_value.items():
        if field == "intValue":
            return int(value)
        if field == "doubleValue":
            return float(value)  # "NaN" and "Infinity" come as strings
        if field == "bytesValue":
            return base64.b64decode(value).hex()
        if field == "arrayValue":
            return [_value(v) for v in value.get("values") or ()]
        if field == "kvlistValue":
            return _attributes(value.get("values"))
        return value  # stringValue, boolValue
    return None


def _key_values(attributes):
    return [{"key": key, "value": _any_value(value)} for key, value in attributes.items()]


def _any_value(value):
    # bool before int: True is an int to Python, a boolValue to OTLP.
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": _key_values(value)}}
    if value is None:
        return {}
    return {"stringValue": str(value)}
