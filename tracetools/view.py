"""Print stored spans as trace trees, and count what a request left disconnected."""

import argparse
from collections import defaultdict

from tracetools.doctor import diagnose
from tracetools.sink import load_spans


def render(spans):
    """Each trace as an indented tree: span name, service and duration."""
    ids = {span["span_id"] for span in spans}
    children = defaultdict(list)
    roots = []
    for span in spans:  # oldest first, so siblings print in the order they started
        if span["parent_id"] in ids:
            children[span["parent_id"]].append(span)
        else:
            roots.append(span)
    lines = []

    def walk(span, depth):
        label = "  " * depth + span["name"]
        if span["parent_id"] and span["parent_id"] not in ids:
            label += "  (parent not exported)"
        duration_ms = (span["end_ns"] - span["start_ns"]) / 1e6
        error = "  ERROR" if span["status"] == "ERROR" else ""
        lines.append(f"{label:<52} {span['service'] or '?':<14} {duration_ms:8.1f} ms{error}")
        for child in children[span["span_id"]]:
            walk(child, depth + 1)

    for number, root in enumerate(roots, 1):
        lines.append(f"trace {number}: {root['trace_id']}")
        walk(root, 1)
    return "\n".join(lines)


def verdict(spans, worker_services=()):
    """How many traces the spans form, and how many Celery spans the doctor finds orphaned:
    one judgement of connectedness, whoever asks (see tracetools.doctor.diagnose)."""
    diagnosis = diagnose(spans, worker_services)
    return {
        "traces": diagnosis["traces"],
        "orphans": len(diagnosis["orphans"]),
        "spans": diagnosis["spans"],
    }


def describe(counts):
    traces = "1 trace" if counts["traces"] == 1 else f"{counts['traces']} traces"
    orphans = counts["orphans"]
    if orphans:
        return f"{traces}, {orphans} orphaned consumer span{'s' * (orphans > 1)}: broken"
    return f"{traces}, no orphaned consumer span: connected"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("db", help="the SQLite file tracetools.sink writes")
    args = parser.parse_args()
    spans = load_spans(args.db)
    print(render(spans))
    print(describe(verdict(spans)))


if __name__ == "__main__":
    main()
