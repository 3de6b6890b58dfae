"""The README's Reliability tables are the ones this run produced: each row's figure is
recorded by the test that proves it (the `figures` fixture)."""

import pytest
import readme_blocks
from test_soak import DEFAULT_SOAK_TASKS, SOAK_TASKS

ROWS = [
    "hostile trace headers through a real worker",
    "context-leak soak, prefork pool",
    "context-leak soak, threads pool",
    "warm shutdown (SIGTERM) with every span still queued, prefork pool",
    "warm shutdown (SIGTERM) with every span still queued, threads pool",
    "a new prefork child for every task (max-tasks-per-child=1)",
    "hard time limit kills the pool process mid-task",
    "collector down",
    "collector not answering",
    "broker down when an order is posted",
    "broker restarted under a running worker",
]
SOAK_ROWS = [row for row in ROWS if row.startswith("context-leak soak")]


@pytest.mark.readme_table
def test_the_readme_reliability_table_is_the_one_this_run_produced(figures):
    # The default run checks the main table; an opt-in SOAK_TASKS run, the soak's own.
    rows, block = (ROWS, "reliability") if SOAK_TASKS == DEFAULT_SOAK_TASKS else (
        SOAK_ROWS, "reliability-soak"
    )
    missing = [row for row in rows if row not in figures]
    if missing:
        pytest.skip(f"not measured in this run: {missing}")
    readme_blocks.check(block, readme_blocks.table([(row, figures[row]) for row in rows]))
