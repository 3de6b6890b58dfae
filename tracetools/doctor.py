"""The doctor: which Celery spans are orphaned, why, and what to change.

A tracing backend shows an orphaned worker span as just another root. The doctor joins it to
its producer across traces by message id (the task id, which every Celery instrumentation
records on both sides) and names one cause from a fixed vocabulary:

  not-extracted                the producer's span for the message is in the data; the
                               consumer did not continue it
  republished-without-context  no producer span, and the message was published from inside
                               another task: a chain step, callback, errback or retry
  not-injected                 no producer span and no parent task: its publisher sent no
                               context
  parent-missing               the consumer names a parent span that never arrived

It also lists the messages that were published and never consumed. Use it as
`python doctor.py SOURCE...`, or from Python:

    from tracetools.doctor import assert_no_orphans, diagnose, load
    assert_no_orphans(load("spans.db"))   # in a test suite
    diagnose(load("traces.jsonl"))        # the --json object
"""

import sys
import textwrap
import time
from collections import Counter, defaultdict, deque
from typing import NamedTuple

from tracetools.sources import SourceError, load
from tracetools.span_record import MESSAGE_ID_KEYS

__all__ = [
    "CAUSES", "Findings", "SourceError", "assert_no_orphans", "diagnose", "examine", "load",
    "report",
]

CAUSES = ("not-extracted", "republished-without-context", "not-injected", "parent-missing")
NEVER_CONSUMED = "never-consumed"
MEANING = {
    "not-extracted": "the producer's span for the message is in the data, but the worker "
                     "did not continue its context (or, for a worker service's root span, "
                     "the worker records no consumer span at all)",
    "republished-without-context": "no producer span for the message, and it was published "
                                   "from inside another task (a chain step, callback, errback "
                                   "or retry, or a publish in the task's own code)",
    "not-injected": "no producer span for the message and no parent task: the process that "
                    "published it sent no trace context",
    "parent-missing": "the consumer names a parent span that never arrived: a process that "
                      "exited without flushing, a failed export, another sampling decision, "
                      "or a time window that cut the trace",
    NEVER_CONSUMED: "a producer span with no consumer span for its message",
}
FIX = {
    "not-extracted": "Extract in the worker from task.request, where Celery puts the message "
                     "headers (task_prerun sends none), and start the consumer span under that "
                     "context: celery_signals.install() in every worker.",
    "republished-without-context": "Inject in before_task_publish, which Celery sends for "
                                   "every message it publishes, its own included, not into "
                                   "headers= at your call sites: celery_signals.install() in "
                                   "every process.",
    "not-injected": "Inject the current context into every message in before_task_publish, in "
                    "every process that publishes: celery_signals.install() there too.",
    "parent-missing": "Make every process export its spans (flush in worker_process_shutdown "
                      "and at exit, watch for export errors), sample by parent, and read a "
                      "time window that holds whole traces.",
    NEVER_CONSUMED: "If the task ran, get its worker's spans out: flush in "
                    "worker_process_shutdown (a recycled prefork child exits with os._exit) "
                    "and watch for export errors; if it did not run, look in its queue.",
}
CHAPTER = {
    "not-extracted": "tutorial/02-why-headers-never-arrive.md",
    "republished-without-context": "tutorial/05-every-publish-path.md",
    "not-injected": "tutorial/03-build-the-fix-step-by-step.md",
    "parent-missing": "tutorial/08-in-production.md",
    NEVER_CONSUMED: "tutorial/08-in-production.md",
}
# How Celery spans are named: by this repository, then by opentelemetry-instrumentation-celery.
NAME_PREFIXES = {
    "PRODUCER": ("celery.apply ", "apply_async/"),
    "CONSUMER": ("celery.run ", "celery.revoked ", "celery.failed ", "run/"),
}
# The messaging conventions' operation, for spans whose kind does not say which side they are.
OPERATION_SIDES = {
    "send": "PRODUCER", "publish": "PRODUCER", "create": "PRODUCER",
    "process": "CONSUMER", "deliver": "CONSUMER",
}
# The current names first, then those older opentelemetry-instrumentation-celery releases wrote.
TASK_NAME_KEYS = ("celery.task.name", "celery.task_name")
# Spans this young may still have company on the way: exporters batch, backends index late.
RECENT_SECONDS = 60
REPORT_WIDTH = 92


class _Span(NamedTuple):
    """The little the doctor keeps of a span it may report: a million spans must fit."""

    side: str  # PRODUCER, CONSUMER, or WORKER for a worker service's non-Celery root
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    task: str
    message_id: str
    parent_task_id: str
    start_ns: int
    links: tuple  # span ids
    failed: bool


