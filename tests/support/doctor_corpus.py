"""The doctor's conformance corpus: scenario traces for every rule of the doctor, each span
declared with the verdict it must get, as tests/support/traces.py declares edges.

Every source the doctor reads (the sink, OTLP JSON files, Jaeger, Tempo, ClickHouse) must give
the same `--json` diagnosis of this corpus, apart from the human "detail" of each orphan:
tests/test_doctor_conformance.py holds them to expected(). The API, stable for the SQL side:

    document(start_ns=START_NS)  the corpus as one OTLP JSON object ({"resourceSpans": [...]},
                                 an ExportTraceServiceRequest): ids hex in some scenarios and
                                 base64 in others, kinds as integers or "SPAN_KIND_..." strings,
                                 one span sent twice
    expected(start_ns=START_NS, scenarios=None)
                                 the --json diagnosis, "detail" left out, of the whole corpus or
                                 of the named scenarios alone (whole slots, for time windows)
    without_detail(diagnosis)    a diagnosis with "detail" left out, to compare with expected()
    slot_start_ns(name, start_ns=START_NS)
                                 where a scenario's slot begins: its first span starts there
    WORKER_SERVICES              give each as --worker-service NAME
    SCENARIOS                    the scenarios, in time order: .name, .doc, .spans

Each scenario has a slot of its own, SLOT_NS long, in the order of SCENARIOS, and its spans lie
inside it: a time window made of whole slots keeps whole scenarios. Scenarios share nothing
that the rules join on (message ids, task names, the services of eager runs), so each one's
verdicts hold alone as well as in the whole corpus.

Only the standard library: the ClickHouse side imports this module too.
"""

import base64
import hashlib
import json
from typing import NamedTuple

START_NS = 1_798_761_600 * 10**9  # 2027-01-01T00:00:00Z
SLOT_NS = 10**9  # one second per scenario
MS = 10**6
WORKER_SERVICES = ("legacy-worker",)
KIND_NUMBERS = {"UNSPECIFIED": 0, "INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4,
                "CONSUMER": 5}
STATUS_NUMBERS = {"UNSET": 0, "OK": 1, "ERROR": 2}
MISSING = "<a parent that never arrived>"

# The attributes of each instrumentation, the message id and task name added per span.
OURS = {"messaging.system": "celery"}
AUTO_EAGER_DELIVERY_INFO = (
    "{'is_eager': True, 'exchange': None, 'routing_key': None, 'priority': None}"
)
AUTO_DELIVERY_INFO = (
    "{'exchange': '', 'routing_key': 'celery', 'priority': 0, 'redelivered': False}"
)


# -- what a span must be judged ------------------------------------------------------------

class Connected(NamedTuple):
    """A consumer span that is connected: under its parent, or a root linked to its producer
    (LINKED), or an eager run under its caller."""

    linked: bool = False


class Orphan(NamedTuple):
    """An orphan: a proven CAUSE, or "undetermined" with CANDIDATES and DECIDED_BY."""

    cause: str
    candidates: tuple = ()
    decided_by: str = None


class EagerRoot(NamedTuple):
    verdict: str  # "by-design" or "not-continued"
    caller: str = None  # the label of the caller span, for "not-continued"


class NeverConsumed(NamedTuple):
    pass


CONNECTED, LINKED, NEVER_CONSUMED = Connected(), Connected(linked=True), NeverConsumed()


def undetermined(*candidates, decided_by):
    return Orphan("undetermined", candidates, decided_by)


class Span(NamedTuple):
    label: str  # unique within its scenario; the ids derive from it
    trace: str  # a label: spans with the same one share a trace
    service: str
    name: str
    kind: str  # INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
    start_ms: float  # within the scenario's slot
    end_ms: float
    parent: str = None  # a label, MISSING, or None for a root
    attributes: dict = {}
    links: tuple = ()  # labels
    status: str = "UNSET"
    expect: object = None  # what the doctor must say of it; None: nothing


class Scenario(NamedTuple):
    name: str
    doc: str
    spans: tuple
    base64_ids: bool = False  # ids as protobuf's JSON mapping writes them (Tempo does)
    string_kinds: bool = False  # "SPAN_KIND_CONSUMER", as old Jaeger gateways wrote


