"""The doctor's SQL on a real ClickHouse engine: chDB holding the exporter's exact tables
(both schemas), served over ClickHouse's HTTP interface by tests/support/clickhouse_endpoint.py, and
big OTLP files read with chDB. Every way must give the corpus's --json diagnosis
(tests/support/doctor_corpus.py), and bad input a one-line error and exit 2."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from harness.processes import ROOT
from tests.support import doctor_corpus
from tests.support.clickhouse_endpoint import Served, write_corpus
from tracetools import clickhouse
from tracetools.sources import SourceError

pytest.importorskip("chdb")

DEADLINE = 120  # seconds for one doctor run on a busy machine: a hang, not a slow run
ALL = ",".join(scenario.name for scenario in doctor_corpus.SCENARIOS)


@pytest.fixture(scope="module")
def served():
    """served(*options) -> the URL of an endpoint with those options, started once."""
    running = {}

    def get(*options):
        if options not in running:
            running[options] = Served(*options)
        return running[options].url

    yield get
    for endpoint in running.values():
        endpoint.stop()


def doctor(*args, env=None):
    return subprocess.run(
        [sys.executable, "doctor.py", *map(str, args)], cwd=ROOT, capture_output=True,
        text=True, timeout=DEADLINE, env={**os.environ, **(env or {})},
    )


def diagnosis_of(result):
    assert result.returncode == 1, result.stderr  # the corpus has orphans
    return doctor_corpus.without_detail(json.loads(result.stdout))


@pytest.mark.parametrize("schema", ["map", "json"])
@pytest.mark.parametrize("kinds", ["new", "old"])
def test_the_corpus_through_clickhouse_gives_the_corpus_diagnosis(served, schema, kinds):
    """Both exporter schemas (Map and JSON attribute columns), both SpanKind spellings
    ('Consumer' and 'SPAN_KIND_CONSUMER'), through the HTTP interface."""
    url = served("--schema", schema, *(["--old-kinds"] if kinds == "old" else []),
                 "--corpus", ALL)
    result = doctor(url, "--json", "--worker-service", *doctor_corpus.WORKER_SERVICES)
    assert diagnosis_of(result) == doctor_corpus.expected()


@pytest.mark.parametrize("name, compression, engine", [
    ("corpus.jsonl", "none", ["--engine", "chdb"]),
    ("corpus.jsonl.gz", "gzip", []),  # compressed: chDB, always
    ("corpus.zst", "zstd", []),  # told apart by its first bytes, not its name
])
def test_the_corpus_in_a_file_read_with_chdb_gives_the_corpus_diagnosis(
        tmp_path, name, compression, engine):
    path = write_corpus(tmp_path / name, compression)
    result = doctor(path, "--json", *engine, "--worker-service",
                    *doctor_corpus.WORKER_SERVICES)
    assert diagnosis_of(result) == doctor_corpus.expected()


def test_a_time_window_keeps_the_spans_that_started_in_it(served):
    """[since, until): whole scenario slots, so the rules hold on those scenarios alone."""
    names = ["not-injected", "malformed-context", "auto-producer-undetermined"]
    since = doctor_corpus.slot_start_ns(names[0])
    until = doctor_corpus.slot_start_ns(names[-1]) + doctor_corpus.SLOT_NS
    url = served("--corpus", ALL)
    found = clickhouse.diagnose_url(url, since, until, doctor_corpus.WORKER_SERVICES)
    assert doctor_corpus.without_detail(found.diagnosis) == \
        doctor_corpus.expected(scenarios=names)
    empty = clickhouse.diagnose_url(url, 0, doctor_corpus.START_NS)
    assert empty.diagnosis["spans"] == 0 and empty.newest_end_ns is None


def rfc3339(ns):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 10**9))


def test_the_window_of_the_command_line_goes_into_the_sql(served):
    names = ["retries", "anonymous-producers", "never-consumed"]
    since = doctor_corpus.slot_start_ns(names[0])
    until = doctor_corpus.slot_start_ns(names[-1]) + doctor_corpus.SLOT_NS
    url = served("--corpus", ALL)
    result = doctor(url, "--json", "--since", rfc3339(since), "--until", rfc3339(until))
    assert diagnosis_of(result) == doctor_corpus.expected(scenarios=names)
    # Nothing in it: the window is said, and nothing is judged.
    empty = doctor(url, "--since", "2026-01-01T00:00:00Z", "--until", "2026-01-02T00:00:00Z")
    assert "from 2026-01-01T00:00:00Z to 2026-01-02T00:00:00Z: nothing to diagnose" in \
        one_line_error(empty)


def test_limit_cuts_the_lists_not_the_counts(served):
    warnings = []
    found = clickhouse.diagnose_url(served("--corpus", ALL), limit=2,
                                    worker_services=doctor_corpus.WORKER_SERVICES,
                                    warn=warnings.append)
    whole = doctor_corpus.expected()
    assert found.diagnosis["orphans"] == \
        [dict(o, detail=found.diagnosis["orphans"][i]["detail"])
         for i, o in enumerate(whole["orphans"][:2])]
    assert found.diagnosis["causes"] == whole["causes"]
    assert f"orphans: the first 2 of {len(whole['orphans'])} (--limit)" in warnings


def test_the_report_for_people_from_clickhouse(served):
    result = doctor(served("--corpus", "not-extracted,never-consumed"))
    assert result.returncode == 1
    assert "not-extracted: 1 span (shop.refund)" in result.stdout
    assert "never-consumed: 2 messages" in result.stdout


def test_a_table_with_no_celery_span_is_judged_and_said_so(served, tmp_path):
    plain = tmp_path / "plain.jsonl"
    start = (int(time.time()) - 60) * 10**9  # inside --lookback's hour
    plain.write_text(json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
        "scopeSpans": [{"spans": [{"traceId": "1" * 32, "spanId": "2" * 16, "name": "GET /",
                                   "kind": 2, "startTimeUnixNano": str(start),
                                   "endTimeUnixNano": str(start + 1000)}]}],
    }]}) + "\n")
    result = doctor(served("--load", str(plain)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No Celery span in 1 span and 1 trace")


def one_line_error(result):
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("doctor: "), result.stderr
    return lines[0]


def test_an_empty_table_is_an_error(served):
    assert "no spans in" in one_line_error(doctor(served("--schema", "json")))


def test_a_wrong_table_is_an_error_that_says_so(served):
    url = served("--corpus", ALL).replace("table=otel_traces", "table=otel_spans")
    error = one_line_error(doctor(url))
    assert "Code: 60" in error and "UNKNOWN_TABLE" in error


def test_a_table_of_another_schema_is_an_error_that_names_the_column(served):
    url = served("--corpus", ALL).replace("/otel?table=otel_traces", "/system?table=one")
    error = one_line_error(doctor(url))
    assert "Code: 47" in error and "UNKNOWN_IDENTIFIER" in error


def test_the_login_comes_from_the_url_or_the_environment(served):
    url = served("--user", "doctor", "--password", "s3cret", "--corpus", ALL)
    refused = one_line_error(doctor(url))
    assert "Code: 516" in refused and "AUTHENTICATION_FAILED" in refused
    assert "s3cret" not in refused
    in_url = url.replace("clickhouse://", "clickhouse://doctor:s3cret@")
    assert doctor(in_url, "--json").returncode == 1
    from_env = doctor(url, "--json", env={"CLICKHOUSE_USER": "doctor",
                                          "CLICKHOUSE_PASSWORD": "s3cret"})
    assert from_env.returncode == 1, from_env.stderr


def test_a_server_that_refuses_is_an_error():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    error = one_line_error(doctor(f"clickhouse://127.0.0.1:{port}/otel"))
    assert "unreachable" in error and "refused" in error


def test_a_server_that_hangs_is_an_error_within_the_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts, and never answers
        started = time.monotonic()
        result = doctor(f"clickhouse://127.0.0.1:{silent.getsockname()[1]}/otel",
                        "--timeout", "2")
        took = time.monotonic() - started
    assert "did not answer within 2 s" in one_line_error(result)
    assert took < DEADLINE


def test_https_and_the_defaults_of_the_url(monkeypatch):
    monkeypatch.setenv("CLICKHOUSE_USER", "reader")
    monkeypatch.delenv("CLICKHOUSE_PASSWORD", raising=False)
    assert clickhouse._parse("clickhouses://ch.example") == (
        "https://ch.example:8443/", "default", "otel_traces", ("reader", ""))
    assert clickhouse._parse("clickhouse://u:p%40ss@[::1]:9000/logs?table=spans") == (
        "http://[::1]:9000/", "logs", "spans", ("u", "p@ss"))


def test_a_clickhouse_url_is_diagnosed_alone(served, tmp_path):
    other = write_corpus(tmp_path / "corpus.jsonl", "none")
    error = one_line_error(doctor(served("--corpus", ALL), other))
    assert "is diagnosed where it is read, alone" in error


def test_bad_urls_are_errors():
    for url, said in [("clickhouse://:8123/otel", "no host"),
                      ("clickhouse://host:port/otel", "port is not a number"),
                      ("clickhouse://host/otel?table=t&secure=1", "only table= is read")]:
        with pytest.raises(SourceError, match=said):
            clickhouse.diagnose_url(url)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_truncated_compressed_file_is_an_error(tmp_path, compression):
    path = write_corpus(tmp_path / f"corpus.{compression}", compression)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    error = one_line_error(doctor(path, "--json"))
    assert str(path) in error


def test_a_batch_cut_short_at_the_end_of_a_plain_file_is_left_out(tmp_path):
    path = write_corpus(tmp_path / "corpus.jsonl", "none")
    path.write_text(path.read_text() + '{"resourceSpans": [{"resource": {"attri')
    result = doctor(path, "--json", "--engine", "chdb", "--worker-service",
                    *doctor_corpus.WORKER_SERVICES)
    assert diagnosis_of(result) == doctor_corpus.expected()


def test_a_corrupt_compressed_file_is_an_error(tmp_path):
    path = tmp_path / "corrupt.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    assert str(path) in one_line_error(doctor(path))


def test_an_engine_that_is_not_installed_is_an_error(tmp_path, monkeypatch):
    from tracetools import chdb_file

    monkeypatch.setattr(chdb_file, "available", lambda: False)
    path = write_corpus(tmp_path / "corpus.jsonl.gz", "gzip")
    with pytest.raises(SourceError, match=r"needs it installed: pip install"):
        chdb_file.diagnose_file(path)
