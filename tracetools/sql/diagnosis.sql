-- The doctor's diagnosis, run inside ClickHouse on the table the OpenTelemetry Collector's
-- ClickHouse exporter writes (otel_traces). Only the findings come back, never the spans.
--
-- It reads both of the exporter's schemas: the default one, whose SpanAttributes column is a
-- Map(LowCardinality(String), String), and the json option's, where it is of type JSON.
-- `SpanAttributes['key']` works on both; toString() turns the JSON type's typed values
-- (true, 3) into the strings the Map holds ('true', '3'), and a missing key into ''.
-- So an attribute that is set to '' counts as absent here.
--
-- The rules are those of tracetools/doctor.py, the Python doctor:
-- tests/test_doctor_conformance.py holds the two to the same --json diagnosis of one corpus.
--
-- Paste it into clickhouse-client with its parameters, e.g.
--   clickhouse-client --param_database=otel --param_table=otel_traces \
--     --param_since='2026-12-03 00:00:00' --param_until='2026-12-04 00:00:00' \
--     --param_worker_services="[]" --param_limit=20 --queries-file tracetools/sql/diagnosis.sql
-- Times are UTC; the window is half-open: since <= Timestamp (the span's start) < until.
--
-- One row comes back: the counts, and the orphans, the eager roots and the never-consumed
-- messages, each list ordered by (start_ns, span_id) and cut at {limit} (read it with
-- FORMAT Vertical). The counts are whole, whatever {limit} says.
--
-- It reads the window's rows several times (ClickHouse runs a WITH subquery wherever it is
-- named): the Celery spans, the span ids that consumers name as parents, each eager root's
-- caller, the totals. It holds no spans, and no set of every id: where every span id or
-- message id must be seen (the distinct counts, the parents that never arrived, the
-- producers no consumer reached, the messages never consumed) it groups them (span ids as
-- 8-byte numbers) and keeps the few that answer. A GROUP BY goes to disk past
-- max_bytes_before_external_group_by (the doctor sets it for files; on a server, set it if
-- the query runs out of memory). Windows and joins only see the few orphans and eager roots.
WITH
    -- The window's rows, with the few columns the doctor reads under its own names.
    spans AS (
        SELECT
            SpanId AS span_id,
            TraceId AS trace_id,
            ParentSpanId AS parent_id,  -- '' for a root
            SpanName AS name,
            ServiceName AS service,
            toUnixTimestamp64Nano(Timestamp) AS start_ns,
            toInt64(start_ns + Duration) AS end_ns,
            SpanKind AS kind,  -- 'Consumer' now, 'SPAN_KIND_CONSUMER' before: a table kept
                               -- across an exporter upgrade holds both
            StatusCode IN ('Error', 'STATUS_CODE_ERROR') AS failed,
            SpanAttributes AS attributes,
            `Links.SpanId` AS links,
            -- The ids as numbers for the sets below: 8 bytes a span id, not a string (the
            -- exporter writes 16 hex digits; '' becomes 0).
            reinterpretAsUInt64(unhex(SpanId)) AS span_key,
            reinterpretAsUInt64(unhex(ParentSpanId)) AS parent_key,
            arrayMap(id -> reinterpretAsUInt64(unhex(id)), `Links.SpanId`) AS link_keys
        FROM {database:Identifier}.{table:Identifier}
        WHERE Timestamp >= {since:DateTime64(9, 'UTC')} AND Timestamp < {until:DateTime64(9, 'UTC')}
    ),

    -- Celery's producer and consumer spans, and the worker services' roots that are not
    -- Celery spans (--worker-service: a worker that records no consumer span).
    celery_rows AS (
        SELECT
            span_id, trace_id, parent_id, name, service, start_ns, end_ns, failed, links,
            span_key, parent_key, link_keys,
            side, task, message_id, parent_task_id, trace_context, is_eager,
            -- A non-eager root without links: an orphan, whose producer is looked for.
            side = 'CONSUMER' AND parent_id = '' AND NOT is_eager AND empty(links)
                AS seeks_producer
        FROM (
            SELECT
                span_id, trace_id, parent_id, name, service, start_ns, end_ns, failed, links,
                span_key, parent_key, link_keys,
                toString(attributes['messaging.operation.type']) AS operation_type,
                toString(attributes['messaging.operation']) AS operation_old,
                if(operation_type != '', operation_type, operation_old) AS operation,
                -- The span's kind says which side it is; else the messaging conventions'
                -- operation does.
                multiIf(
                    kind IN ('Producer', 'SPAN_KIND_PRODUCER'), 'PRODUCER',
                    kind IN ('Consumer', 'SPAN_KIND_CONSUMER'), 'CONSUMER',
                    operation IN ('send', 'publish', 'create'), 'PRODUCER',
                    operation IN ('process', 'deliver'), 'CONSUMER',
                    '') AS messaging_side,
                toString(attributes['celery.task.name']) AS task_name_new,
                toString(attributes['celery.task_name']) AS task_name_old,
                -- A Celery span: says so, names a task, or is named the way this repository
                -- and opentelemetry-instrumentation-celery name theirs.
                messaging_side != '' AND (
                    toString(attributes['messaging.system']) = 'celery'
                    OR task_name_new != '' OR task_name_old != ''
                    OR toString(attributes['celery.action']) != ''
                    OR match(name, '^(celery\\.(apply|run|revoked|failed) |apply_async/|run/)')
                ) AS is_celery,
                if(is_celery, messaging_side, 'WORKER') AS side,
                -- The task: from the attribute, else from the span name, never the whole
                -- name when it has one of the known shapes.
                multiIf(
                    task_name_new != '', task_name_new,
                    task_name_old != '', task_name_old,
                    match(name, '^(celery\\.(apply|run|revoked|failed) |apply_async/|run/).'),
                        replaceRegexpOne(name, '^(celery\\.(apply|run|revoked|failed) |apply_async/|run/)', ''),
                    match(name, '^.+ (publish|process|receive|send)$'),
                        replaceRegexpOne(name, ' (publish|process|receive|send)$', ''),
                    match(name, '^(publish|process|receive|send) .+'),
                        replaceRegexpOne(name, '^(publish|process|receive|send) ', ''),
                    name) AS celery_task,
                if(is_celery, celery_task, '') AS task,  -- a worker root names no task
                if(toString(attributes['messaging.message.id']) != '',
                   toString(attributes['messaging.message.id']),
                   toString(attributes['messaging.message_id'])) AS message_id,
                toString(attributes['celery.parent_task_id']) AS parent_task_id,
                toString(attributes['celery.trace_context']) AS trace_context,
                -- Ours record celery.is_eager (a JSON column holds true, a Map 'true');
                -- the auto-instrumentation writes the request's delivery_info as a string.
                toString(attributes['celery.is_eager']) IN ('true', 'True')
                    OR position(toString(attributes['celery.delivery_info']),
                                '\'is_eager\': True') > 0 AS is_eager
            FROM spans
            WHERE is_celery
               OR (service IN {worker_services:Array(String)} AND parent_id = '' AND empty(links))
        )
    ),

    -- Each of them once: a span exported twice must not count twice. Only the ids that occur
    -- twice (few, found by a GROUP BY that can spill) go through LIMIT BY, which holds every
    -- id it sees. (The sets below need no such care, and so read celery_rows.)
    twice AS (
        SELECT span_key FROM celery_rows GROUP BY span_key HAVING count() > 1
    ),
    celery AS (
        SELECT * FROM celery_rows WHERE span_key NOT IN twice
        UNION ALL
        SELECT * FROM celery_rows WHERE span_key IN twice LIMIT 1 BY span_key
    ),

    -- The producer spans that no consumer span names as parent or link (a producer span
    -- they reach was consumed, whatever its message id says): few when messages are
    -- consumed. Grouped (it can spill), not a set of the millions of ids that are named.
    unreached AS (
        SELECT span_key FROM (
            SELECT span_key, 1 AS producer FROM celery_rows WHERE side = 'PRODUCER'
            UNION ALL
            SELECT arrayJoin(arrayPushFront(link_keys, parent_key)) AS span_key, 0 AS producer
            FROM celery_rows
            WHERE side = 'CONSUMER'
        )
        GROUP BY span_key
        HAVING min(producer) = 1
    ),

    -- The parents the consumer spans name that no span in the window is: few. Grouped with
    -- every span id (a GROUP BY can spill to disk), not a set of the millions present.
    missing AS (
        SELECT key FROM (
            SELECT parent_key AS key, 1 AS named FROM celery_rows
            WHERE side = 'CONSUMER' AND parent_id != ''
            UNION ALL
            SELECT span_key AS key, 0 AS named FROM spans
        )
        GROUP BY key
        HAVING min(named) = 1
    ),

    -- Eager runs that are roots, and for each the span open around it, if any: a span of the
    -- same service, in another trace (not the run nor its descendants), that started at or
    -- before it and ended at or after it; the one that started last (then the largest span
    -- id). The window's spans stream through the join; the eager roots, few, are held.
    callers AS (
        SELECT run.span_id AS run_id,
               argMax((s.span_id, s.trace_id, s.name), (s.start_ns, s.span_id)) AS caller
        FROM spans AS s
        INNER JOIN (
            SELECT span_id, trace_id, service, start_ns, end_ns FROM celery_rows
            WHERE side = 'CONSUMER' AND is_eager AND parent_id = ''
            LIMIT 1 BY span_key  -- once each, and only them: few
        ) AS run ON s.service = run.service
        WHERE s.trace_id != run.trace_id AND s.start_ns <= run.start_ns
          AND s.end_ns >= run.end_ns
        GROUP BY run.span_id
    ),

    -- What each span's own row, and the sets above, say.
    own AS (
        SELECT *,
            parent_id != '' AND parent_key NOT IN missing AS parent_present,
            side = 'PRODUCER' AND span_key NOT IN unreached AS producer_reached,
            -- A producer span with no message id (made by hand around apply_async) that no
            -- consumer reached: it can only be joined by task and time.
            side = 'PRODUCER' AND message_id = '' AND NOT producer_reached AS anonymous,
            multiIf(
                side = 'WORKER', 'orphan',
                side = 'PRODUCER', 'producer',
                parent_present, 'connected',
                parent_id != '', 'orphan',       -- its parent never arrived
                is_eager, 'eager_root',          -- nothing was published: never an orphan
                notEmpty(links), 'linked',       -- a new trace on purpose, linked: by design
                'orphan') AS state
        FROM celery
    ),

    -- The producers of the orphans' messages, by message id (the earliest, as evidence).
    -- Only the orphans' message ids are looked up: they are few. This and what follows
    -- read celery_rows, not celery: a span read twice changes no answer here.
    by_message AS (
        SELECT message_id,
               argMin((span_id, trace_id, service), (start_ns, span_id)) AS producer
        FROM celery_rows
        WHERE side = 'PRODUCER' AND message_id != '' AND message_id IN (
            SELECT message_id FROM celery_rows WHERE seeks_producer AND message_id != '')
        GROUP BY message_id
    ),

    -- The orphans with no producer by message id, and the anonymous producers, in time per
    -- task: each orphan's is the anonymous producer of its task that started last at or
    -- before it (at equal starts, producers first, then the larger span id): ASOF, not one
    -- to one. Both sides are few, so the window is small.
    by_task AS (
        SELECT span_id,
               argMaxIf((span_id, trace_id, service), (start_ns, span_id), anonymous)
                   OVER (PARTITION BY task ORDER BY start_ns, NOT anonymous, span_id
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS producer
        FROM (
            SELECT *,
                side = 'PRODUCER' AND message_id = '' AND span_key IN unreached
                    AS anonymous
            FROM celery_rows
            WHERE anonymous OR (seeks_producer AND message_id NOT IN (
                SELECT message_id FROM by_message))
            LIMIT 1 BY span_key
        )
    ),

    -- Message ids that producer spans carry and no consumer span does, eager runs aside
    -- (they consumed nothing): few. Grouped, not looked up in a set of every consumed id
    -- (millions): a GROUP BY can spill to disk (max_bytes_before_external_group_by).
    unconsumed_ids AS (
        SELECT message_id FROM celery_rows
        WHERE message_id != '' AND (side = 'PRODUCER' OR (side = 'CONSUMER' AND NOT is_eager))
        GROUP BY message_id
        HAVING countIf(side = 'CONSUMER') = 0
    ),

    -- Every verdict.
    judged AS (
        SELECT o.* EXCEPT (span_id, message_id), c.caller AS caller,
            -- Named again: the joined tables have columns of these names too.
            o.span_id AS span_id, o.message_id AS message_id,
            seeks_producer AND m.producer.1 != '' AS producer_by_id,
            seeks_producer AND NOT producer_by_id AND t.producer.1 != ''
                AS producer_by_task,
            multiIf(producer_by_id, m.producer, producer_by_task, t.producer,
                    ('', '', '')) AS producer,
            producer_by_id OR producer_by_task AS has_producer,
            -- What the message carried (our consumer spans record it) proves a cause.
            multiIf(trace_context = 'absent', 'not-injected',
                    trace_context = 'malformed', 'malformed-context',
                    trace_context = 'valid', 'not-extracted',
                    '') AS carried,
            multiIf(
                state != 'orphan', '',
                side = 'WORKER', 'not-extracted',
                parent_id != '', 'parent-missing',
                has_producer, if(carried != '', carried, 'undetermined'),
                -- No producer span: a parent task id proves it was published from inside a
                -- task, unless what it carried says more.
                parent_task_id != '', if(carried IN ('', 'not-injected'),
                                         'republished-without-context', carried),
                carried != '', carried,
                'undetermined') AS cause,
            multiIf(
                cause != 'undetermined', [cause],
                has_producer, ['not-extracted', 'not-injected'],
                ['not-injected', 'republished-without-context']) AS candidates,
            multiIf(
                cause != 'undetermined', '',
                has_producer, 'celery.trace_context',
                'celery.parent_task_id') AS decided_by,
            -- Published and never consumed: no consumer carries its message id, none names
            -- it as parent or link, no orphan was matched to it by task and time. A publish
            -- that failed sent nothing.
            state = 'producer' AND NOT failed
                AND (message_id = '' OR message_id IN unconsumed_ids)
                AND NOT producer_reached
                AND NOT (anonymous AND span_id IN (SELECT producer.1 FROM by_task
                                                   WHERE span_id != producer.1))
                AS unconsumed,
            if(state = 'eager_root',
               if(c.caller.1 != '', 'not-continued', 'by-design'), '') AS verdict
        FROM own AS o
        LEFT JOIN by_message AS m ON o.message_id = m.message_id
        LEFT JOIN by_task AS t ON o.span_id = t.span_id
        LEFT JOIN callers AS c ON o.span_id = c.run_id
    )

SELECT
    ((SELECT count() FROM (SELECT span_key FROM spans GROUP BY span_key)),
     (SELECT count() FROM (SELECT reinterpretAsUInt128(unhex(trace_id)) AS trace_key
                           FROM spans GROUP BY trace_key)),
     (SELECT max(end_ns) FROM spans)) AS totals,  -- spans, traces, the newest span's end
    countIf(side != 'WORKER') AS celery_spans,
    countIf(side = 'CONSUMER') AS consumer_spans,
    countIf(state IN ('connected', 'linked')) AS connected,
    countIf(state = 'linked') AS linked,
    map('not-extracted', countIf(cause = 'not-extracted'),
        'republished-without-context', countIf(cause = 'republished-without-context'),
        'not-injected', countIf(cause = 'not-injected'),
        'malformed-context', countIf(cause = 'malformed-context'),
        'parent-missing', countIf(cause = 'parent-missing'),
        'undetermined', countIf(cause = 'undetermined')) AS causes,
    countIf(state = 'eager_root') AS eager_root_count,
    countIf(unconsumed) AS never_consumed_count,
    maxIf(start_ns, unconsumed) AS last_unconsumed_ns,
    groupUniqArrayIf(task, side = 'CONSUMER' AND NOT is_eager) AS consumed_tasks,
    -- The lists: the first {limit} by (start_ns, span_id).
    groupArraySortedIf({limit:UInt32})(
        (start_ns, span_id, trace_id, name, service, task, message_id, cause, candidates,
         decided_by, parent_id, parent_task_id, producer,
         multiIf(producer_by_id, 'message id', producer_by_task, 'task and time', '')),
        state = 'orphan') AS orphans,
    groupArraySortedIf({limit:UInt32})(
        (start_ns, span_id, trace_id, name, service, task, verdict, caller),
        state = 'eager_root') AS eager_roots,
    groupArraySortedIf({limit:UInt32})(
        (start_ns, span_id, trace_id, task, message_id),
        unconsumed) AS never_consumed
FROM judged
