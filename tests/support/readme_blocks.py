"""README blocks that a test run produces, between <!-- NAME:start --> and <!-- NAME:end -->.

A test renders the block from what it measured and calls check(): the test fails when the
README holds anything else, and UPDATE_README=1 rewrites the block instead.
"""

import os

from harness.processes import ROOT

README = ROOT / "README.md"


def block(name, path=README):
    """The text between NAME's markers in PATH."""
    text = path.read_text()
    start = text.index(f"<!-- {name}:start -->\n") + len(f"<!-- {name}:start -->\n")
    return text[start:text.index(f"<!-- {name}:end -->", start)]


def check(name, produced, path=README):
    """Hold NAME's block in PATH to PRODUCED, or rewrite it with UPDATE_README=1."""
    current = block(name, path)
    if current != produced and os.environ.get("UPDATE_README"):
        path.write_text(path.read_text().replace(
            f"<!-- {name}:start -->\n{current}", f"<!-- {name}:start -->\n{produced}", 1
        ))
        return
    assert current == produced, f"{path.name}: block {name} is stale; rerun with UPDATE_README=1"


def table(rows, header=("check", "result")):
    """Markdown for ROWS, a list of (first cell, second cell) pairs."""
    lines = [f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
    lines += [f"| {' | '.join(map(str, row))} |" for row in rows]
    return "\n".join(lines) + "\n"
