"""The tutorial never drifts from the code: every quoted block is in its source file, and
every expected output comes from a real run of its command."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import readme_blocks
from brokers import require
from traces import normalise

from harness.processes import ROOT

DOCUMENTS = sorted((ROOT / "tutorial").glob("*.md")) + [ROOT / "README.md"]
# A marker comment, then a fenced block: <!-- quote: FILE --> or <!-- output: COMMAND -->
BLOCK = re.compile(r"<!-- (quote|output): (.+?) -->\n```\w*\n(.*?)```", re.DOTALL)


def blocks(kind):
    return [
        pytest.param(document, target, body, id=f"{document.name}:{target}:{number}")
        for document in DOCUMENTS
        for number, (found, target, body) in enumerate(BLOCK.findall(document.read_text()))
        if found == kind
    ]


@pytest.mark.parametrize("document, source, block", blocks("quote"))
def test_quoted_code_is_in_its_source_file(document, source, block):
    assert block in (ROOT / source).read_text(), f"{document.name} quotes stale {source}"


_outputs = {}


def output_of(command):
    if command not in _outputs:
        argv = shlex.split(command)
        assert argv[0] == "python", "output blocks run python commands"
        result = subprocess.run(
            [sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        _outputs[command] = result.stdout
    return _outputs[command]


@pytest.mark.parametrize("document, command, block", blocks("output"))
def test_expected_output_comes_from_a_real_run(document, command, block):
    assert normalise(output_of(command)) == normalise(block)


def test_the_demo_shows_the_bug_and_the_fix():
    verdicts = json.loads(output_of("python demo.py --json"))
    assert verdicts["broken"]["orphans"] >= 1
    assert verdicts["inject-only"]["orphans"] >= 1
    assert verdicts["fixed"] == {"traces": 1, "orphans": 0, "spans": verdicts["fixed"]["spans"]}


def test_every_relative_link_points_at_a_file():
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to {target}"


def test_the_demo_runs_on_redis_as_the_readme_says():
    require("redis")
    assert "CELERY_BROKER_URL=redis://127.0.0.1:6379/0 python demo.py" in (
        ROOT / "README.md"
    ).read_text()
    result = subprocess.run(
        [sys.executable, "demo.py", "--json"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"},
    )
    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)
    assert verdicts["broken"]["orphans"] >= 1
    assert (verdicts["fixed"]["traces"], verdicts["fixed"]["orphans"]) == (1, 0)


def test_the_production_chapter_quotes_the_readme_costs():
    # Benchmarks are not tests: the figures come from one real run of benchmarks/run.py,
    # recorded once in the README; the chapter must not drift from them.
    chapter = ROOT / "tutorial" / "06-in-production.md"
    assert readme_blocks.block("costs", chapter) == readme_blocks.block("costs")
