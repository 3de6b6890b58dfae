"""The doctor installs as a package (pyproject.toml) with its console script, on a host that
has nothing of this repository but what pip puts there."""

import json
import os
import shutil
import subprocess
import sys

from harness.processes import ROOT
from tests.support import doctor_corpus

DEADLINE = 300  # pip builds in an isolated environment: it fetches setuptools


def test_the_package_builds_and_its_console_script_diagnoses(tmp_path):
    # Built from a copy: pip builds in the source tree, and leaves build/ behind.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "doctor.py"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "tracetools", source / "tracetools",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--target", str(site), str(source)],
        check=True, timeout=DEADLINE, capture_output=True,
    )
    assert (site / "tracetools" / "sql" / "diagnosis.sql").is_file()
    spans = tmp_path / "corpus.json"
    spans.write_text(json.dumps(doctor_corpus.document()))
    # Run from elsewhere, with the installed copy first on the path: not the repository's.
    result = subprocess.run(
        [sys.executable, str(site / "bin" / "celery-trace-doctor"), str(spans), "--json",
         "--engine", "python", "--worker-service", *doctor_corpus.WORKER_SERVICES],
        cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert result.returncode == 1, result.stderr
    assert doctor_corpus.without_detail(json.loads(result.stdout)) == doctor_corpus.expected()
