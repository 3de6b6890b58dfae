"""One cell of the propagation matrix: a worker on one broker and pool, every scenario
published to it by a real tracing producer process, and the spans that came of it."""

import os
import subprocess
import sys

from harness.deployment import Deployment
from harness.processes import ROOT, wait_until_ready
from tests.support.matrix_scenarios import SCENARIOS, expected_names
from tests.support.traces import complete, names

# Threads and green threads run several tasks at once in one process: the test that
# context stays with its own task.
CONCURRENCY = {"prefork": 2, "solo": 1, "threads": 4, "gevent": 4, "eventlet": 4}
CELL_DEADLINE = 60.0
# Not matrix rows: published and checked on their own.
EXTRA_SCENARIOS = ["new_trace"]


def run_cell(sink, workdir, variant, broker, pool, includes=(),
             publisher="tests.apps.matrix_publish", env=None):
    """Start a worker, publish every scenario, return the spans once all have arrived.

    INCLUDES are more modules for the worker to load, PUBLISHER the module that publishes
    (as `python -m PUBLISHER SCENARIO...`), ENV more environment for both."""
    results_folder = workdir / "results"
    results_folder.mkdir(parents=True)
    deployment = Deployment(
        sink, workdir, variant, broker, pool=pool, concurrency=CONCURRENCY[pool],
        # One --include for all: a second one would replace the first.
        worker_args=["--include", ",".join(["tests.apps.matrix_tasks", *includes])],
        env={"MATRIX_RESULTS_FOLDER": str(results_folder), **(env or {})},
    ).start("worker")
    try:
        # The revoke scenario is a broadcast, which only workers already listening get.
        wait_until_ready(deployment.workers[0])
        subprocess.run(
            [sys.executable, "-m", publisher, *SCENARIOS, *EXTRA_SCENARIOS],
            cwd=ROOT, env={**os.environ, **deployment.env}, check=True, timeout=60,
            capture_output=True,
        )
        wanted = set().union(*map(expected_names, SCENARIOS), {"work new-trace"})
        return deployment.wait_for_spans(
            lambda spans: wanted <= names(spans) and complete(spans), deadline=CELL_DEADLINE
        )
    finally:
        deployment.stop()
