"""The doctor's judgement on hand-made spans: every cause, the Celery spans of each
instrumentation, the spans that are connected by design, and the report and check built on it.
Every rule on every source: test_doctor_conformance.py, with the corpus of doctor_corpus.py.
Real traces from real workers: test_doctor_traces.py and test_doctor_auto.py."""

import itertools
import re

import pytest

from harness.processes import ROOT
from tracetools.doctor import (
    CAUSES,
    CHAPTER,
    assert_no_orphans,
    diagnose,
    examine,
    report,
    task_from_name,
)

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


def run(message_id, under=None, name="celery.run tasks.add", attributes=None, carried=None,
        **kw):
    """This repository's CONSUMER span for MESSAGE_ID, a child of the span UNDER if given;
    CARRIED is what it says the message carried (celery.trace_context), if anything."""
    attributes = {**OURS, "messaging.operation.type": "process",
                  "messaging.message.id": message_id} if attributes is None else attributes
    if carried is not None:
        attributes = {**attributes, "celery.trace_context": carried}
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
        "eager_roots": [], "never_consumed": [], "causes": dict.fromkeys(CAUSES, 0),
    }
    assert_no_orphans(spans)


def test_a_script_producer_is_as_connected_as_a_web_request():
    # The old viewer counted a trace without a SERVER span as orphaned.
    script = span("nightly job")
    producer = publish("m1", under=script)
    assert diagnose([script, producer, run("m1", under=producer)])["orphans"] == []


def test_a_root_consumer_with_its_producer_in_the_data_is_judged_by_what_it_carried():
    consumer = run("m1", carried="valid")
    orphan = diagnose([publish("m1"), consumer])["orphans"][0]
    assert {k: orphan[k] for k in ("span_id", "task", "message_id", "cause", "candidates",
                                   "decided_by")} == {
        "span_id": consumer["span_id"], "task": "tasks.add", "message_id": "m1",
        "cause": "not-extracted", "candidates": ["not-extracted"], "decided_by": None,
    }
    assert set(orphan) == {"trace_id", "span_id", "name", "service", "task", "message_id",
                           "cause", "candidates", "decided_by", "detail"}
    assert causes([publish("m2"), run("m2", carried="absent")]) == [
        ("celery.run tasks.add", "not-injected")]
    assert causes([publish("m3"), run("m3", carried="malformed")]) == [
        ("celery.run tasks.add", "malformed-context")]


def test_a_producer_span_alone_does_not_prove_the_context_was_sent():
    # Chapter 3's first steps: a producer span is there whether or not anything was injected.
    (orphan,) = diagnose([publish("m1"), run("m1")])["orphans"]
    assert (orphan["cause"], orphan["candidates"], orphan["decided_by"]) == (
        "undetermined", ["not-extracted", "not-injected"], "celery.trace_context")


def test_a_message_published_inside_a_task_without_context_was_republished():
    parent = run("m0", carried="absent")
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
    # Its consumer spans do not say what the message carried: the doctor cannot either.
    assert (orphan["task"], orphan["message_id"], orphan["cause"], orphan["candidates"]) == (
        "tasks.add", "m1", "undetermined", ["not-extracted", "not-injected"],
    )


def test_spans_of_the_current_messaging_conventions_are_recognised_whatever_their_name():
    send = {"messaging.system": "celery", "messaging.operation.type": "send",
            "messaging.message.id": "m1"}
    producer = span("orders publish", "CLIENT", attributes=send)
    consumer = span("orders process", "INTERNAL", service="worker",
                    attributes={**send, "messaging.operation.type": "process"})
    (orphan,) = diagnose([producer, consumer])["orphans"]
    assert (orphan["name"], orphan["task"], orphan["candidates"]) == (
        "orders process", "orders", ["not-extracted", "not-injected"])


@pytest.mark.parametrize("name, task", [
    ("celery.run tasks.add", "tasks.add"), ("apply_async/tasks.add", "tasks.add"),
    ("tasks.add publish", "tasks.add"), ("publish tasks.add", "tasks.add"),
    ("tasks.add receive", "tasks.add"), ("send tasks.add", "tasks.add"),
    ("shop tasks", "shop tasks"), ("publish", "publish"),
])
def test_the_task_name_comes_from_every_shape_of_span_name(name, task):
    assert task_from_name(name) == task


def test_other_messaging_systems_are_left_alone():
    kafka = {"messaging.system": "kafka", "messaging.operation.type": "process"}
    assert diagnose([span("orders process", "CONSUMER", attributes=kafka)])["orphans"] == []


