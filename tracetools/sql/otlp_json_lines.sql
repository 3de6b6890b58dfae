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
-- each JSONExtract call below parses no more than one span's text.
SELECT
    fromUnixTimestamp64Nano(toInt64OrZero(JSONExtractString(span, 'startTimeUnixNano'))) AS Timestamp,
    lower(if(match(trace_id_written, '^[0-9a-fA-F]{32}$'), trace_id_written,
             hex(tryBase64Decode(trace_id_written)))) AS TraceId,
    lower(if(match(span_id_written, '^[0-9a-fA-F]{16}$'), span_id_written,
             hex(tryBase64Decode(span_id_written)))) AS SpanId,
    lower(if(match(parent_written, '^[0-9a-fA-F]{16}$'), parent_written,
             hex(tryBase64Decode(parent_written)))) AS parent_hex,
    if(replaceAll(parent_hex, '0', '') = '', '', parent_hex) AS ParentSpanId,
    JSONExtractString(span, 'name') AS SpanName,
    -- The exporter's spelling of the kind and the status, from a number or an old string.
    multiIf(kind_written IN ('4', 'SPAN_KIND_PRODUCER'), 'Producer',
            kind_written IN ('5', 'SPAN_KIND_CONSUMER'), 'Consumer',
            kind_written IN ('3', 'SPAN_KIND_CLIENT'), 'Client',
            kind_written IN ('2', 'SPAN_KIND_SERVER'), 'Server',
            kind_written IN ('1', 'SPAN_KIND_INTERNAL'), 'Internal',
            'Unspecified') AS SpanKind,
    service AS ServiceName,
    mapFromArrays(
        arrayMap(kv -> JSONExtractString(kv, 'key'), attributes),
        -- The value object's one field: a string as it is, true or 3 as their JSON text.
        arrayMap(kv -> if(JSONType(JSONExtractRaw(kv, 'value'), 1) = 'String',
                          JSONExtractString(JSONExtractRaw(kv, 'value'), 1),
                          JSONExtractRaw(JSONExtractRaw(kv, 'value'), 1)),
                 attributes)) AS SpanAttributes,
    toUInt64(greatest(toInt64OrZero(JSONExtractString(span, 'endTimeUnixNano'))
                      - toInt64OrZero(JSONExtractString(span, 'startTimeUnixNano')), 0)) AS Duration,
    multiIf(status_written IN ('2', 'STATUS_CODE_ERROR'), 'Error',
            status_written IN ('1', 'STATUS_CODE_OK'), 'Ok',
            'Unset') AS StatusCode,
    arrayMap(link -> lower(if(match(link, '^[0-9a-fA-F]{16}$'), link, hex(tryBase64Decode(link)))),
             arrayMap(link -> JSONExtractString(link, 'spanId'),
                      JSONExtractArrayRaw(span, 'links'))) AS `Links.SpanId`
FROM (
    SELECT
        service,
        span,
        JSONExtractString(span, 'traceId') AS trace_id_written,
        JSONExtractString(span, 'spanId') AS span_id_written,
        JSONExtractString(span, 'parentSpanId') AS parent_written,
        trim(BOTH '"' FROM JSONExtractRaw(span, 'kind')) AS kind_written,
        trim(BOTH '"' FROM JSONExtractRaw(span, 'status', 'code')) AS status_written,
        arrayFilter(kv -> JSONExtractString(kv, 'key') IN (
                        'messaging.system', 'messaging.operation', 'messaging.operation.type',
                        'messaging.message.id', 'messaging.message_id', 'celery.task.name',
                        'celery.task_name', 'celery.action', 'celery.parent_task_id',
                        'celery.trace_context', 'celery.is_eager', 'celery.delivery_info'),
                    JSONExtractArrayRaw(span, 'attributes')) AS attributes
    FROM (
        SELECT
            -- service.name, from the batch's resource
            arrayFirst(kv -> JSONExtractString(kv, 'key') = 'service.name',
                       JSONExtractArrayRaw(resource_spans, 'resource', 'attributes')) AS service_attribute,
            JSONExtractString(service_attribute, 'value', 'stringValue') AS service,
            arrayJoin(arrayFlatten(arrayMap(scope -> JSONExtractArrayRaw(scope, 'spans'),
                                            JSONExtractArrayRaw(resource_spans, 'scopeSpans')))) AS span
        FROM (
            SELECT arrayJoin(JSONExtractArrayRaw(batch, 'resourceSpans')) AS resource_spans
            FROM file({path:String}, 'JSONAsString', 'batch String', {compression:String})
        )
    )
)
-- A span whose ids cannot be read is left out, as the Python reader leaves it out.
WHERE length(TraceId) = 32 AND length(SpanId) = 16 AND replaceAll(TraceId, '0', '') != ''
