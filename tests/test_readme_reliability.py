"""The README's Reliability tables are the ones this run produced: each row's figure is
recorded by the test that proves it (the `figures` fixture)."""

import os

import pytest
from test_gunicorn import MODES as GUNICORN_MODES
from test_gunicorn import ROW as GUNICORN_ROW
from test_load import DEFAULT_LOAD_ORDERS, LOAD_ORDERS, LOAD_ROW, LOAD_TIMINGS_ROW
from test_sampling import SAMPLED_ROW, SAMPLED_TIMINGS_ROW
from test_sink_under_load import ROW as SINK_ROW
from test_soak import DEFAULT_SOAK_TASKS, SOAK_TASKS
from test_worker_killed import ROWS as KILLED_ROWS

from tests.support import readme_blocks

ROWS = [
    "hostile trace headers through a real worker",
    "context-leak soak, prefork pool",
    "context-leak soak, threads pool",
    "warm shutdown (SIGTERM) with every span still queued, prefork pool",
    "warm shutdown (SIGTERM) with every span still queued, threads pool",
    "a new prefork child for every task (max-tasks-per-child=1)",
    *(GUNICORN_ROW.format(mode=mode) for mode in GUNICORN_MODES),
    "hard time limit kills the pool process mid-task",
    "a pool process killed mid-task (kill -9), the task not requeued",
    "Reject(requeue=False)",
    "what the worker's main process remembers per task",
    *KILLED_ROWS,
    "collector down",
    "collector not answering",
    "broker down when an order is posted",
    "broker restarted under a running worker",
    LOAD_ROW,
    SAMPLED_ROW,
    SINK_ROW,
]
SOAK_ROWS = [row for row in ROWS if row.startswith("context-leak soak")]
# The opt-in load run's block holds its latencies and throughput too.
LOAD_ROWS = [LOAD_ROW, LOAD_TIMINGS_ROW, SAMPLED_ROW, SAMPLED_TIMINGS_ROW]


@pytest.mark.readme_table
def test_the_readme_reliability_table_is_the_one_this_run_produced(figures):
    # The default run checks the main table; an opt-in SOAK_TASKS or LOAD_ORDERS run, the
    # block of its own.
    blocks = []
    if SOAK_TASKS != DEFAULT_SOAK_TASKS:
        blocks.append((SOAK_ROWS, "reliability-soak"))
    if LOAD_ORDERS != DEFAULT_LOAD_ORDERS:
        blocks.append((LOAD_ROWS, "reliability-load"))
    for rows, block in blocks or [(ROWS, "reliability")]:
        missing = [row for row in rows if row not in figures]
        if missing:
            pytest.skip(f"not measured in this run: {missing}")
        produced = readme_blocks.table([(row, figures[row]) for row in rows])
        if block == "reliability-load" and not os.environ.get("UPDATE_README"):
            # Latencies and throughput are never the same twice: the opt-in run writes them
            # with UPDATE_README=1, and otherwise only shows them.
            print(produced)
            continue
        readme_blocks.check(block, produced)
