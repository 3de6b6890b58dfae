"""The doctor on real traces: every variant's order and the call-site variant's lost publish
paths, from real workers, read back from a trace sink's SQLite file and its OTLP JSON lines,
and searched in a Tempo that holds them."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pytest

import doctor
from harness.deployment import RUN_ATTRIBUTE, Deployment
from harness.fake_backends import FakeTempo
from harness.processes import ROOT, stop_all
from tests.support.doctor_expectations import CALL_SITE_ORPHANS, VARIANT_ORPHANS, judged
from tests.support.matrix_scenarios import expected_names
from tests.support.traces import REQUEST, RUN, complete, names, one
from tracetools.doctor import CHAPTER, assert_no_orphans, diagnose, examine, load, report
from tracetools.sink import TraceSink
from tracetools.view import verdict

VARIANTS = list(VARIANT_ORPHANS)
SOURCES = ["sqlite", "otlp-json"]
# Tempo is searched for the orphans' traces, not read whole: the same verdicts all the same.
READ_FROM = [*SOURCES, "tempo"]
ORDER_SPANS = {REQUEST, RUN, "send_confirmation", "render_email"}
# The README's demo verdicts (`python demo.py --json`), which view.verdict must still give.
DEMO_ORPHANS = {"broken": 2, "inject-only": 2, "call-site": 1, "fixed": 0}
# Published beside the lost paths: a new trace on purpose, linked to its producer.
NEW_TRACE = {"scenario new_trace", "work new-trace"}


class Recorded(NamedTuple):
    files: dict  # source kind: path
    runs: dict  # variant, or "scenarios": the deployment's run id


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One order per variant, and the call-site scenarios, recorded by a sink of our own."""
    folder = tmp_path_factory.mktemp("doctor")
    files = {"sqlite": str(folder / "spans.db"), "otlp-json": str(folder / "spans.jsonl")}
    with TraceSink(files["sqlite"], otlp_json_path=files["otlp-json"]) as sink:
        deployments = {
            variant: Deployment(sink, folder / variant, variant) for variant in VARIANTS
        }
        deployments["scenarios"] = Deployment(
            sink, folder / "scenarios", "call-site",
            worker_args=["--include", "tests.apps.matrix_tasks"],
            env={"MATRIX_RESULTS_FOLDER": str(folder / "results")},
        )
        for deployment in deployments.values():
            deployment.workdir.mkdir()
        (folder / "results").mkdir()  # the scenarios' result backend
        try:
            # Side by side: most of the time is process start-up, and each waits on its own.
            with ThreadPoolExecutor(len(deployments)) as pool:
                waits = [pool.submit(order, deployments[v]) for v in VARIANTS]
                waits.append(pool.submit(scenarios, deployments["scenarios"]))
                for wait in waits:
                    wait.result()
        finally:
            stop_all(p for d in deployments.values() for p in d.processes())
            for deployment in deployments.values():
                deployment.stop()
    # Every process flushed on its way out: the files hold every span now.
    return Recorded(files, {name: d.run_id for name, d in deployments.items()})


def order(deployment):
    deployment.start()
    deployment.post_order()
    deployment.wait_for_spans(lambda spans: ORDER_SPANS <= names(spans) and complete(spans))


def scenarios(deployment):
    deployment.start("worker")
    subprocess.run(
        [sys.executable, "-m", "tests.apps.matrix_publish", *CALL_SITE_ORPHANS, "new_trace"],
        cwd=ROOT, env={**os.environ, **deployment.env}, check=True, timeout=60,
        capture_output=True,
    )
    wanted = set().union(NEW_TRACE, *map(expected_names, CALL_SITE_ORPHANS))
    deployment.wait_for_spans(lambda spans: wanted <= names(spans) and complete(spans))


def spans_of(recorded, source, run):
    resource = {RUN_ATTRIBUTE: recorded.runs[run]}
    if source != "tempo":
        return list(load(recorded.files[source], resource=resource))
    with FakeTempo(load(recorded.files["sqlite"], resource=resource)) as tempo:
        return list(load(f"{tempo.url}/api/search"))


def verdicts(diagnosis):
    return {o["span_id"]: (o["cause"], o["candidates"]) for o in diagnosis["orphans"]}


