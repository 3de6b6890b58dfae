"""Every environment variable that the app, the workers and the tools read is documented in
the README's Configuration table."""

import re

from harness.processes import ROOT

# os.environ.get("X"), os.environ["X"], env.get("X"): the ways this code reads a variable.
READS = re.compile(r"\b(?:os\.environ|env)(?:\.get\(|\[)\s*\"([A-Z][A-Z0-9_]*)\"")


def sources():
    # The app and tools at the root, and the packages they use; tests and benchmarks have
    # knobs of their own, documented where they are used.
    return [*ROOT.glob("*.py"), *ROOT.glob("harness/*.py"), *ROOT.glob("tracetools/*.py")]


def documented():
    """The names in the first column of the README's Configuration table."""
    section = (ROOT / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def test_every_variable_the_code_reads_is_in_the_readme():
    read = {name: path.relative_to(ROOT) for path in sources()
            for name in READS.findall(path.read_text())}
    assert read, "the pattern found no variable at all: it is out of date"
    missing = {name: str(path) for name, path in read.items() if name not in documented()}
    assert not missing, f"read but not in the README's Configuration table: {missing}"
