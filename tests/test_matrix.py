"""The propagation matrix: every publish path × broker × pool, on real workers.

All cells run at once (a cell mostly waits on its broker), then each test reads its cell.
The README's table is generated from these results: UPDATE_README=1 rewrites it.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.deployment import broker_problem
from tests.support import readme_blocks
from tests.support.brokers import require
from tests.support.matrix_cells import run_cell
from tests.support.matrix_scenarios import CALL_SITE, SCENARIOS, outcome, render_table
from tests.support.traces import spans_named

BROKERS = ["filesystem", "redis", "rabbitmq"]
POOLS = ["prefork", "solo", "threads", "gevent", "eventlet"]
# call-site loses the same paths whatever the pool: one pool shows it on every broker.
CELLS = [("fixed", broker, pool) for broker in BROKERS for pool in POOLS] + [
    ("call-site", broker, "prefork") for broker in BROKERS
]
# MATRIX_CELLS=fixed:redis:prefork,... runs those cells alone (tests/test_versions.py does,
# in every Celery release's virtualenv).
SELECTED = [tuple(cell.split(":")) for cell in os.environ.get("MATRIX_CELLS", "").split(",")
            if cell]


@pytest.fixture(scope="session")
def matrix(sink, tmp_path_factory):
    """{cell: spans, or the exception that stopped the cell}; skipped brokers are absent."""
    cells = [cell for cell in SELECTED or CELLS if not broker_problem(cell[1])]

    def run(cell):
        try:
            return run_cell(sink, tmp_path_factory.mktemp("cell"), *cell)
        except Exception as error:  # reported by the cell's own test
            return error

    # Six at a time: startups are CPU-bound, and this machine has two cores.
    with ThreadPoolExecutor(6) as pool:
        return dict(zip(cells, pool.map(run, cells)))


def cell_spans(matrix, cell):
    if SELECTED and cell not in SELECTED:
        pytest.skip("not in MATRIX_CELLS")
    require(cell[1])
    spans = matrix[cell]
    if isinstance(spans, Exception):
        raise spans
    return spans


def outcomes(spans):
    return {scenario: outcome(spans, scenario) for scenario in SCENARIOS}


def expected(variant):
    losses = CALL_SITE if variant == "call-site" else {}
    return {scenario: losses.get(scenario, "connected") for scenario in SCENARIOS}


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("pool", POOLS)
def test_fixed_connects_every_publish_path(matrix, broker, pool):
    assert outcomes(cell_spans(matrix, ("fixed", broker, pool))) == expected("fixed")


@pytest.mark.parametrize("broker", BROKERS)
def test_call_site_loses_what_celery_republishes(matrix, broker):
    assert outcomes(cell_spans(matrix, ("call-site", broker, "prefork"))) == expected("call-site")


def test_each_retry_is_its_own_consumer_span_linked_to_the_attempt_before(matrix):
    spans = cell_spans(matrix, ("fixed", "redis", "prefork"))
    first, second = spans_named(spans, "celery.run matrix.flaky")
    assert (first["attributes"]["celery.attempt"], second["attributes"]["celery.attempt"]) == (1, 2)
    assert first["attributes"]["celery.state"] == "RETRY"
    assert second["attributes"]["celery.state"] == "SUCCESS"
    assert second["trace_id"] == first["trace_id"]
    assert second["links"] == [{"trace_id": first["trace_id"], "span_id": first["span_id"]}]


def test_spans_carry_the_messaging_conventions_and_the_time_in_queue(matrix):
    spans = cell_spans(matrix, ("fixed", "redis", "prefork"))
    (publish,) = [s for s in spans_named(spans, "celery.apply matrix.work")
                  if s["parent_id"] == spans_named(spans, "scenario countdown")[0]["span_id"]]
    (run,) = [s for s in spans_named(spans, "celery.run matrix.work")
              if s["parent_id"] == publish["span_id"]]
    assert publish["kind"] == "PRODUCER" and run["kind"] == "CONSUMER"
    for span, operation in ((publish, "send"), (run, "process")):
        attributes = span["attributes"]
        assert attributes["messaging.system"] == "celery"
        assert attributes["messaging.operation.type"] == operation
        assert attributes["messaging.destination.name"].endswith("-orders")
        assert attributes["celery.task.name"] == "matrix.work"
    message_id = publish["attributes"]["messaging.message.id"]
    assert run["attributes"]["messaging.message.id"] == message_id
    # countdown=1: a delay that was asked for, apart from the time the message then waited.
    scheduled = run["attributes"]["celery.scheduled_delay_ms"]
    waited = run["attributes"]["celery.queue_time_ms"]
    assert 900 < scheduled <= 1000
    # Together they are the time from publish to start, whatever the machine's load.
    assert abs((run["start_ns"] - publish["start_ns"]) / 1e6 - (scheduled + waited)) < 20


def test_a_task_revoked_before_it_starts_leaves_a_span_with_the_reason(matrix):
    spans = cell_spans(matrix, ("fixed", "redis", "prefork"))
    (revoked,) = spans_named(spans, "celery.revoked matrix.never_runs")
    assert revoked["attributes"]["celery.revoked.reason"] == "revoked"
    assert not spans_named(spans, "celery.run matrix.never_runs")


def test_the_new_trace_header_starts_a_linked_trace_instead(matrix):
    # Published with the opt-out header NEW_TRACE_HEADER, for fan-outs too big for one trace.
    spans = cell_spans(matrix, ("fixed", "redis", "prefork"))
    (scenario,) = spans_named(spans, "scenario new_trace")
    (publish,) = [s for s in spans_named(spans, "celery.apply matrix.work")
                  if s["parent_id"] == scenario["span_id"]]
    (run,) = [s for s in spans_named(spans, "celery.run matrix.work")
              if s["links"] and s["links"][0]["span_id"] == publish["span_id"]]
    assert run["parent_id"] is None
    assert run["trace_id"] != scenario["trace_id"]


@pytest.mark.readme_table
def test_the_readme_table_is_the_one_this_run_produced(matrix):
    if SELECTED or len(matrix) < len(CELLS):
        pytest.skip("some brokers did not answer: the table needs every cell")
    results = {cell: outcomes(cell_spans(matrix, cell)) for cell in CELLS}
    # A run whose cells broke their expectations fails above; it must not rewrite the table.
    assert all(results[cell] == expected(cell[0]) for cell in CELLS), "see the failed cells"
    readme_blocks.check("matrix", render_table(results))
