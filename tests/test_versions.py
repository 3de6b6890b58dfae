"""celery_signals on every Celery 5 minor, and on the oldest and newest OpenTelemetry SDK we
claim: the in-process tests, the propagation tests and two matrix cells (Redis, prefork and
threads), each in a virtualenv of its own built from tests/versions/NAME.txt (exact pins).

The virtualenvs live in ~/.cache/celery-trace-propagation/versions (VERSIONS_CACHE to move
it), one per pin file's content: a later run, from any clone, reuses them. The README's
"Tested with" table is the one this run produced.
"""

import os
import re
import subprocess
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest

from harness.processes import ROOT
from tests.support import readme_blocks, venvs

PIN_FILES = sorted((ROOT / "tests" / "versions").glob("*.txt"))
VENVS = Path(os.environ.get("VERSIONS_CACHE") or venvs.CACHE / "versions")
# On one broker, Redis: the folder broker is this repository's own, made for kombu 5.7.
INNER_TESTS = ["tests/test_celery_signals.py", "tests/test_propagation.py", "tests/test_matrix.py"]
INNER_CELLS = "fixed:redis:prefork,fixed:redis:threads"
RUN_DEADLINE = 600


def pins(pin_file):
    """{package: version} of PIN_FILE, extras left out of the names."""
    found = re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", pin_file.read_text(), re.M)
    return {name.lower(): version for name, version in found}


def build(pin_file):
    """A virtualenv with exactly PIN_FILE's packages; its python."""
    # Every package is pinned in the file, dependencies included: nothing to resolve.
    return venvs.build(VENVS, pin_file.stem, [pin_file], resolve=False)


def run(pin_file, reports):
    """Build PIN_FILE's virtualenv and run the inner tests in it, writing the junit report
    into the folder REPORTS: {tests, failures, errors, skipped, output}."""
    try:
        python = build(pin_file)
    except subprocess.CalledProcessError as error:
        return {"error": f"install failed: {(error.stderr or '')[-2000:]}"}
    report = reports / f"{pin_file.stem}.xml"
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         "-k", "not filesystem", *INNER_TESTS],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_DEADLINE,
        env={**os.environ, "MATRIX_CELLS": INNER_CELLS, "UPDATE_README": ""},
    )
    if not report.exists():
        return {"error": done.stdout[-3000:] + done.stderr[-3000:]}
    suite = ElementTree.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    counts["output"] = done.stdout[-3000:]
    return counts


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """{pin file name: what its run counted}, every version at once, three at a time."""
    VENVS.mkdir(parents=True, exist_ok=True)
    reports = tmp_path_factory.mktemp("versions")
    with ThreadPoolExecutor(3) as pool:
        counted = pool.map(lambda pin_file: run(pin_file, reports), PIN_FILES)
        return dict(zip((f.stem for f in PIN_FILES), counted))


@pytest.mark.parametrize("name", [pin_file.stem for pin_file in PIN_FILES])
def test_propagation_holds_on(runs, name):
    result = runs[name]
    assert "error" not in result, result.get("error")
    assert result["failures"] + result["errors"] == 0, result["output"]
    assert result["tests"] - result["skipped"] > 0


def render(runs):
    # First the versions requirements.txt pins, which this whole suite runs on.
    rows = [(
        *(metadata.version(name) for name in ("celery", "kombu", "opentelemetry-sdk")),
        "the whole suite (requirements.txt)",
    )]
    for pin_file in PIN_FILES:
        versions, result = pins(pin_file), runs[pin_file.stem]
        passed = result["tests"] - result["skipped"] - result["failures"] - result["errors"]
        rows.append((
            versions["celery"], versions["kombu"], versions["opentelemetry-sdk"],
            f"{passed} passed, {result['failures'] + result['errors']} failed "
            f"(tests/versions/{pin_file.name})",
        ))
    return readme_blocks.table(rows, ("celery", "kombu", "opentelemetry-sdk", "tests"))


@pytest.mark.readme_table
def test_the_readme_tested_with_table_is_the_one_this_run_produced(runs):
    if any("error" in result for result in runs.values()):
        pytest.skip("some version did not run: see its own test")
    readme_blocks.check("tested-with", render(runs))
