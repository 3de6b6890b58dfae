"""The doctor: which Celery spans are orphaned, why, and what to change.

A tracing backend shows an orphaned worker span as just another root. The doctor joins it to
its producer across traces by message id (the task id, which every Celery instrumentation
records on both sides) and names its cause, but only as far as the spans prove it:

  not-extracted                the message carried a usable context and the worker did not
                               continue it, or a worker service records no consumer span
  republished-without-context  published from inside another task (a chain step, callback,
                               errback or retry) without a context
  not-injected                 the message carried no context at all
  malformed-context            it carried one, and the worker refused it
  parent-missing               the consumer names a parent span that never arrived
  undetermined                 the spans cannot tell two of the causes above apart: the
                               report names both and the attribute that would decide

Eager runs (apply(), task_always_eager) publish nothing: one that is a root is reported apart,
by design or as a run that did not continue its caller. The doctor also lists the messages
that were published and never consumed. Other implementations of these rules (SQL in a trace
store) must give the same judgement: tests/support/doctor_corpus.py holds each rule as a scenario.
Use it as `python doctor.py SOURCE...`, or from Python:

    from tracetools.doctor import assert_no_orphans, diagnose, load
    assert_no_orphans(load("spans.db"))   # in a test suite
    diagnose(load("traces.jsonl"))        # the --json object
"""

import bisect
import sys
import textwrap
import time
from array import array
from collections import Counter, defaultdict
from typing import NamedTuple

from tracetools import span_record
from tracetools.sources import SourceError, load
from tracetools.span_record import is_eager, message_side

__all__ = [
    "CAUSES", "Findings", "SourceError", "assert_no_orphans", "diagnose", "examine", "load",
    "report",
]

UNDETERMINED = "undetermined"
CAUSES = ("not-extracted", "republished-without-context", "not-injected", "malformed-context",
          "parent-missing", UNDETERMINED)
NEVER_CONSUMED = "never-consumed"
NOT_CONTINUED = "not-continued"  # an eager run that is a root, with its caller's span open
BY_DESIGN = "by-design"  # an eager run that is a root, and nothing open to continue
MEANING = {
    "not-extracted": "the message carried a usable trace context, but the worker did not "
                     "continue it (or, for a worker service's root span, the worker records no "
                     "consumer span at all)",
    "republished-without-context": "no producer span for the message, and it was published "
                                   "from inside another task (a chain step, callback, errback "
                                   "or retry, or a publish in the task's own code) without a "
                                   "trace context",
    "not-injected": "the message carried no trace context: the process that published it "
                    "injected none",
    "malformed-context": "the message carried a trace context and the worker refused it: "
                         "unparsable, oversized or not ASCII",
    "parent-missing": "the consumer names a parent span that never arrived: a process that "
                      "exited without flushing, a failed export, another sampling decision, "
                      "or a time window that cut the trace",
    UNDETERMINED: "the spans cannot tell these causes apart",
    NEVER_CONSUMED: "a producer span with no consumer span for its message",
    NOT_CONTINUED: "an eager run (apply(), task_always_eager) started a trace of its own while "
                   "a span of its caller was open: it did not continue the current context",
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
    "malformed-context": "Find what writes the traceparent header besides the propagator (a "
                         "call site's headers=, another library, a proxy) and let "
                         "before_task_publish inject it alone.",
    "parent-missing": "Make every process export its spans (flush in worker_process_shutdown "
                      "and at exit, watch for export errors), sample by parent, and read a "
                      "time window that holds whole traces.",
    NEVER_CONSUMED: "If the task ran, get its worker's spans out: flush in "
                    "worker_process_shutdown (a recycled prefork child exits with os._exit) "
                    "and watch for export errors; if it did not run, look in its queue.",
    NOT_CONTINUED: "In task_prerun, when request.is_eager and nothing was extracted, start the "
                   "consumer span under context.get_current(), as celery_signals does.",
}
CHAPTER = {
    "not-extracted": "tutorial/02-why-headers-never-arrive.md",
    "republished-without-context": "tutorial/05-every-publish-path.md",
    "not-injected": "tutorial/03-build-the-fix-step-by-step.md",
    "malformed-context": "tutorial/04-the-full-module-line-by-line.md",
    "parent-missing": "tutorial/08-in-production.md",
    NEVER_CONSUMED: "tutorial/08-in-production.md",
    NOT_CONTINUED: "tutorial/05-every-publish-path.md",
}
# How Celery spans are named: by this repository, then by opentelemetry-instrumentation-celery.
NAME_PREFIXES = {
    "PRODUCER": ("celery.apply ", "apply_async/"),
    "CONSUMER": ("celery.run ", "celery.revoked ", "celery.failed ", "run/"),
}
CELERY_PREFIXES = NAME_PREFIXES["PRODUCER"] + NAME_PREFIXES["CONSUMER"]
# The messaging conventions' span names, "<destination> <operation>" and the older
# "<operation> <destination>": for Celery the destination is the task.
OPERATIONS = ("publish", "process", "receive", "send")
# The current names first, then those older opentelemetry-instrumentation-celery releases wrote.
TASK_NAME_KEYS = ("celery.task.name", "celery.task_name")
# What our consumer spans record of the message: the context it carried, and whether it was
# a message at all. Other values of celery.trace_context count as not recorded.
TRACE_CONTEXTS = ("valid", "absent", "malformed")
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
    trace_context: str  # one of TRACE_CONTEXTS, or None when the span does not say
    eager: bool
    start_ns: int  # its end is in the _Timeline of its service: only eager roots need it
    links: tuple  # span ids
    failed: bool