def ours(task, message_id=None, side="process", **more):
    """This repository's attributes: the current names."""
    attributes = {**OURS, "celery.task.name": task, "messaging.operation.type": side}
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    return {**attributes, **more}


def auto(task, message_id, action="run", **more):
    """opentelemetry-instrumentation-celery's attributes: the older names it wrote."""
    return {"celery.action": action, "celery.task_name": task,
            "messaging.message_id": message_id, **more}


def producer(label, trace, task, message_id, start, parent=None, service="web", **kw):
    return Span(label, trace, service, f"celery.apply {task}", "PRODUCER", start, start + 2,
                parent, ours(task, message_id, "send"), **kw)


def consumer(label, trace, task, message_id, start, parent=None, service="worker",
             expect=None, **attributes):
    return Span(label, trace, service, f"celery.run {task}", "CONSUMER", start, start + 20,
                parent, ours(task, message_id, **attributes), expect=expect)


def context(value):
    return {"celery.trace_context": value}


# -- the scenarios, in time order ----------------------------------------------------------

SCENARIOS = (
    Scenario("connected", "a request publishes, the worker continues it; the consumer span "
             "was exported twice and counts once", (
        Span("request", "t1", "web", "POST /orders", "SERVER", 0, 30),
        producer("publish", "t1", "shop.place_order", "c-1", 5, parent="request"),
        consumer("run", "t1", "shop.place_order", "c-1", 40, parent="publish",
                 expect=CONNECTED, **context("valid")),
        Span("work", "t1", "worker", "charge_card", "INTERNAL", 45, 50, parent="run"),
    )),
    Scenario("not-extracted", "the producer span is there; the message carried a usable "
             "context, and the worker started a trace of its own", (
        Span("request", "t1", "web", "POST /refunds", "SERVER", 0, 30),
        producer("publish", "t1", "shop.refund", "ne-1", 5, parent="request"),
        consumer("run", "t2", "shop.refund", "ne-1", 40, expect=Orphan("not-extracted"),
                 **context("valid")),
    )),
    Scenario("not-injected", "the producer span is there; the message carried no context", (
        producer("publish", "t1", "shop.restock", "ni-1", 0),
        consumer("run", "t2", "shop.restock", "ni-1", 40, expect=Orphan("not-injected"),
                 **context("absent")),
    ), base64_ids=True),
    Scenario("malformed-context", "the producer span is there; the worker refused the "
             "context the message carried", (
        producer("publish", "t1", "shop.audit", "mc-1", 0),
        consumer("run", "t2", "shop.audit", "mc-1", 40, expect=Orphan("malformed-context"),
                 **context("malformed")),
    )),
    Scenario("auto-producer-undetermined", "opentelemetry-instrumentation-celery's spans and "
             "old attribute names: the producer span is there, and nothing says what the "
             "message carried", (
        Span("publish", "t1", "web", "apply_async/shop.export", "PRODUCER", 0, 2, None,
             auto("shop.export", "au-1", "apply_async")),
        Span("run", "t2", "worker", "run/shop.export", "CONSUMER", 40, 60, None,
             auto("shop.export", "au-1", "run", **{"celery.delivery_info": AUTO_DELIVERY_INFO}),
             expect=undetermined("not-extracted", "not-injected",
                                 decided_by="celery.trace_context")),
    ), string_kinds=True),
    Scenario("republished", "no producer span; published from inside another task, and the "
             "message carried no context", (
        consumer("run", "t1", "shop.send_invoice", "rp-1", 0,
                 expect=Orphan("republished-without-context"),
                 **{"celery.parent_task_id": "rp-0", **context("absent")}),
    )),
    Scenario("republished-unrecorded-context", "no producer span; the parent task id alone "
             "proves it was published from inside a task", (
        consumer("run", "t1", "shop.send_receipt", "ru-1", 0,
                 expect=Orphan("republished-without-context"),
                 **{"celery.parent_task_id": "ru-0"}),
    ), base64_ids=True),
    Scenario("republished-malformed", "no producer span, a parent task, and a refused context",
             (consumer("run", "t1", "shop.archive", "rm-1", 0,
                       expect=Orphan("malformed-context"),
                       **{"celery.parent_task_id": "rm-0", **context("malformed")}),)),
    Scenario("republished-extracted", "no producer span, a parent task, and a usable context "
             "the worker did not continue", (
        consumer("run", "t1", "shop.reindex", "rx-1", 0, expect=Orphan("not-extracted"),
                 **{"celery.parent_task_id": "rx-0", **context("valid")}),
    )),
    Scenario("no-producer-absent", "no producer span, no parent task, no context: our "
             "spans record the parent task when there is one", (
        consumer("run", "t1", "shop.nightly", "na-1", 0, expect=Orphan("not-injected"),
                 **context("absent")),
    )),
    Scenario("no-producer-malformed", "no producer span, no parent task, a refused context", (
        consumer("run", "t1", "shop.cleanup", "nm-1", 0, expect=Orphan("malformed-context"),
                 **context("malformed")),
    )),
    Scenario("no-producer-undetermined", "the messaging conventions' names ('<task> "
             "process'), a consumer kind written as a string, and nothing to decide with", (
        Span("run", "t1", "worker", "shop.notify process", "CONSUMER", 0, 20, None,
             {**OURS, "messaging.operation.type": "process", "messaging.message.id": "nu-1"},
             expect=undetermined("not-injected", "republished-without-context",
                                 decided_by="celery.parent_task_id")),
    ), string_kinds=True),
    Scenario("parent-missing", "the consumer names a parent span that never arrived", (
        consumer("run", "t1", "shop.ship", "pm-1", 0, parent=MISSING,
                 expect=Orphan("parent-missing"), **context("valid")),
    )),
    Scenario("linked-root", "a new trace on purpose, linked to its producer", (
        producer("publish", "t1", "shop.fan_out", "lr-1", 0),
        Span("run", "t2", "worker", "celery.run shop.fan_out", "CONSUMER", 40, 60, None,
             ours("shop.fan_out", "lr-1", **context("valid")), links=("publish",),
             expect=LINKED),
    ), base64_ids=True),
    Scenario("retries", "one message id published three times: two retries under the run "
             "that failed, and the last attempt not continued", (
        Span("request", "t1", "web", "POST /payments", "SERVER", 0, 10),
        producer("publish", "t1", "shop.charge", "rt-1", 2, parent="request"),
        consumer("run-1", "t1", "shop.charge", "rt-1", 20, parent="publish", expect=CONNECTED,
                 **{"celery.attempt": 1, **context("valid")}),
        producer("retry-1", "t1", "shop.charge", "rt-1", 30, parent="run-1",
                 service="worker"),
        consumer("run-2", "t1", "shop.charge", "rt-1", 50, parent="retry-1", expect=CONNECTED,
                 **{"celery.attempt": 2, **context("valid")}),
        producer("retry-2", "t1", "shop.charge", "rt-1", 60, parent="run-2",
                 service="worker"),
        consumer("run-3", "t2", "shop.charge", "rt-1", 80, expect=Orphan("not-extracted"),
                 **{"celery.attempt": 3, **context("valid")}),
    )),
    Scenario("anonymous-producers", "producer spans without a message id, made by hand around "
             "apply_async: each orphan is matched to the latest one of its task that started "
             "at or before it, not one to one; one its child names is not a candidate", (
        Span("old", "t1", "web", "celery.apply shop.label", "PRODUCER", 0, 2, None,
             ours("shop.label", side="send"), expect=NEVER_CONSUMED),
        Span("latest", "t2", "web", "celery.apply shop.label", "PRODUCER", 100, 102, None,
             ours("shop.label", side="send")),
        Span("parent", "t3", "web", "celery.apply shop.label", "PRODUCER", 150, 152, None,
             ours("shop.label", side="send")),
        consumer("child", "t3", "shop.label", "an-0", 160, parent="parent", expect=CONNECTED,
                 **context("valid")),
        consumer("run-1", "t4", "shop.label", "an-1", 200, expect=Orphan("not-injected"),
                 **context("absent")),
        consumer("run-2", "t5", "shop.label", "an-2", 300,
                 expect=undetermined("not-extracted", "not-injected",
                                     decided_by="celery.trace_context")),
        Span("after", "t6", "web", "celery.apply shop.label", "PRODUCER", 400, 402, None,
             ours("shop.label", side="send"), expect=NEVER_CONSUMED),
    )),
    Scenario("never-consumed", "published and never consumed; a publish that failed sent "
             "nothing to consume; a name in the conventions' shape 'publish <task>'", (
        producer("waiting", "t1", "shop.remind", "nc-1", 0, expect=NEVER_CONSUMED),
        producer("failed", "t2", "shop.remind", "nc-2", 10, status="ERROR"),
        Span("conventions", "t3", "web", "publish shop.survey", "CLIENT", 20, 22, None,
             {**OURS, "messaging.operation.type": "publish", "messaging.message.id": "nc-3"},
             expect=NEVER_CONSUMED),
    ), string_kinds=True),
    Scenario("conventions-names", "'<task> publish' on the producer and 'process <task>' on "
             "a consumer whose kind is INTERNAL: the operation says which side", (
        Span("publish", "t1", "web", "shop.invoice publish", "PRODUCER", 0, 2, None,
             {**OURS, "messaging.operation.type": "send", "messaging.message.id": "cn-1"}),
        Span("run", "t2", "worker", "process shop.invoice", "INTERNAL", 40, 60, None,
             {**OURS, "messaging.operation.type": "process", "messaging.message.id": "cn-1",
              **context("valid")},
             expect=Orphan("not-extracted")),
    )),
    Scenario("eager-under-caller", "apply() inside a task: the eager run is under its caller",
             (
        producer("publish", "t1", "shop.batch", "eu-0", 0),
        Span("caller", "t1", "worker", "celery.run shop.batch", "CONSUMER", 10, 100, "publish",
             ours("shop.batch", "eu-0", **context("valid")), expect=CONNECTED),
        Span("step", "t1", "worker", "batch step", "INTERNAL", 15, 90, "caller"),
        consumer("eager", "t1", "shop.batch_item", "eu-1", 20, parent="step", expect=CONNECTED,
                 **{"celery.is_eager": True, **context("absent")}),
    )),
    Scenario("eager-parent-missing", "an eager run names a parent that never arrived", (
        consumer("eager", "t1", "shop.price", "ep-1", 0, parent=MISSING,
                 expect=Orphan("parent-missing"), **{"celery.is_eager": True}),
    )),
    Scenario("eager-by-design", "apply() where no span was open: nothing to continue", (
        Span("earlier", "t1", "batch", "load prices", "INTERNAL", 0, 10),
        consumer("eager", "t2", "shop.convert", "eb-1", 20, service="batch",
                 expect=EagerRoot("by-design"), **{"celery.is_eager": "true",
                                                   **context("absent")}),
        # Open around the run, but of another service: not its caller.
        Span("elsewhere", "t3", "web", "GET /health", "SERVER", 15, 50),
    )),
    Scenario("eager-not-continued", "apply() under an open span of the same service, in "
             "another trace: the run did not continue its caller's context", (
        Span("outer", "t1", "cron", "cron tick", "INTERNAL", 0, 200),
        Span("job", "t1", "cron", "nightly job", "INTERNAL", 5, 150, "outer"),
        # Started as late as the job, open around the run too, and its span id is the larger
        # (f9caea265edf610d > a8ee23a73c0e1613): the twin is the caller.
        Span("twin", "t1", "cron", "nightly twin", "INTERNAL", 5, 120, "outer"),
        # Started later, ended before the run ended: not around it.
        Span("short", "t1", "cron", "warm cache", "INTERNAL", 8, 25, "job"),
        consumer("eager", "t2", "shop.rollup", "en-1", 10, service="cron",
                 expect=EagerRoot("not-continued", caller="twin"),
                 **{"celery.is_eager": True, **context("absent")}),
    ), base64_ids=True),
    Scenario("eager-shares-a-task-id", "a signature sent and also applied eagerly: the eager "
             "run (auto-instrumentation's delivery_info) is never joined to the message", (
        producer("publish", "t1", "shop.sync", "es-1", 0, expect=NEVER_CONSUMED),
        Span("eager", "t2", "sync-worker", "run/shop.sync", "CONSUMER", 40, 60, None,
             auto("shop.sync", "es-1", **{"celery.delivery_info": AUTO_EAGER_DELIVERY_INFO}),
             expect=EagerRoot("by-design")),
    )),
    Scenario("worker-service-root", "a worker that records no consumer span: its task's span "
             "is a root of the worker service", (
        producer("publish", "t1", "shop.legacy", "lw-1", 0, expect=NEVER_CONSUMED),
        Span("task", "t2", "legacy-worker", "charge legacy card", "INTERNAL", 40, 60,
             expect=Orphan("not-extracted")),
        Span("child", "t2", "legacy-worker", "legacy db call", "INTERNAL", 45, 50, "task"),
    )),
)
# Sent twice, in a batch of its own: every source must count it once.
DUPLICATED = ("connected", "run")


