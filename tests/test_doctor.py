"""The doctor's judgement on hand-made spans: every cause, the Celery spans of each
instrumentation, the spans that are connected by design, and the report and check built on it.
Real traces from real workers: test_doctor_traces.py and test_doctor_auto.py."""

import itertools
import re

import pytest

from harness.processes import ROOT
from tracetools.doctor import CAUSES, CHAPTER, assert_no_orphans, diagnose, examine, report

_ids = itertools.count(1)
OURS = {"messaging.system": "celery", "celery.task.name": "tasks.add"}


def span(name, kind="INTERNAL", trace=None, parent=None, service="web", attributes=None,
         links=(), start=None, status="UNSET"):
    """A span in the trace sink's shape; ids are made up, times go up with each span."""
    number = next(_ids)
    start = number * 1000 if start is None else start
    return {
        "trace_id": trace or f"{number:032x}", "span_id": f"{number:016x}", "parent_id": parent,
        "name": name, "kind": kind, "service": service, "start_ns": start,
        "end_ns": start + 500, "status": status, "attributes": attributes or {},
        "resource": {"service.name": service},
        "links": [{"trace_id": trace or f"{number:032x}", "span_id": link} for link in links],
    }


def publish(message_id, under=None, name="celery.apply tasks.add", attributes=None, **kw):
    """This repository's PRODUCER span for MESSAGE_ID, a child of the span UNDER if given."""
    attributes = {**OURS, "messaging.operation.type": "send",
                  "messaging.message.id": message_id} if attributes is None else attributes
    return span(name, "PRODUCER", attributes=attributes, **_under(under), **kw)


def run(message_id, under=None, name="celery.run tasks.add", attributes=None, **kw):
    """This repository's CONSUMER span for MESSAGE_ID, a child of the span UNDER if given."""
    attributes = {**OURS, "messaging.operation.type": "process",
                  "messaging.message.id": message_id} if attributes is None else attributes
    return span(name, "CONSUMER", service="worker", attributes=attributes, **_under(under), **kw)


def _under(parent):
    return {"trace": parent["trace_id"], "parent": parent["span_id"]} if parent else {}


def causes(spans, **options):
    return [(o["name"], o["cause"]) for o in diagnose(spans, **options)["orphans"]]


def test_a_consumer_under_its_producer_is_connected():
    request = span("POST /orders", "SERVER")
    producer = publish("m1", under=request)
    spans = [request, producer, run("m1", under=producer)]
    diagnosis = diagnose(spans)
    assert diagnosis == {
        "spans": 3, "traces": 1, "consumer_spans": 1, "connected": 1, "orphans": [],
        "never_consumed": [], "causes": dict.fromkeys(CAUSES, 0),
    }
    assert_no_orphans(spans)


def test_a_script_producer_is_as_connected_as_a_web_request():
    # The old viewer counted a trace without a SERVER span as orphaned.
    script = span("nightly job")
    producer = publish("m1", under=script)
    assert diagnose([script, producer, run("m1", under=producer)])["orphans"] == []


def test_a_root_consumer_with_its_producer_in_the_data_was_not_extracted():
    consumer = run("m1")
    orphan = diagnose([publish("m1"), consumer])["orphans"][0]
    assert {k: orphan[k] for k in ("span_id", "task", "message_id", "cause")} == {
        "span_id": consumer["span_id"], "task": "tasks.add", "message_id": "m1",
        "cause": "not-extracted",
    }
    assert set(orphan) == {"trace_id", "span_id", "name", "service", "task", "message_id",
                           "cause", "detail"}


def test_a_message_published_inside_a_task_without_context_was_republished():
    parent = run("m0")
    child = run("m1", attributes={**OURS, "messaging.message.id": "m1",
                                  "celery.parent_task_id": "m0", "celery.root_task_id": "m0"})
    assert causes([parent, child]) == [
        ("celery.run tasks.add", "not-injected"),
        ("celery.run tasks.add", "republished-without-context"),
    ]
    assert "from inside task m0 (tasks.add)" in diagnose([parent, child])["orphans"][1]["detail"]


def test_a_consumer_whose_parent_never_arrived_misses_its_parent():
    assert causes([run("m1", parent="00000000000000ff", trace="f" * 32)]) == [
        ("celery.run tasks.add", "parent-missing")
    ]


def test_a_new_trace_that_links_to_its_producer_is_connected_by_design():
    producer = publish("m1")
    consumer = run("m1", links=[producer["span_id"]])
    findings = examine([producer, consumer])
    assert findings.diagnosis["orphans"] == findings.diagnosis["never_consumed"] == []
    assert findings.diagnosis["connected"] == 1
    assert "connected by design" in " ".join(report(findings).split())


