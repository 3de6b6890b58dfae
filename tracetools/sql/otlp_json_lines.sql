-- An OTLP JSON file, as the Collector's file exporter writes it (JSON lines, one batch a line,
-- plain or compressed), turned into rows of the ClickHouse exporter's table: the columns
-- diagnosis.sql reads, under the exporter's names and types. So the one diagnosis runs on a
-- file (in chDB) as it runs on the exporter's table (in ClickHouse).
--
-- The OTLP JSON spec's traps, handled here: ids are hex, but some SDKs and Tempo write base64
-- (told apart by length); kinds and status codes are integers, or "SPAN_KIND_CONSUMER"
-- strings from old gateways; 64-bit times are strings; a root's parentSpanId is "", absent,
-- or all zeros. Only the attributes the doctor reads are kept, each as a string, as the
-- exporter's Map holds them (true -> 'true', 3 -> '3').
--
-- JSONAsString hands over each top-level JSON object whole, whatever its line breaks, and
-- JSONExtract parses each batch once, into the typed tuples below: a field it cannot find is
-- empty, a number or an object asked for as String comes as its JSON text.
SELECT
    fromUnixTimestamp64Nano(toInt64OrZero(span.startTimeUnixNano)) AS Timestamp,
    -- Hex, whatever was written: 32 (16) hex digits, or 16 (8) bytes in base64.
    lower(if(match(span.traceId, '^[0-9a-fA-F]{32}$'), span.traceId,
             hex(tryBase64Decode(span.traceId)))) AS TraceId,
    lower(if(match(span.spanId, '^[0-9a-fA-F]{16}$'), span.spanId,
             hex(tryBase64Decode(span.spanId)))) AS SpanId,
    lower(if(match(span.parentSpanId, '^[0-9a-fA-F]{16}$'), span.parentSpanId,
             hex(tryBase64Decode(span.parentSpanId)))) AS parent_hex,
    if(replaceAll(parent_hex, '0', '') = '', '', parent_hex) AS ParentSpanId,
    span.name AS SpanName,
    -- The exporter's spelling of the kind and the status, from a number or an old string.
    multiIf(span.kind IN ('4', 'SPAN_KIND_PRODUCER', '"SPAN_KIND_PRODUCER"'), 'Producer',
            span.kind IN ('5', 'SPAN_KIND_CONSUMER', '"SPAN_KIND_CONSUMER"'), 'Consumer',
            span.kind IN ('3', 'SPAN_KIND_CLIENT'), 'Client',
            span.kind IN ('2', 'SPAN_KIND_SERVER'), 'Server',
            span.kind IN ('1', 'SPAN_KIND_INTERNAL'), 'Internal',
            'Unspecified') AS SpanKind,
    arrayFirst(kv -> kv.key = 'service.name', resource.attributes).value.stringValue AS ServiceName,
    -- Each value object has one field: stringValue, boolValue, intValue...: its text.
    mapFromArrays(arrayMap(kv -> kv.key, attributes),
                  arrayMap(kv -> mapValues(kv.value)[1], attributes)) AS SpanAttributes,
    toUInt64(greatest(toInt64OrZero(span.endTimeUnixNano)
                      - toInt64OrZero(span.startTimeUnixNano), 0)) AS Duration,
    multiIf(span.status.code IN ('2', 'STATUS_CODE_ERROR'), 'Error',
            span.status.code IN ('1', 'STATUS_CODE_OK'), 'Ok',
            'Unset') AS StatusCode,
    arrayMap(link -> lower(if(match(link.spanId, '^[0-9a-fA-F]{16}$'), link.spanId,
                              hex(tryBase64Decode(link.spanId)))),
             span.links) AS `Links.SpanId`
FROM (
    SELECT
        resource,
        arrayJoin(arrayFlatten(arrayMap(scope -> scope.spans, scope_spans))) AS span,
        -- Only the attributes the doctor reads.
        arrayFilter(kv -> kv.key IN (
                        'messaging.system', 'messaging.operation', 'messaging.operation.type',
                        'messaging.message.id', 'messaging.message_id', 'celery.task.name',
                        'celery.task_name', 'celery.action', 'celery.parent_task_id',
                        'celery.trace_context', 'celery.is_eager', 'celery.delivery_info'),
                    span.attributes) AS attributes
    FROM (
        SELECT
            resource_spans.resource AS resource,
            resource_spans.scopeSpans AS scope_spans
        FROM file({path:String}, 'JSONAsString', 'batch String', {compression:String})
        ARRAY JOIN JSONExtract(batch, 'resourceSpans', 'Array(Tuple(
            resource Tuple(attributes Array(Tuple(key String, value Tuple(stringValue String)))),
            scopeSpans Array(Tuple(spans Array(Tuple(
                traceId String, spanId String, parentSpanId String, name String, kind String,
                startTimeUnixNano String, endTimeUnixNano String,
                attributes Array(Tuple(key String, value Map(String, String))),
                links Array(Tuple(spanId String)),
                status Tuple(code String)))))))') AS resource_spans
    )
)
-- A span whose ids cannot be read is left out, as the Python reader leaves it out.
WHERE length(TraceId) = 32 AND length(SpanId) = 16 AND replaceAll(TraceId, '0', '') != ''
