"""The tutorial never drifts from the code: every quoted block is in its source file, every
expected output comes from a real run of its command, and every file, test and command the
prose names exists. UPDATE_README=1 rewrites the output blocks from the run instead.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.processes import ROOT
from tests.support import readme_blocks
from tests.support.brokers import require
from tests.support.traces import normalise

DOCUMENTS = sorted((ROOT / "tutorial").glob("*.md")) + [ROOT / "README.md"]
# A marker comment, then a fenced block: <!-- quote: FILE --> or <!-- output: COMMAND -->
BLOCK = re.compile(r"<!-- (quote|output): (.+?) -->\n```\w*\n(.*?)```", re.DOTALL)
RUN_DEADLINE = 180


def blocks(kind):
    return [
        pytest.param(document, target, body, id=f"{document.name}:{target}:{number}")
        for document in DOCUMENTS
        for number, (found, target, body) in enumerate(BLOCK.findall(document.read_text()))
        if found == kind
    ]


def prose(document):
    """DOCUMENT without its fenced blocks: what the reader is told, not what is quoted."""
    return re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("document, source, block", blocks("quote"))
def test_quoted_code_is_in_its_source_file(document, source, block):
    assert block in (ROOT / source).read_text(), f"{document.name} quotes stale {source}"


def run(command):
    argv = shlex.split(command)
    assert argv[0] == "python", "output blocks run python commands"
    result = subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True,
        timeout=RUN_DEADLINE,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def outputs():
    """{command: its output}, for every command an output block names. They run side by
    side: each mostly waits on the worker processes it starts."""
    commands = sorted({command for _, command, _ in (p.values for p in blocks("output"))})
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(commands, pool.map(run, commands)))


@pytest.mark.parametrize("document, command, block", blocks("output"))
def test_expected_output_comes_from_a_real_run(outputs, document, command, block):
    output = outputs[command]
    if normalise(output) != normalise(block) and os.environ.get("UPDATE_README"):
        marker = f"<!-- output: {command} -->\n"
        text = document.read_text()
        start = text.index("\n", text.index(marker) + len(marker)) + 1  # past the opening fence
        document.write_text(text[:start] + output.rstrip("\n") + "\n" + text[start + len(block):])
        return
    assert normalise(output) == normalise(block)


def test_the_demo_shows_the_bug_and_the_fix(outputs):
    verdicts = json.loads(outputs["python demo.py --json"])  # the README shows this run
    assert verdicts["broken"]["orphans"] >= 1
    assert verdicts["inject-only"]["orphans"] >= 1
    assert verdicts["fixed"] == {"traces": 1, "orphans": 0, "spans": verdicts["fixed"]["spans"]}


def test_every_relative_link_points_at_a_file():
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to {target}"


# `path/like.this` in the prose: a file or folder of the repository.
NAMED_PATH = re.compile(r"`((?:[\w.-]+/)*[\w-]+\.(?:py|md|yml|txt|toml|png|ini)|[\w-]+/)`")
# `test_something`: a test function.
NAMED_TEST = re.compile(r"`(test_\w+)`")
# An indented command line, as the prose shows commands to type.
COMMAND = re.compile(r"^    (?:[A-Z_]+=\S+ )*python (-m ([\w.]+)|([\w/]+\.py))", re.MULTILINE)


def test_every_file_the_prose_names_exists():
    for document in DOCUMENTS:
        for path in NAMED_PATH.findall(prose(document)):
            assert (ROOT / path).exists() or (document.parent / path).exists(), (
                f"{document.name} names {path}, which does not exist"
            )


def test_every_test_the_prose_names_exists():
    defined = set()
    for test_file in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", test_file.read_text(), re.MULTILINE))
    for document in DOCUMENTS:
        for name in NAMED_TEST.findall(prose(document)):
            assert name in defined, f"{document.name} names {name}, which is no test"


def test_every_command_the_prose_gives_names_a_module_or_script_that_exists():
    for document in DOCUMENTS:
        for _, module, script in COMMAND.findall(document.read_text()):
            if module:
                path = module.replace(".", "/")
                found = (ROOT / f"{path}.py").exists() or (ROOT / path / "__main__.py").exists()
                # `python -m pytest`, `python -m celery`: installed, not ours.
                assert found or module in ("pytest", "celery", "gunicorn", "django"), (
                    f"{document.name}: python -m {module} names no module of the repository"
                )
            else:
                assert (ROOT / script).exists(), f"{document.name}: {script} does not exist"


def test_the_demo_runs_on_redis_as_the_readme_says():
    require("redis")
    assert "CELERY_BROKER_URL=redis://127.0.0.1:6379/0 python demo.py" in (
        ROOT / "README.md"
    ).read_text()
    result = subprocess.run(
        [sys.executable, "demo.py", "--json"], cwd=ROOT, capture_output=True, text=True,
        timeout=RUN_DEADLINE, env={**os.environ, "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"},
    )
    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)
    assert verdicts["broken"]["orphans"] >= 1
    assert (verdicts["fixed"]["traces"], verdicts["fixed"]["orphans"]) == (1, 0)


def test_the_production_chapter_quotes_the_readme_costs():
    # Benchmarks are not tests: the figures come from one real run of benchmarks/run.py,
    # recorded once in the README; the chapter must not drift from them.
    chapter = ROOT / "tutorial" / "08-in-production.md"
    assert readme_blocks.block("costs", chapter) == readme_blocks.block("costs")