def test_the_auto_instrumentations_spans_and_old_attribute_names_are_recognised():
    old = {"celery.action": "apply_async", "messaging.message_id": "m1",
           "celery.task_name": "tasks.add"}
    producer = publish("m1", name="apply_async/tasks.add", attributes=old)
    consumer = run("m1", name="run/tasks.add",
                   attributes={**old, "celery.action": "run"})
    (orphan,) = diagnose([producer, consumer])["orphans"]
    assert (orphan["task"], orphan["message_id"], orphan["cause"]) == (
        "tasks.add", "m1", "not-extracted",
    )


def test_spans_of_the_current_messaging_conventions_are_recognised_whatever_their_name():
    send = {"messaging.system": "celery", "messaging.operation.type": "send",
            "messaging.message.id": "m1"}
    producer = span("orders publish", "CLIENT", attributes=send)
    consumer = span("orders process", "INTERNAL", service="worker",
                    attributes={**send, "messaging.operation.type": "process"})
    assert causes([producer, consumer]) == [("orders process", "not-extracted")]


def test_other_messaging_systems_are_left_alone():
    kafka = {"messaging.system": "kafka", "messaging.operation.type": "process"}
    assert diagnose([span("orders process", "CONSUMER", attributes=kafka)])["orphans"] == []


def test_a_producer_span_without_message_id_is_matched_by_task_name_and_time():
    # app.py's call-site span, made by hand around apply_async, records no message id.
    bare = {}
    producer = publish(None, name="celery.apply tasks.add", attributes=bare)
    consumer = run("m1")
    later = publish(None, name="celery.apply tasks.add", attributes=bare)
    diagnosis = diagnose([producer, consumer, later])
    assert [o["cause"] for o in diagnosis["orphans"]] == ["not-extracted"]
    assert "matched by task name and time" in diagnosis["orphans"][0]["detail"]
    # The one published after the consumer started cannot be its producer.
    assert [n["span_id"] for n in diagnosis["never_consumed"]] == [later["span_id"]]


def test_a_producer_without_consumer_is_never_consumed_unless_its_publish_failed():
    waiting, failed = publish("m1"), publish("m2", status="ERROR")
    revoked = publish("m3")
    record = run("m3", name="celery.revoked tasks.add", under=revoked,
                 attributes={**OURS, "messaging.message.id": "m3"})
    diagnosis = diagnose([waiting, failed, revoked, record])
    assert diagnosis["never_consumed"] == [{
        "trace_id": waiting["trace_id"], "span_id": waiting["span_id"], "task": "tasks.add",
        "message_id": "m1",
    }]
    assert diagnosis["orphans"] == []


def test_a_worker_services_root_that_is_not_a_celery_span_is_orphaned_when_asked():
    task_span = span("charge_payment", service="worker")
    spans = [publish("m1"), task_span]
    assert causes(spans) == []
    assert causes(spans, worker_services=["worker"]) == [("charge_payment", "not-extracted")]
    assert diagnose(spans, worker_services=["worker"])["orphans"][0]["task"] is None


def test_the_report_puts_the_worst_cause_first_with_its_fix_and_chapter():
    spans = [run("a"), run("b"), publish("c"), run("c"), run("d", parent="00000000000000ee")]
    text = report(examine(spans), now=0)
    headings = re.findall(r"^([a-z-]+): \d+ spans?", text, re.MULTILINE)
    assert headings == ["not-injected", "not-extracted", "parent-missing"]
    assert CHAPTER["not-injected"] in text
    assert "fix: Inject the current context" in text


def test_every_chapter_the_report_points_at_exists():
    for chapter in CHAPTER.values():
        assert (ROOT / chapter).is_file(), chapter


def test_the_report_says_what_it_can_and_cannot_tell_of_unconsumed_messages():
    producer = publish("m1")
    spans = [producer, run("m1", under=producer), publish("m2")]
    text = " ".join(report(examine(spans)).split())  # as read, not as wrapped
    assert "never-consumed: 1 message (tasks.add)" in text
    assert "The data cannot tell apart" in text
    assert "other messages of it have consumer spans" in text
    assert "may still be on its way" in text


def test_the_check_for_test_suites_fails_with_the_report():
    with pytest.raises(AssertionError, match="not-injected"):
        assert_no_orphans([run("m1")])
    with pytest.raises(AssertionError, match="never-consumed"):
        assert_no_orphans([publish("m1")])
    # Spans with no Celery span at all prove nothing: the check says so rather than pass.
    with pytest.raises(AssertionError, match="No Celery span"):
        assert_no_orphans([span("GET /")])