class Findings(NamedTuple):
    """What examine() found: the --json object, and what the report for people adds."""

    diagnosis: dict
    celery_spans: int  # producer and consumer spans recognised as Celery's
    linked: int  # root consumer spans that link to their producer: connected by design
    consumed_tasks: frozenset  # tasks with at least one consumer span in the data
    newest_end_ns: int  # None when there were no spans
    last_unconsumed_ns: int  # when the newest message nobody consumed was published


def diagnose(spans, worker_services=()):
    """The doctor's judgement of SPANS (an iterable of span records, each once, as
    tracetools.sources.load() gives them),
    as the object `doctor.py --json` prints:

    {"spans", "traces", "consumer_spans", "connected",
     "orphans": [{"trace_id", "span_id", "name", "service", "task", "message_id", "cause",
                  "detail"}],
     "never_consumed": [{"trace_id", "span_id", "task", "message_id"}],
     "causes": {cause: count}}

    A root span of a WORKER_SERVICES service that is not a Celery span is orphaned too.
    """
    return examine(spans, worker_services).diagnosis


def assert_no_orphans(spans, worker_services=()):
    """For your test suite: raise AssertionError, with the doctor's report, when a Celery span
    is orphaned or a message was never consumed (when `doctor.py` would exit 1), and when no
    Celery span is there at all: a check that cannot fail proves nothing."""
    findings = examine(spans, worker_services)
    diagnosis = findings.diagnosis
    if diagnosis["orphans"] or diagnosis["never_consumed"] or not findings.celery_spans:
        raise AssertionError("\n" + report(findings))


def examine(spans, worker_services=()):
    """diagnose(), with what the report for people needs besides: see Findings."""
    worker_services = frozenset(worker_services)
    ids, traces = set(), {}
    celery = []
    newest = None
    for span in spans:  # each once: tracetools.sources.load() sees to it
        ids.add(span["span_id"])
        # One string per trace id, however many spans keep it.
        trace_id = traces.setdefault(span["trace_id"], span["trace_id"])
        newest = span["end_ns"] if newest is None else max(newest, span["end_ns"])
        kept = _recognise(span, trace_id, worker_services)
        if kept is not None:
            celery.append(kept)
    producers = [s for s in celery if s.side == "PRODUCER"]
    consumers = [s for s in celery if s.side == "CONSUMER"]
    suspects, linked = [], 0
    for span in consumers:
        if span.parent_id in ids:
            continue
        if span.parent_id is None and span.links:
            linked += 1  # a new trace on purpose, linked to its producer
        else:
            suspects.append(span)
    connected = len(consumers) - len(suspects)
    suspects += [s for s in celery if s.side == "WORKER"]
    reached = {c.parent_id for c in consumers} | {link for c in consumers for link in c.links}
    orphans, matched = _judge(suspects, producers, consumers, reached)
    consumed = {c.message_id for c in consumers if c.message_id}
    unconsumed = [
        p for p in producers
        # A publish that failed sent no message: there is nothing to consume.
        if not p.failed and p.message_id not in consumed
        and p.span_id not in reached and p.span_id not in matched
    ]
    causes = Counter(orphan["cause"] for orphan in orphans)
    diagnosis = {
        "spans": len(ids),
        "traces": len(traces),
        "consumer_spans": len(consumers),
        "connected": connected,
        "orphans": orphans,
        "never_consumed": [
            {"trace_id": p.trace_id, "span_id": p.span_id, "task": p.task,
             "message_id": p.message_id}
            for p in unconsumed
        ],
        "causes": {cause: causes[cause] for cause in CAUSES},
    }
    return Findings(
        diagnosis, len(producers) + len(consumers), linked,
        frozenset(s.task for s in consumers), newest,
        max((p.start_ns for p in unconsumed), default=None),
    )


def _recognise(span, trace_id, worker_services):
    """The span as a _Span if it is a Celery producer or consumer, or a worker service's
    non-Celery root; else None."""
    attributes = span["attributes"]
    side = span["kind"] if span["kind"] in NAME_PREFIXES else OPERATION_SIDES.get(
        attributes.get("messaging.operation.type") or attributes.get("messaging.operation")
    )
    is_celery = side is not None and (
        attributes.get("messaging.system") == "celery"
        or any(key in attributes for key in (*TASK_NAME_KEYS, "celery.action"))
        or span["name"].startswith(NAME_PREFIXES[side])
    )
    if not is_celery:
        if span["service"] in worker_services and span["parent_id"] is None \
                and not span["links"]:
            return _keep(span, trace_id, "WORKER", task=None)
        return None
    task = next((attributes[k] for k in TASK_NAME_KEYS if attributes.get(k)), None)
    if task is None:  # from the name: "celery.run tasks.add" or "run/tasks.add"
        prefix = next((p for p in NAME_PREFIXES[side] if span["name"].startswith(p)), "")
        task = span["name"][len(prefix):]
    return _keep(span, trace_id, side, task)