def declared(recorded, source, run):
    """{span id: (cause, candidates)} that the doctor must give the spans of RUN."""
    spans = spans_of(recorded, source, run)
    if run != "scenarios":
        return {one(spans, name)["span_id"]: judged(verdict, one(spans, name))
                for name, verdict in VARIANT_ORPHANS[run].items()}
    # Each orphaned consumer span holds one `work <label>` span: found by that.
    consumer = {span["span_id"]: span for span in spans}
    return {
        work["parent_id"]: judged(verdict, consumer[work["parent_id"]])
        for losses in CALL_SITE_ORPHANS.values() for name, verdict in losses.items()
        for work in [one(spans, name)]
    }


@pytest.mark.parametrize("source", READ_FROM)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variants_orphans_get_their_declared_verdict(recorded, variant, source):
    diagnosis = diagnose(spans_of(recorded, source, variant))
    assert verdicts(diagnosis) == declared(recorded, source, variant)
    assert diagnosis["never_consumed"] == diagnosis["eager_roots"] == []
    assert diagnosis["connected"] == diagnosis["consumer_spans"] - len(diagnosis["orphans"])


@pytest.mark.parametrize("source", READ_FROM)
def test_fixed_passes_the_check_users_put_in_their_tests(recorded, source):
    assert_no_orphans(spans_of(recorded, source, "fixed"))
    with pytest.raises(AssertionError, match="not-injected"):
        assert_no_orphans(spans_of(recorded, source, "broken"))


def test_the_otlp_json_file_holds_exactly_the_spans_sqlite_holds(recorded):
    def ordered(spans):
        return sorted(spans, key=lambda span: span["span_id"])

    from_sqlite = ordered(load(recorded.files["sqlite"]))
    assert from_sqlite == ordered(load(recorded.files["otlp-json"]))
    assert len(from_sqlite) > 50


@pytest.mark.parametrize("source", READ_FROM)
def test_call_site_loses_chain_steps_and_callbacks_as_republished_without_context(
    recorded, source
):
    diagnosis = diagnose(spans_of(recorded, source, "scenarios"))
    assert verdicts(diagnosis) == declared(recorded, source, "scenarios")
    assert diagnosis["never_consumed"] == []


def test_a_new_trace_linked_to_its_producer_is_connected_by_design(recorded):
    spans = spans_of(recorded, "sqlite", "scenarios")
    (linked,) = [s for s in spans if s["parent_id"] is None and s["links"]]
    assert "work new-trace" in {s["name"] for s in spans if s["parent_id"] == linked["span_id"]}
    findings = examine(spans)
    assert linked["span_id"] not in {o["span_id"] for o in findings.diagnosis["orphans"]}
    assert findings.linked == 1
    assert "connected by design" in " ".join(report(findings).split())  # as read


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_viewers_verdict_is_the_doctors(recorded, variant):
    spans = spans_of(recorded, "sqlite", variant)
    assert verdict(spans) == {
        "traces": len({span["trace_id"] for span in spans}),
        "orphans": DEMO_ORPHANS[variant],
        "spans": len(spans),
    }


def test_the_command_reads_both_files_and_says_the_same(recorded, capsys):
    for source in SOURCES:
        assert doctor.main([recorded.files[source], "--json"]) == 1
    sqlite, otlp = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert sqlite == otlp
    causes = Counter(cause for run in recorded.runs
                     for cause, _ in declared(recorded, "sqlite", run).values())
    assert sqlite["causes"] == {cause: causes[cause] for cause in sqlite["causes"]}


def test_the_report_for_people_names_cause_fix_and_chapter(recorded):
    result = subprocess.run(
        [sys.executable, "doctor.py", recorded.files["sqlite"]],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    report = result.stdout
    verdicts = Counter(tuple(candidates) for run in recorded.runs
                       for _, candidates in declared(recorded, "sqlite", run).values())
    # A section per verdict, worst first: republished chain steps and callbacks lead.
    headings = re.findall(r"^(\S.*?): \d+ spans?", report, re.MULTILINE)
    assert sorted(headings) == sorted(
        candidates[0] if len(candidates) == 1 else f"undetermined ({' or '.join(candidates)})"
        for candidates in verdicts)
    assert headings[0] == "republished-without-context"
    assert all(CHAPTER[cause] in report for candidates in verdicts for cause in candidates)
    assert "The newest span ended" in report
