"""The README and the chapters, run as a new reader runs them: in reading order, each part
in a network namespace of its own (nothing listens there but what the prose told the reader
to start), in a fresh virtualenv that holds only what the prose has told the reader to
install so far. tests/support/reader_walk.py says how the documents mark their commands.

The virtualenvs live in ~/.cache/celery-trace-propagation/reader-venvs (READER_VENVS_CACHE
to move it), one per content of the requirements files they install: built once, by one
process at a time, and reused by every later run.
"""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.processes import ROOT
from tests.support import reader_walk, venvs

VENVS = Path(os.environ.get("READER_VENVS_CACHE") or venvs.CACHE / "reader-venvs")
PARTS = reader_walk.reading_order()
PART_DEADLINE = 1800
# A network namespace of the walk's own, with its loopback up: the commands' fixed ports
# (4318, 5000, 8000, 6379) are free there, and no Redis or RabbitMQ of this machine answers.
# A PID namespace too, with the walk as its first process: whatever happens to the walk, no
# worker or server it started outlives it.
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
           "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def namespace_problem():
    """Why the walk cannot run on this machine, or None."""
    for program in ("unshare", "ip", "bash", "curl", "git", "redis-server"):
        if shutil.which(program) is None:
            return f"the reader walk needs {program}, which is not installed"
    done = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"the reader walk cannot make a network namespace: {done.stderr.strip()}"
    return None


def fresh_clone(folder):
    """The repository's files as a clone has them (with this checkout's changes), in FOLDER."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, check=True,
                            timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    return folder


def walk(number, folder):
    """Walk part NUMBER in a copy of the repository in FOLDER: (exit status, report)."""
    clone = fresh_clone(folder / "clone")
    done = subprocess.run(
        [*UNSHARE, sys.executable, str(ROOT / "tests" / "support" / "reader_walk.py"), str(number),
         str(clone), str(VENVS)],
        capture_output=True, text=True, timeout=PART_DEADLINE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="session")
def walks(request, tmp_path_factory):
    """{part name: (exit status, report)} for the parts this session tests, two at a time."""
    problem = namespace_problem()
    if problem and os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must walk the tutorial")
    if problem:
        pytest.skip(problem)
    for files in reader_walk.needs_venv(PARTS):
        venvs.build(VENVS, "reader", [ROOT / name for name in files])
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.originalname == test_a_reader_can_run_every_command_of.__name__}
    numbers = [number for number, part in enumerate(PARTS) if part.name in selected]
    folder = tmp_path_factory.mktemp("reader-walk")
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda n: walk(n, folder / f"part-{n}"), numbers)
        return dict(zip((PARTS[n].name for n in numbers), results))


@pytest.mark.parametrize("name", [part.name for part in PARTS])
def test_a_reader_can_run_every_command_of(walks, name):
    status, report = walks[name]
    print(report)  # what ran, what did not and why: shown with -rP or -s
    assert status == 0, report


def test_every_command_not_run_is_one_the_documents_give():
    given = {(part.path.name, command.text) for part in PARTS
             for command in reader_walk.commands(part)}
    assert set(reader_walk.NOT_RUN) <= given, set(reader_walk.NOT_RUN) - given