class _Timeline:
    """When every span of one service ran, in arrays, for finding an eager run's caller
    among a million spans: 32 bytes a span, not a record."""

    def __init__(self):
        self.starts, self.ends = array("q"), array("q")
        self.span_ids = []  # the strings the doctor's set of ids holds already
        self.traces, self.names = array("i"), array("i")  # indexes into examine()'s lists
        self.by_start = self.longest = None

    def add(self, start_ns, end_ns, span_id, trace, name):
        self.starts.append(start_ns)
        self.ends.append(end_ns)
        self.span_ids.append(span_id)
        self.traces.append(trace)
        self.names.append(name)

    def caller(self, run, trace):
        """The index of the span open around RUN in another trace than TRACE (its own and
        its descendants'), the one that started last (tie: the larger span id); or None."""
        def order(i):
            return self.starts[i], self.span_ids[i]

        if self.by_start is None:
            self.by_start = sorted(range(len(self.starts)), key=order)
            self.longest = max(e - s for s, e in zip(self.starts, self.ends))
        # The run itself is in the timeline too; before it, every span that started earlier.
        position = bisect.bisect_left(self.by_start, (run.start_ns, run.span_id), key=order)
        end_ns = self.ends[self.by_start[position]]
        # Latest start first: the first that qualifies is the answer. A span that started
        # before end_ns - longest cannot have lasted until the run ended.
        last = bisect.bisect_right(self.by_start, run.start_ns, key=self.starts.__getitem__)
        for position in range(last - 1, -1, -1):
            i = self.by_start[position]
            if self.starts[i] < end_ns - self.longest:
                return None
            if self.ends[i] >= end_ns and self.traces[i] != trace:
                return i
        return None


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
    tracetools.sources.load() gives them), as the object `doctor.py --json` prints, every
    list ordered by (start, span id):

    {"spans", "traces", "consumer_spans", "connected",
     "orphans": [{"trace_id", "span_id", "name", "service", "task", "message_id", "cause",
                  "candidates", "decided_by", "detail"}],
     "eager_roots": [{"trace_id", "span_id", "name", "service", "task", "verdict",
                      "caller": None or {"trace_id", "span_id", "name"}}],
     "never_consumed": [{"trace_id", "span_id", "task", "message_id"}],
     "causes": {cause: count}}

    A root span of a WORKER_SERVICES service that is not a Celery span is orphaned too.
    """
    return examine(spans, worker_services).diagnosis


def failed(diagnosis):
    """What counts against the spans: orphans, eager runs that did not continue their
    caller, and messages never consumed. `doctor.py` exits 1 when there is any."""
    # The counts by cause, not the list of orphans: a store answers with the first --limit
    # orphans alone, but counts them all.
    return (sum(diagnosis["causes"].values()) + len(diagnosis["never_consumed"])
            + sum(root["verdict"] == NOT_CONTINUED for root in diagnosis["eager_roots"]))


def assert_no_orphans(spans, worker_services=()):
    """For your test suite: raise AssertionError, with the doctor's report, when a Celery span
    is orphaned, an eager run did not continue its caller or a message was never consumed
    (when `doctor.py` would exit 1), and when no Celery span is there at all: a check that
    cannot fail proves nothing."""
    findings = examine(spans, worker_services)
    if failed(findings.diagnosis) or not findings.celery_spans:
        raise AssertionError("\n" + report(findings))


def examine(spans, worker_services=()):
    """diagnose(), with what the report for people needs besides: see Findings."""
    worker_services = frozenset(worker_services)
    ids, traces, trace_list, names, name_list = set(), {}, [], {}, []
    timelines = defaultdict(_Timeline)
    celery = []
    newest = None
    for span in spans:  # each once: tracetools.sources.load() sees to it
        ids.add(span["span_id"])
        trace = traces.setdefault(span["trace_id"], len(traces))
        if trace == len(trace_list):
            trace_list.append(span["trace_id"])  # one string per trace id, however many spans
        name = names.setdefault(span["name"], len(names))
        if name == len(name_list):
            name_list.append(span["name"])
        timelines[span["service"]].add(span["start_ns"], span["end_ns"], span["span_id"],
                                       trace, name)
        newest = span["end_ns"] if newest is None else max(newest, span["end_ns"])
        kept = _recognise(span, trace_list[trace], worker_services)
        if kept is not None:
            celery.append(kept)
    producers = [s for s in celery if s.side == "PRODUCER"]
    consumers = [s for s in celery if s.side == "CONSUMER"]
    reached = {c.parent_id for c in consumers} | {link for c in consumers for link in c.links}
    suspects, eager_roots, linked = [], [], 0
    for span in consumers:
        if span.parent_id in ids:
            continue  # connected, eager or not
        if span.parent_id is None and span.eager:
            eager_roots.append(span)  # nothing was published: never an orphan
        elif span.parent_id is None and span.links:
            linked += 1  # a new trace on purpose, linked to its producer
        else:
            suspects.append(span)
    connected = len(consumers) - len(suspects) - len(eager_roots)
    suspects += [s for s in celery if s.side == "WORKER"]
    orphans, matched = _judge(suspects, producers, consumers, reached)
    # An eager run consumed no message, whatever id it carries.
    consumed = {c.message_id for c in consumers if c.message_id and not c.eager}
    unconsumed = _by_start([
        p for p in producers
        # A publish that failed sent no message: there is nothing to consume.
        if not p.failed and p.message_id not in consumed
        and p.span_id not in reached and p.span_id not in matched
    ])
    causes = Counter(orphan["cause"] for orphan in orphans)
    diagnosis = {
        "spans": len(ids),
        "traces": len(traces),
        "consumer_spans": len(consumers),
        "connected": connected,
        "orphans": orphans,
        "eager_roots": [
            _eager_root(run, timelines[run.service], traces[run.trace_id], trace_list,
                        name_list)
            for run in _by_start(eager_roots)
        ],
        "never_consumed": [
            {"trace_id": p.trace_id, "span_id": p.span_id, "task": p.task,
             "message_id": p.message_id}
            for p in unconsumed
        ],
        "causes": {cause: causes[cause] for cause in CAUSES},
    }
    return Findings(
        diagnosis, len(producers) + len(consumers), linked,
        frozenset(s.task for s in consumers if not s.eager), newest,
        max((p.start_ns for p in unconsumed), default=None),
    )


def _by_start(spans):
    # Every list of the diagnosis is in this order, in every implementation.
    return sorted(spans, key=lambda s: (s.start_ns, s.span_id))


def _recognise(span, trace_id, worker_services):
    """The span as a _Span if it is a Celery producer or consumer, or a worker service's
    non-Celery root; else None."""
    attributes = span["attributes"]
    side = message_side(span)
    is_celery = side is not None and (
        attributes.get("messaging.system") == "celery"
        or any(key in attributes for key in (*TASK_NAME_KEYS, "celery.action"))
        or span["name"].startswith(CELERY_PREFIXES)
    )
    if not is_celery:
        if span["service"] in worker_services and span["parent_id"] is None \
                and not span["links"]:
            return _keep(span, trace_id, "WORKER", task=None)
        return None
    task = next((attributes[k] for k in TASK_NAME_KEYS if attributes.get(k)), None)
    return _keep(span, trace_id, side, task_from_name(span["name"]) if task is None else task)


def task_from_name(name):
    """The task a Celery span's NAME names: "celery.run tasks.add", "run/tasks.add",
    "tasks.add publish" and "publish tasks.add" all name tasks.add; any other name, itself."""
    for prefix in CELERY_PREFIXES:
        if name.startswith(prefix) and name != prefix:
            return name[len(prefix):]
    destination, _, operation = name.rpartition(" ")
    if destination and operation in OPERATIONS:
        return destination
    operation, _, destination = name.partition(" ")
    if destination and operation in OPERATIONS:
        return destination
    return name


def _keep(span, trace_id, side, task):
    attributes = span["attributes"]
    parent_task_id = attributes.get("celery.parent_task_id") or None
    trace_context = attributes.get("celery.trace_context")
    # Interned: a million spans share a handful of names, services and tasks.
    return _Span(
        side, trace_id, span["span_id"], span["parent_id"], sys.intern(span["name"]),
        span["service"] and sys.intern(span["service"]), task and sys.intern(str(task)),
        span_record.message_id(span), parent_task_id and str(parent_task_id),
        sys.intern(trace_context) if trace_context in TRACE_CONTEXTS else None,
        is_eager(attributes), span["start_ns"],
        tuple(link["span_id"] for link in span["links"]), span["status"] == "ERROR",
    )


def _eager_root(run, timeline, trace, trace_list, name_list):
    caller = timeline.caller(run, trace)
    entry = {"trace_id": run.trace_id, "span_id": run.span_id, "name": run.name,
             "service": run.service, "task": run.task,
             "verdict": BY_DESIGN if caller is None else NOT_CONTINUED, "caller": None}
    if caller is not None:
        entry["caller"] = {"trace_id": trace_list[timeline.traces[caller]],
                           "span_id": timeline.span_ids[caller],
                           "name": name_list[timeline.names[caller]]}
    return entry


def _judge(suspects, producers, consumers, reached):
    """Each suspect's verdict, oldest first; and the span ids of the producer spans that
    were matched to one by task name and time."""
    by_message = defaultdict(list)
    for producer in producers:
        if producer.message_id:
            by_message[producer.message_id].append(producer)
    # Producer spans that record no message id (a hand-made one around apply_async, like
    # app.py's) can only be joined by task name and time: an orphan's is the latest one of
    # its task that started at or before it, and that no consumer span continued.
    anonymous = defaultdict(list)
    for producer in _by_start(producers):
        if not producer.message_id and producer.span_id not in reached:
            anonymous[producer.task].append(producer)
    task_of_message = {c.message_id: c.task for c in consumers if c.message_id}
    orphans, matched = [], set()
    for span in _by_start(suspects):
        producer, how = _producer(span, by_message, anonymous)
        if how == "by task name and time":
            matched.add(producer.span_id)
        cause, candidates, decided_by = _cause(span, producer)
        orphans.append({
            "trace_id": span.trace_id, "span_id": span.span_id, "name": span.name,
            "service": span.service, "task": span.task, "message_id": span.message_id,
            "cause": cause, "candidates": candidates, "decided_by": decided_by,
            "detail": _detail(span, cause, producer, how, task_of_message),
        })
    return orphans, matched


def _producer(span, by_message, anonymous):
    """(the producer span of SPAN's message, how it was found), or (None, None)."""
    if span.side == "WORKER" or span.parent_id is not None:
        return None, None
    if span.message_id in by_message:
        # Any of them: a retry publishes one id again, and each says the same.
        return by_message[span.message_id][0], "by message id"
    queue = anonymous[span.task]
    before = bisect.bisect_right(queue, span.start_ns, key=lambda p: p.start_ns)
    if before:
        return queue[before - 1], "by task name and time"
    return None, None


# What celery.trace_context proves, when the spans record it.
CONTEXT_CAUSES = {"valid": "not-extracted", "absent": "not-injected",
                  "malformed": "malformed-context"}


def _cause(span, producer):
    """(cause, candidates, decided_by) of an orphan: a cause alone when the spans prove it,
    else "undetermined", the candidates, and the attribute that would decide."""
    if span.side == "WORKER":
        return _proven("not-extracted")
    if span.parent_id is not None:
        return _proven("parent-missing")
    if producer is not None:
        if span.trace_context is None:
            return UNDETERMINED, ["not-extracted", "not-injected"], "celery.trace_context"
        return _proven(CONTEXT_CAUSES[span.trace_context])
    if span.parent_task_id:
        # Published from inside a task: proven, unless what the message carried says more.
        if span.trace_context in ("valid", "malformed"):
            return _proven(CONTEXT_CAUSES[span.trace_context])
        return _proven("republished-without-context")
    if span.trace_context is None:
        return UNDETERMINED, ["not-injected", "republished-without-context"], \
            "celery.parent_task_id"
    # Our spans always record the parent task when there is one: there is none.
    return _proven(CONTEXT_CAUSES[span.trace_context])


def _proven(cause):
    return cause, [cause], None


def _detail(span, cause, producer, how, task_of_message):
    """The evidence, in a sentence."""
    if span.side == "WORKER":
        return (f"a root span of worker service {span.service} that is not a Celery span: "
                "the task ran with no consumer span to continue its producer's context")
    if span.parent_id is not None:
        return f"its parent span {span.parent_id} never arrived"
    message = f"message {span.message_id}" if span.message_id else "its message (no id)"
    carried = {
        "valid": "it carried a usable trace context, and this consumer span did not continue "
                 "it",
        "absent": "it carried no trace context",
        "malformed": "it carried a trace context that the worker refused",
        None: "the consumer span does not record what the message carried "
              "(celery.trace_context)",
    }[span.trace_context]
    if producer is not None:
        found = (f"producer span {producer.span_id} ({producer.service}, trace "
                 f"{producer.trace_id}) published {message}")
        if how == "by task name and time":
            found += (f", matched by task name and time: it records no message id, and it is "
                      f"the latest publish of {span.task} before this span started")
        return f"{found}; {carried}"
    if span.parent_task_id:
        parent_task = task_of_message.get(span.parent_task_id)
        parent = f"{span.parent_task_id} ({parent_task})" if parent_task else span.parent_task_id
        if span.trace_context is None:
            carried = "nothing injected the context there"
        return (f"no producer span for {message}; it was published from inside task "
                f"{parent}, and {carried}")
    if cause == UNDETERMINED:
        return (f"no producer span for {message}, and the consumer span records neither a "
                "parent task (celery.parent_task_id) nor what the message carried: published "
                "by a process that injected nothing, or from inside a task")
    return f"no producer span for {message} and no parent task; {carried}"


def report(findings, now=None):
    """The report for people: each cause, worst first, with a sample, the tasks and the fix.
    NOW (time.time()) is when the reader reads it: how old the newest span is matters."""
    diagnosis = findings.diagnosis
    lines = [_wrap(_summary(findings))]
    if findings.linked:
        lines.append(_wrap(f"{_count(findings.linked, 'connected consumer span')} "
                           f"{_each(findings.linked)}started a trace of its own that links "
                           "to its producer: connected by design, not orphaned."))
    by_design = [r for r in diagnosis["eager_roots"] if r["verdict"] == BY_DESIGN]
    if by_design:
        lines.append(_wrap(f"{_count(len(by_design), 'eager run')} (apply(), "
                           f"task_always_eager) {_each(len(by_design))}started a trace with "
                           "no span of its caller open: nothing was published and there was "
                           "nothing to continue, a root by design, not orphaned."))
    sections = defaultdict(list)
    for orphan in diagnosis["orphans"]:
        sections[tuple(orphan["candidates"])].append(orphan)
    for candidates in sorted(sections, key=lambda c: (-len(sections[c]), _rank(c))):
        orphans = sections[candidates]
        sample = f"{orphans[0]['name']} ({orphans[0]['service']}): {orphans[0]['detail']}"
        lines += (_section(candidates[0], orphans, "span", sample) if len(candidates) == 1
                  else _undetermined(candidates, orphans, sample))
    not_continued = [r for r in diagnosis["eager_roots"] if r["verdict"] == NOT_CONTINUED]
    if not_continued:
        run, caller = not_continued[0], not_continued[0]["caller"]
        lines += _section(NOT_CONTINUED, not_continued, "eager run", (
            f"{run['name']} ({run['service']}): the span "
            f"{caller['name']} ({caller['span_id']}, trace {caller['trace_id']}) of the same "
            "service was open from before it started until after it ended"))
    never = diagnosis["never_consumed"]
    if never:
        message = never[0]["message_id"]
        lines += _section(NEVER_CONSUMED, never, "message",
                          f"{f'message {message}' if message else 'a message (no id)'} of "
                          f"{never[0]['task']}")
        lines += _undecided(findings)
    if findings.newest_end_ns is not None:
        age = (time.time() if now is None else now) - findings.newest_end_ns / 1e9
        recent = " Spans arrive late: a trace read this soon may still be incomplete."
        lines += ["", _wrap(f"The newest span ended {_duration(age)} ago."
                            + (recent if age < RECENT_SECONDS else ""))]
    return "\n".join(lines)


def _rank(candidates):
    return min(CAUSES.index(cause) for cause in candidates)


def _summary(findings):
    d = findings.diagnosis
    where = f"in {_count(d['spans'], 'span')} and {_count(d['traces'], 'trace')}"
    if not findings.celery_spans and not d["orphans"]:
        return f"No Celery span {where}: nothing to judge (the right services and time window?)"
    # What else failed, besides orphans: the headline never hides it behind "connected".
    also = [f"{_count(n, what)} {verb}" for n, what, verb in (
        (sum(r["verdict"] == NOT_CONTINUED for r in d["eager_roots"]), "eager run",
         "did not continue its caller"),
        (len(d["never_consumed"]), "message", "never consumed"),
    ) if n]
    if d["orphans"]:
        return (f"{_count(len(d['orphans']), 'orphaned span')} {where} "
                f"({d['connected']} of {d['consumer_spans']} Celery consumer spans connected)"
                f"{''.join(f'; {part}' for part in also)}. By cause, worst first:")
    if not d["consumer_spans"]:
        return (f"No Celery consumer span {where}, so nothing is known to be connected"
                f"{''.join(f'; {part}' for part in also)}.")
    if also:
        return (f"No orphaned Celery span {where} ({d['connected']} of "
                f"{d['consumer_spans']} Celery consumer spans connected), but "
                f"{' and '.join(also)}.")
    # Eager roots by design are neither connected nor orphaned: said on a line of their own.
    if d["connected"] < d["consumer_spans"]:
        return (f"No orphaned Celery span {where}: {d['connected']} of "
                f"{_count(d['consumer_spans'], 'consumer span')} connected.")
    return (f"No orphaned Celery span {where}: {_count(d['consumer_spans'], 'consumer span')}, "
            "all connected.")


def _section(cause, entries, noun, sample):
    return [
        "",
        _wrap(f"{cause}: {_count(len(entries), noun)} ({_tasks(entries)})", "", "  "),
        _wrap(f"{MEANING[cause][0].upper()}{MEANING[cause][1:]}.", "  "),
        f"  sample: trace {entries[0]['trace_id']}",
        _wrap(sample, "    "),
        _wrap(f"fix: {FIX[cause]}", "  ", "       "),
        f"  read: {CHAPTER[cause]}",
    ]


# What would decide an undetermined orphan, and where it comes from.
DECIDERS = {
    "celery.trace_context": "celery.trace_context on the consumer span (what the message "
                            "carried: valid, absent or malformed)",
    "celery.parent_task_id": "celery.parent_task_id on the consumer span (the task that "
                             "published the message, if one did)",
}


def _undetermined(candidates, orphans, sample):
    lines = [
        "",
        _wrap(f"{UNDETERMINED} ({' or '.join(candidates)}): {_count(len(orphans), 'span')} "
              f"({_tasks(orphans)})", "", "  "),
        _wrap(f"The spans cannot tell these apart: {DECIDERS[orphans[0]['decided_by']]} "
              "would decide, and celery_signals records it.", "  "),
        f"  sample: trace {orphans[0]['trace_id']}",
        _wrap(sample, "    "),
    ]
    for cause in candidates:
        lines += [_wrap(f"if {cause}: {FIX[cause]}", "  ", "    "),
                  f"    read: {CHAPTER[cause]}"]
    return lines


def _tasks(entries):
    tasks = Counter(entry["task"] or "non-Celery root span" for entry in entries)
    return ", ".join(f"{task} x{count}" if count > 1 else task
                     for task, count in tasks.most_common())


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


def _each(count):
    return "" if count == 1 else "each "


def _count(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"