def _keep(span, trace_id, side, task):
    attributes = span["attributes"]
    message_id = next((attributes[k] for k in MESSAGE_ID_KEYS if attributes.get(k)), None)
    parent_task_id = attributes.get("celery.parent_task_id") or None
    # Interned: a million spans share a handful of names, services and tasks.
    return _Span(
        side, trace_id, span["span_id"], span["parent_id"], sys.intern(span["name"]),
        span["service"] and sys.intern(span["service"]), task and sys.intern(str(task)),
        message_id and str(message_id), parent_task_id and str(parent_task_id),
        span["start_ns"], tuple(link["span_id"] for link in span["links"]),
        span["status"] == "ERROR",
    )


def _judge(suspects, producers, consumers, reached):
    """Each suspect's cause, oldest first; and the span ids of the producer spans that were
    matched to one by task name and time."""
    by_message = defaultdict(list)
    for producer in producers:
        if producer.message_id:
            by_message[producer.message_id].append(producer)
    # Producer spans that record no message id (a hand-made one around apply_async, like
    # app.py's) can only be joined by task name and time: each unconsumed one to the first
    # orphaned consumer span of its task that started after it.
    anonymous = defaultdict(deque)
    for producer in sorted(producers, key=lambda p: p.start_ns):
        if not producer.message_id and producer.span_id not in reached:
            anonymous[producer.task].append(producer)
    task_of_message = {c.message_id: c.task for c in consumers if c.message_id}
    orphans, matched = [], set()
    for span in sorted(suspects, key=lambda s: s.start_ns):
        cause, detail, anonymous_producer = _cause(span, by_message, anonymous, task_of_message)
        if anonymous_producer is not None:
            matched.add(anonymous_producer.span_id)
        orphans.append({
            "trace_id": span.trace_id, "span_id": span.span_id, "name": span.name,
            "service": span.service, "task": span.task, "message_id": span.message_id,
            "cause": cause, "detail": detail,
        })
    return orphans, matched


def _cause(span, by_message, anonymous, task_of_message):
    """(cause, detail, the producer span matched by task name and time or None)."""
    if span.side == "WORKER":
        return "not-extracted", (
            f"a root span of worker service {span.service} that is not a Celery span: the "
            "task ran with no consumer span to continue its producer's context"
        ), None
    if span.parent_id is not None:
        return "parent-missing", f"its parent span {span.parent_id} never arrived", None
    message = f"message {span.message_id}" if span.message_id else "its message (no id)"
    producer = by_message[span.message_id][0] if span.message_id in by_message else None
    if producer is not None:
        return "not-extracted", (
            f"producer span {producer.span_id} ({producer.service}, trace "
            f"{producer.trace_id}) published {message}; this consumer span started trace "
            f"{span.trace_id} instead of continuing it"
        ), None
    queue = anonymous[span.task]
    if queue and queue[0].start_ns <= span.start_ns:
        producer = queue.popleft()
        return "not-extracted", (
            f"producer span {producer.span_id} ({producer.service}, trace "
            f"{producer.trace_id}) records no message id; it is the first unconsumed publish "
            f"of {span.task} before this span started, so matched by task name and time"
        ), producer
    if span.parent_task_id:
        parent_task = task_of_message.get(span.parent_task_id)
        parent = f"{span.parent_task_id} ({parent_task})" if parent_task else span.parent_task_id
        return "republished-without-context", (
            f"no producer span for {message}; it was published from inside task {parent}, "
            "and nothing injected the context there"
        ), None
    return "not-injected", (
        f"no producer span for {message} and no parent task: its publisher sent no context "
        "(or its producer span is not in the data: another service, another time window)"
    ), None