def test_a_producer_span_without_message_id_is_matched_by_task_name_and_time():
    # app.py's call-site span, made by hand around apply_async, records no message id.
    bare = {}
    earlier = publish(None, name="celery.apply tasks.add", attributes=bare)
    producer = publish(None, name="celery.apply tasks.add", attributes=bare)
    first, second = run("m1", carried="valid"), run("m2", carried="absent")
    later = publish(None, name="celery.apply tasks.add", attributes=bare)
    diagnosis = diagnose([earlier, producer, first, second, later])
    assert [o["cause"] for o in diagnosis["orphans"]] == ["not-extracted", "not-injected"]
    # The latest publish before each: not one to one, not the oldest first.
    assert all(f"producer span {producer['span_id']}" in o["detail"]
               and "matched by task name and time" in o["detail"]
               for o in diagnosis["orphans"])
    # The one published after the consumers started cannot be their producer.
    assert [n["span_id"] for n in diagnosis["never_consumed"]] == [
        earlier["span_id"], later["span_id"]]


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


def test_a_span_read_twice_counts_once():
    producer = publish("m1")
    consumer = run("m1", under=producer)
    assert diagnose([producer, consumer, dict(consumer)])["spans"] == 2


def test_the_report_puts_the_worst_cause_first_with_its_fix_and_chapter():
    spans = [run("a", carried="absent"), run("b", carried="absent"), publish("c"),
             run("c", carried="valid"), run("d", parent="00000000000000ee")]
    text = report(examine(spans), now=0)
    headings = re.findall(r"^([a-z-]+): \d+ spans?", text, re.MULTILINE)
    assert headings == ["not-injected", "not-extracted", "parent-missing"]
    assert CHAPTER["not-injected"] in text
    assert "fix: Inject the current context" in text


def test_an_undetermined_orphan_names_its_candidates_the_deciding_attribute_and_chapters():
    text = " ".join(report(examine([publish("m1"), run("m1"), run("m2")])).split())
    assert "undetermined (not-extracted or not-injected): 1 span (tasks.add)" in text
    assert "celery.trace_context on the consumer span (what the message carried" in text
    assert "undetermined (not-injected or republished-without-context): 1 span" in text
    assert "celery.parent_task_id on the consumer span (the task that published" in text
    for cause in ("not-extracted", "not-injected", "republished-without-context"):
        assert f"if {cause}: " in text and CHAPTER[cause] in text


def eager(message_id, under=None, **kw):
    """An eager run (apply()), as our consumer spans record it."""
    return run(message_id, under=under, attributes={
        **OURS, "messaging.message.id": message_id, "celery.is_eager": True}, **kw)


def test_an_eager_run_is_never_joined_to_a_message_that_shares_its_task_id():
    sent = publish("m1")
    applied = eager("m1", start=10_000_000)  # a root, and nothing open around it
    diagnosis = diagnose([sent, applied])
    assert diagnosis["orphans"] == []
    assert [(r["span_id"], r["verdict"], r["caller"]) for r in diagnosis["eager_roots"]] == [
        (applied["span_id"], "by-design", None)]
    # It consumed nothing: the message it shares an id with is still unconsumed.
    assert [n["span_id"] for n in diagnosis["never_consumed"]] == [sent["span_id"]]
    assert diagnosis["consumer_spans"] == 1 and diagnosis["connected"] == 0


def test_an_eager_root_with_its_callers_span_open_did_not_continue_it():
    job = span("nightly job", service="worker", start=0)
    job["end_ns"] = 10_000
    applied = eager("m1", start=1000)  # runs from 1000 to 1500, inside the job
    findings = examine([job, applied])
    (root,) = findings.diagnosis["eager_roots"]
    assert (root["verdict"], root["caller"]) == ("not-continued", {
        "trace_id": job["trace_id"], "span_id": job["span_id"], "name": "nightly job"})
    text = " ".join(report(findings).split())
    assert "eager run did not continue its caller" in text
    assert "not-continued: 1 eager run (tasks.add)" in text and "context.get_current()" in text
    with pytest.raises(AssertionError, match="not-continued"):
        assert_no_orphans([job, applied])


def test_an_eager_run_under_its_caller_is_connected_whoever_recorded_it():
    producer = publish("m0")
    task_span = run("m0", carried="valid", under=producer)
    auto_eager = {"celery.action": "run", "celery.task_name": "tasks.add",
                  "messaging.message_id": "m1",
                  "celery.delivery_info": "{'is_eager': True, 'exchange': None}"}
    applied = run("m1", under=task_span, name="run/tasks.add", attributes=auto_eager)
    diagnosis = diagnose([producer, task_span, applied])
    assert (diagnosis["consumer_spans"], diagnosis["connected"]) == (2, 2)


def test_the_headline_never_says_all_connected_when_something_was_not_consumed():
    producer = publish("m1")
    consumed = [producer, run("m1", under=producer)]
    assert "all connected." in report(examine(consumed))
    for spans in ([*consumed, publish("m2")], [publish("m3")]):
        headline = " ".join(report(examine(spans)).split("\n\n")[0].split())
        assert "all connected" not in headline and "never consumed" in headline, headline
    assert report(examine([publish("m3")])).startswith("No Celery consumer span")


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