# -- ids, times, and the OTLP JSON document ------------------------------------------------

def _digest(*parts, size):
    return hashlib.sha256("/".join(parts).encode()).digest()[:size]


def _trace_id(scenario, trace):
    return _digest(scenario.name, "trace", trace, size=16)


def _span_id(scenario, label):
    return _digest(scenario.name, "span", label, size=8)


def _hex(raw):
    return raw.hex()


def _written(scenario, raw):
    return base64.b64encode(raw).decode() if scenario.base64_ids else raw.hex()


def slot_start_ns(name, start_ns=START_NS):
    index = next(i for i, s in enumerate(SCENARIOS) if s.name == name)
    return start_ns + index * SLOT_NS


def _ns(scenario, ms, start_ns):
    return slot_start_ns(scenario.name, start_ns) + int(ms * MS)


def _value(value):
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": str(value)}


def _otlp_span(scenario, span, start_ns):
    written = {
        "traceId": _written(scenario, _trace_id(scenario, span.trace)),
        "spanId": _written(scenario, _span_id(scenario, span.label)),
        "name": span.name,
        "kind": f"SPAN_KIND_{span.kind}" if scenario.string_kinds else KIND_NUMBERS[span.kind],
        "startTimeUnixNano": str(_ns(scenario, span.start_ms, start_ns)),
        "endTimeUnixNano": str(_ns(scenario, span.end_ms, start_ns)),
        "attributes": [{"key": k, "value": _value(v)} for k, v in span.attributes.items()],
        "status": {} if span.status == "UNSET" else {
            "code": f"STATUS_CODE_{span.status}" if scenario.string_kinds
            else STATUS_NUMBERS[span.status]},
    }
    if span.parent is not None:
        written["parentSpanId"] = _written(scenario, _span_id(scenario, span.parent))
    if span.links:
        written["links"] = [
            {"traceId": _written(scenario, _trace_id(scenario, _span(scenario, link).trace)),
             "spanId": _written(scenario, _span_id(scenario, link))}
            for link in span.links
        ]
    return written


