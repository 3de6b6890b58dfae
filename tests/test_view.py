"""The terminal timeline (tracetools/view.py) on spans made by hand: bars placed by start and
scaled by duration, queue time dotted, orphans marked as the doctor judges them."""

import json
import re

import pytest

from tests.support.traces import connected, made, normalise, orphaned
from tracetools import otlp_json, sink, view
from tracetools.doctor import diagnose
from tracetools.view import BAR_WIDTH, describe, render, timeline, verdict


def name_of(line, header):
    """The indented name on a span's LINE: what stands left of the service column."""
    return line[:header.index("service")].rstrip()


def line_of(text, name):
    found = [line for line in text.splitlines() if re.match(rf"\s*{re.escape(name)}\s", line)]
    assert len(found) == 1, (name, text)
    return found[0]


def cells(line):
    return re.search(r"\|(.{%d})\|" % BAR_WIDTH, line).group(1)


def test_each_span_gets_service_start_duration_and_a_bar_on_its_traces_time_line():
    text = render(connected())
    run = line_of(text, "celery.run tasks.process_order")
    assert "orders-worker" in run and "+60.0 ms" in run and "40.0 ms" in run
    # 0 to 100 ms over 32 cells: the run covers 60..100 ms, cells 19 to 31; the request 0..40.
    assert cells(run).rstrip().endswith("█") and cells(run).index("█") == 19
    assert cells(line_of(text, "POST /orders")) == "█" * 13 + " " * 19
    # The run waited in the queue from its parent's end (20 ms, cell 7) to its start.
    assert cells(run)[7:19] == "·" * 12
    assert "·" not in cells(line_of(text, "charge_payment"))  # started inside its parent


def test_children_are_indented_under_their_parent_in_the_order_they_started():
    header, _, *lines = render(connected()).splitlines()
    names = [name_of(line, header) for line in lines]
    assert [name.strip() for name in names] == [
        "POST /orders", "celery.apply tasks.process_order", "celery.run tasks.process_order",
        "charge_payment",
    ]
    assert [len(name) - len(name.lstrip()) for name in names] == [2, 4, 6, 8]


def test_the_orphans_marked_are_the_doctors():
    spans = orphaned()
    header, *lines = render(spans).splitlines()
    marked = {name_of(line, header).strip(): line.rsplit("orphaned: ", 1)[1]
              for line in lines if "orphaned: " in line}
    assert marked == {o["name"]: o["cause"] for o in diagnose(spans)["orphans"]}
    assert marked == {"celery.run tasks.process_order": "not-injected"}
    assert "orphaned" not in render(connected())


def test_a_worker_services_root_span_is_marked_only_when_its_service_is_named():
    spans = [made("POST /orders", "d1", "d", end=10),
             made("charge_payment", "e1", "e", start=20, end=30, service="worker")]
    assert "orphaned" not in render(spans)
    assert "orphaned: not-extracted" in line_of(render(spans, ["worker"]), "charge_payment")
    assert verdict(spans, ["worker"])["orphans"] == 1
    assert timeline(spans, ["worker"]).counts == verdict(spans, ["worker"])


def test_each_trace_says_how_long_it_is_and_when_it_started_after_the_first():
    lines = render(orphaned()).splitlines()
    assert lines[1] == f"trace 1: {'b' * 32} (40.0 ms long)"
    assert f"trace 2: {'c' * 32} (40.0 ms long, starting 60.0 ms after trace 1)" in lines


def test_errors_and_parents_never_exported_are_marked_too():
    spans = [made("POST /orders", "f1", "f", end=10, status="ERROR"),
             made("charge_payment", "g1", "g", "missing", 1, 2)]
    text = render(spans)
    assert line_of(text, "POST /orders").endswith("  ERROR")
    assert line_of(text, "charge_payment").endswith("  parent not exported")


def test_cycles_or_deep_trees_do_not_break_it():
    cycle = [made("x", "h1", "h", "h2", 0, 1), made("y", "h2", "h", "h1", 1, 2)]
    assert {"x", "y"} <= {line.split()[0] for line in render(cycle).splitlines()[1:]}
    deep = [made(f"s{i}", f"i{i}", "i", f"i{i - 1}" if i else None, i, 5000) for i in range(3000)]
    assert len(render(deep).splitlines()) == 3002


def test_a_zero_length_span_still_gets_a_cell():
    spans = [made("POST /orders", "j1", "j", start=0, end=0)]
    assert cells(line_of(render(spans), "POST /orders")).count("█") == 1


def test_describe_counts_orphaned_spans_not_only_consumer_spans():
    assert describe({"traces": 3, "orphans": 2, "spans": 6}) == "3 traces, 2 orphaned spans: broken"
    assert describe({"traces": 2, "orphans": 1, "spans": 6}) == "2 traces, 1 orphaned span: broken"
    assert describe({"traces": 1, "orphans": 0, "spans": 8}) == (
        "1 trace, no orphaned span: connected"
    )


def test_the_tutorial_check_ignores_timing_and_ids_but_not_the_shape():
    # tests/test_tutorial.py compares a fresh run with the chapter's block through normalise().
    a, b = render(connected()), render(connected(queued=900))
    assert a != b and "·" in a and "·" in b
    assert normalise(a) == normalise(b)
    other_ids = render([{**s, "trace_id": "9" * 32} for s in connected()])
    assert normalise(other_ids) == normalise(a)
    assert normalise(render(orphaned())) != normalise(a)
    assert normalise(render(connected()[:-1])) != normalise(a)


def on_the_wire(spans):
    """SPANS with ids an OTLP reader accepts: 16 hex digits, "a1" padded with zeros."""
    def pad(span_id):
        return span_id and span_id.rjust(16, "0")
    return [{**span, "span_id": pad(span["span_id"]), "parent_id": pad(span["parent_id"])}
            for span in spans]


@pytest.mark.parametrize("source", ["sink", "otlp-json"])
def test_the_command_draws_the_timelines_of_any_source_the_doctor_reads(source, tmp_path,
                                                                        capsys):
    spans = on_the_wire(connected() + orphaned())
    if source == "sink":
        path = tmp_path / "spans.db"
        sink.create(path)
        sink.write(path, spans + spans[:2])  # an export received twice: drawn once
    else:
        path = tmp_path / "spans.jsonl"
        path.write_text(json.dumps(otlp_json.document_of(spans)) + "\n")
    assert view.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out == f"{render(spans)}\n{describe(verdict(spans))}\n"
    assert "3 traces, 1 orphaned span: broken" in out


def test_the_command_says_in_one_line_why_it_cannot_read_a_source(tmp_path, capsys):
    assert view.main([str(tmp_path / "nope.db")]) == 2
    assert capsys.readouterr().err == f"view: {tmp_path / 'nope.db'}: no such file\n"
