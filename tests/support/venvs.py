"""Virtualenvs built once per content of the requirements they install, kept between runs.

Each lives in FOLDER/NAME-HASH, HASH taken from the text of its requirements files (the
files they include with -r inlined): a later run, from any clone, reuses it, and a changed
pin builds a new one. tests/test_versions.py and tests/test_reader_walk.py build theirs here.
"""

import fcntl
import hashlib
import re
import subprocess
import sys
from pathlib import Path

CACHE = Path.home() / ".cache" / "celery-trace-propagation"
BUILD_DEADLINE = 600


def requirements_text(path):
    """PATH's text, with every `-r FILE` line replaced by FILE's text, as pip reads it."""
    path = Path(path)
    return re.sub(
        r"^-r\s+(\S+)\s*$",
        lambda line: requirements_text(path.parent / line.group(1)),
        path.read_text(), flags=re.MULTILINE,
    )


def location(folder, name, requirement_files):
    """Where the virtualenv of REQUIREMENT_FILES lives, built or not."""
    text = "".join(requirements_text(path) for path in requirement_files)
    return Path(folder) / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def build(folder, name, requirement_files, resolve=True):
    """A virtualenv with exactly what REQUIREMENT_FILES install; its python. RESOLVE=False
    installs no dependency the files do not pin themselves (pip --no-deps)."""
    venv = location(folder, name, requirement_files)
    python = venv / "bin" / "python"
    Path(folder).mkdir(parents=True, exist_ok=True)
    # One builder at a time per virtualenv: another clone's suite may be building it now.
    with open(Path(folder) / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "complete").exists():
            # No pip of its own: this interpreter's pip installs into it (pip --python), and
            # without compiling every module up front. Half the time of a full virtualenv.
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)],
                           check=True, capture_output=True, timeout=BUILD_DEADLINE)
            files = [argument for path in requirement_files for argument in ("-r", str(path))]
            subprocess.run(
                [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                 "--disable-pip-version-check", "--no-compile",
                 *([] if resolve else ["--no-deps"]), *files],
                check=True, capture_output=True, text=True, timeout=BUILD_DEADLINE,
            )
            (venv / "complete").touch()
    return python