def _span(scenario, label):
    return next(span for span in scenario.spans if span.label == label)


def _batch(service, spans):
    return {
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "doctor-corpus"}, "spans": spans}],
    }


def document(start_ns=START_NS):
    """The corpus as one OTLP JSON object: a batch per service, and the duplicate."""
    by_service = {}
    for scenario in SCENARIOS:
        for span in scenario.spans:
            by_service.setdefault(span.service, []).append(
                _otlp_span(scenario, span, start_ns))
    batches = [_batch(service, spans) for service, spans in by_service.items()]
    name, label = DUPLICATED
    scenario = next(s for s in SCENARIOS if s.name == name)
    span = _span(scenario, label)
    batches.append(_batch(span.service, [_otlp_span(scenario, span, start_ns)]))
    return {"resourceSpans": batches}


# -- the expected diagnosis ----------------------------------------------------------------

CAUSES = ("not-extracted", "republished-without-context", "not-injected",
          "malformed-context", "parent-missing", "undetermined")


def _task(span):
    # As declared, not as derived: the corpus says what the rules must make of a name.
    attributes = span.attributes
    task = attributes.get("celery.task.name") or attributes.get("celery.task_name")
    if task:
        return task
    return TASKS_FROM_NAMES.get(span.name)


# The task names the rules must read from span names: "<task> <operation>" and
# "<operation> <task>" of the messaging conventions (tracetools.doctor.task_from_name).
TASKS_FROM_NAMES = {
    "shop.notify process": "shop.notify",
    "publish shop.survey": "shop.survey",
    "shop.invoice publish": "shop.invoice",
    "process shop.invoice": "shop.invoice",
}