def report(findings, now=None):
    """The report for people: each cause, worst first, with a sample, the tasks and the fix.
    NOW (time.time()) is when the reader reads it: how old the newest span is matters."""
    diagnosis = findings.diagnosis
    lines = [_wrap(_summary(findings))]
    if findings.linked == 1:
        lines.append(_wrap("1 connected consumer span started a trace of its own that links "
                           "to its producer: connected by design, not orphaned."))
    elif findings.linked:
        lines.append(_wrap(f"{findings.linked} connected consumer spans started traces of "
                           "their own that link to their producers: connected by design, not "
                           "orphaned."))
    by_cause = defaultdict(list)
    for orphan in diagnosis["orphans"]:
        by_cause[orphan["cause"]].append(orphan)
    for cause in sorted(by_cause, key=lambda c: (-len(by_cause[c]), CAUSES.index(c))):
        sample = by_cause[cause][0]
        lines += _section(cause, by_cause[cause], "span",
                          f"{sample['name']} ({sample['service']}): {sample['detail']}")
    never = diagnosis["never_consumed"]
    if never:
        lines += _section(NEVER_CONSUMED, never, "message",
                          f"message {never[0]['message_id']} of {never[0]['task']}")
        lines += _undecided(findings)
    if findings.newest_end_ns is not None:
        age = (time.time() if now is None else now) - findings.newest_end_ns / 1e9
        recent = " Spans arrive late: a trace read this soon may still be incomplete."
        lines += ["", _wrap(f"The newest span ended {_duration(age)} ago."
                            + (recent if age < RECENT_SECONDS else ""))]
    return "\n".join(lines)


def _summary(findings):
    d = findings.diagnosis
    where = f"in {d['spans']} span{_s(d['spans'])} and {d['traces']} trace{_s(d['traces'])}"
    if not findings.celery_spans and not d["orphans"]:
        return f"No Celery span {where}: nothing to judge (the right services and time window?)"
    never = len(d["never_consumed"])
    unconsumed = f"; {never} message{_s(never)} never consumed" if never else ""
    if not d["orphans"]:
        return (f"No orphaned Celery span {where}: {d['consumer_spans']} consumer "
                f"span{_s(d['consumer_spans'])}, all connected{unconsumed}.")
    return (f"{len(d['orphans'])} orphaned span{_s(len(d['orphans']))} {where} "
            f"({d['connected']} of {d['consumer_spans']} Celery consumer spans connected)"
            f"{unconsumed}. By cause, worst first:")


def _section(cause, entries, noun, sample):
    tasks = Counter(entry["task"] or "non-Celery root span" for entry in entries)
    counted = ", ".join(f"{task} x{count}" if count > 1 else task
                        for task, count in tasks.most_common())
    return [
        "",
        _wrap(f"{cause}: {len(entries)} {noun}{_s(len(entries))} ({counted})", "", "  "),
        _wrap(f"{MEANING[cause][0].upper()}{MEANING[cause][1:]}.", "  "),
        f"  sample: trace {entries[0]['trace_id']}",
        _wrap(sample, "    "),
        _wrap(f"fix: {FIX[cause]}", "  ", "       "),
        f"  read: {CHAPTER[cause]}",
    ]


def _undecided(findings):
    """What the data can and cannot say about messages nobody consumed."""
    lines = [_wrap(
        "The data cannot tell apart a message still queued (or waiting for its countdown), "
        "one revoked or expired where nothing recorded it, and one whose consumer span was "
        "lost (a prefork child recycled without a flush, a failed export, a sampling "
        "decision). It can tell:", "  ",
    )]
    for task in sorted({entry["task"] for entry in findings.diagnosis["never_consumed"]}):
        if task in findings.consumed_tasks:
            told = (f"{task}: other messages of it have consumer spans, so its workers do "
                    "record them: this message, or its span, was lost.")
        else:
            told = (f"{task}: no message of it has a consumer span: its workers record none "
                    "(--worker-service NAME counts such a worker's root spans as orphans), or "
                    "lose them all.")
        lines.append(_wrap(told, "  - ", "    "))
    gap = (findings.newest_end_ns - findings.last_unconsumed_ns) / 1e9
    lines.append(_wrap(
        f"the last of them was published {_duration(gap)} before the newest span ended"
        + (": it may still be on its way." if gap < RECENT_SECONDS else "."), "  - ", "    ",
    ))
    return lines


def _wrap(text, indent="", subsequent=None):
    # Ids and names are never broken: a trace id must stay whole to be pasted.
    return textwrap.fill(text, REPORT_WIDTH, initial_indent=indent,
                         subsequent_indent=indent if subsequent is None else subsequent,
                         break_long_words=False, break_on_hyphens=False)


def _duration(seconds):
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _s(count):
    return "" if count == 1 else "s"