def _message_id(span):
    attributes = span.attributes
    return attributes.get("messaging.message.id") or attributes.get("messaging.message_id")


def expected(start_ns=START_NS, scenarios=None):
    """The --json diagnosis of the corpus (or of the SCENARIOS named), "detail" left out."""
    chosen = [s for s in SCENARIOS if scenarios is None or s.name in scenarios]
    spans = [(scenario, span) for scenario in chosen for span in scenario.spans]
    orphans, eager_roots, never_consumed = [], [], []
    consumer_spans = connected = 0
    for scenario, span in spans:
        trace_id = _hex(_trace_id(scenario, span.trace))
        span_id = _hex(_span_id(scenario, span.label))
        order = (_ns(scenario, span.start_ms, start_ns), span_id)
        expect = span.expect
        # Every consumer span is declared; a worker service's root is no consumer span.
        if isinstance(expect, (Connected, EagerRoot)) or (
                isinstance(expect, Orphan) and span.service not in WORKER_SERVICES):
            consumer_spans += 1
        if isinstance(expect, Connected):
            connected += 1
        elif isinstance(expect, Orphan):
            proven = expect.cause != "undetermined"
            orphans.append((order, {
                "trace_id": trace_id, "span_id": span_id, "name": span.name,
                "service": span.service,
                "task": None if span.service in WORKER_SERVICES else _task(span),
                "message_id": _message_id(span), "cause": expect.cause,
                "candidates": [expect.cause] if proven else list(expect.candidates),
                "decided_by": None if proven else expect.decided_by,
            }))
        elif isinstance(expect, EagerRoot):
            caller = None
            if expect.caller is not None:
                found = _span(scenario, expect.caller)
                caller = {"trace_id": _hex(_trace_id(scenario, found.trace)),
                          "span_id": _hex(_span_id(scenario, found.label)),
                          "name": found.name}
            eager_roots.append((order, {
                "trace_id": trace_id, "span_id": span_id, "name": span.name,
                "service": span.service, "task": _task(span), "verdict": expect.verdict,
                "caller": caller,
            }))
        elif isinstance(expect, NeverConsumed):
            never_consumed.append((order, {
                "trace_id": trace_id, "span_id": span_id, "task": _task(span),
                "message_id": _message_id(span),
            }))
    causes = dict.fromkeys(CAUSES, 0)
    for _, orphan in orphans:
        causes[orphan["cause"]] += 1
    return {
        "spans": len(spans),
        "traces": len({(scenario.name, span.trace) for scenario, span in spans}),
        "consumer_spans": consumer_spans,
        "connected": connected,
        "orphans": [entry for _, entry in sorted(orphans, key=lambda o: o[0])],
        "eager_roots": [entry for _, entry in sorted(eager_roots, key=lambda o: o[0])],
        "never_consumed": [entry for _, entry in sorted(never_consumed, key=lambda o: o[0])],
        "causes": causes,
    }


def without_detail(diagnosis):
    """DIAGNOSIS (a --json object) with each orphan's human "detail" left out."""
    return {**diagnosis, "orphans": [{k: v for k, v in orphan.items() if k != "detail"}
                                     for orphan in diagnosis["orphans"]]}


if __name__ == "__main__":
    # python tests/support/doctor_corpus.py > corpus.json: the corpus, to load into a store by hand.
    print(json.dumps(document()))
