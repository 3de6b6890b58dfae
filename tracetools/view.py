"""Print spans as trace timelines, and count what a request left disconnected.

    python -m tracetools.view SOURCE [SOURCE...]

SOURCE is any the doctor reads (tracetools.sources): the trace sink's SQLite file, an OTLP
JSON file, a Jaeger 2 or Tempo query URL. Each span gets a line: its name, indented under its
parent, its service, when it started (from the first span of its trace), how long it took,
and a bar placed and scaled on the trace's own time line. Spans the doctor finds orphaned say
so on their line.
"""

import argparse
import sys
from collections import defaultdict
from typing import NamedTuple

from tracetools import sources
from tracetools.doctor import diagnose
from tracetools.span_record import Span

BAR_WIDTH = 32
BAR, WAIT, EMPTY = "█", "·", " "


class Row(NamedTuple):
    """One span of a trace, where the timeline draws it."""

    span: Span
    depth: int
    offset_ns: int  # from the start of the trace's first span
    duration_ns: int
    waited_ns: int  # from its parent's end to its start, when it started after that: queued
    orphan: str  # the doctor's cause when it finds the span orphaned, else None
    parent_missing: bool  # the span names a parent that is not in the data


class Trace(NamedTuple):
    trace_id: str
    start_ns: int
    end_ns: int
    rows: list  # of Row, each span under its parent, siblings in the order they started


class Timeline(NamedTuple):
    traces: list  # of Trace, in the order they started
    counts: dict  # verdict()'s counts


def timeline(spans, worker_services=()):
    """SPANS (span records, each once, as tracetools.sources.load() gives them) as traces of
    rows to draw, and their verdict, from one diagnosis (tracetools.doctor.diagnose): what is
    marked orphaned is what is counted."""
    spans = sorted(spans, key=lambda span: span["start_ns"])
    diagnosis = diagnose(spans, worker_services)
    orphans = {orphan["span_id"]: orphan["cause"] for orphan in diagnosis["orphans"]}
    ids = {span["span_id"] for span in spans}
    children = defaultdict(list)
    roots = defaultdict(list)  # by trace id: a trace whose root never arrived has several
    for span in spans:  # oldest first, so siblings come in the order they started
        if span["parent_id"] in ids and span["parent_id"] != span["span_id"]:
            children[span["parent_id"]].append(span)
        else:
            roots[span["trace_id"]].append(span)
    ends = {span["span_id"]: span["end_ns"] for span in spans}
    trees, placed = [], set()

    def tree(trace_roots):
        rows, stack = [], [(root, 1) for root in reversed(trace_roots)]
        while stack:  # depth first, without recursion: traces can be deep
            span, depth = stack.pop()
            if span["span_id"] in placed:
                continue
            placed.add(span["span_id"])
            rows.append((span, depth))
            stack += [(child, depth + 1) for child in reversed(children[span["span_id"]])]
        return rows

    for trace_roots in roots.values():
        trees.append(tree(trace_roots))
    # Spans whose parents form a cycle reach no root: show them rather than drop them.
    for span in spans:
        if span["span_id"] not in placed:
            trees.append(tree([span]))
    traces = []
    for rows in trees:
        start = min(span["start_ns"] for span, _ in rows)
        end = max(max(span["end_ns"], span["start_ns"]) for span, _ in rows)
        traces.append(Trace(rows[0][0]["trace_id"], start, end, [
            Row(span, depth, span["start_ns"] - start,
                max(0, span["end_ns"] - span["start_ns"]),
                max(0, span["start_ns"] - ends.get(span["parent_id"], span["start_ns"])),
                orphans.get(span["span_id"]),
                bool(span["parent_id"]) and span["parent_id"] not in ids)
            for span, depth in rows
        ]))
    traces.sort(key=lambda trace: trace.start_ns)
    return Timeline(traces, _counts(diagnosis))


def bar(row, trace, width=BAR_WIDTH):
    """Where ROW goes on its trace's time line, cut in WIDTH cells: (waited, first, last), the
    cells from waited to first its wait after its parent ended (none when it did not wait),
    from first to last (exclusive) the span itself. A span too short for a cell gets one."""
    total = max(1, trace.end_ns - trace.start_ns)
    first = min(width - 1, row.offset_ns * width // total)
    last = max(first + 1, min(width, -(-(row.offset_ns + row.duration_ns) * width // total)))
    waited = min(first, -(-(row.offset_ns - row.waited_ns) * width // total))
    return waited, first, last


def marks(row):
    """What a span's line says besides its timing: error, orphaned, parent not exported."""
    found = []
    if row.span["status"] == "ERROR":
        found.append("ERROR")
    if row.orphan:
        found.append(f"orphaned: {row.orphan}")
    elif row.parent_missing:
        found.append("parent not exported")
    return found


def render(spans, worker_services=()):
    """Each trace as a timeline: per span its indented name, service, start (from the trace's
    first span), duration and a bar, dotted from its parent's end when it started after that
    (queued), and a mark on the spans the doctor finds orphaned.
    WORKER_SERVICES as for verdict(): their non-Celery root spans are orphans too."""
    traces = timeline(spans, worker_services).traces
    if not traces:
        return ""
    cells = {}  # per row: name, service, start, duration
    for trace in traces:
        for row in trace.rows:
            cells[id(row)] = ("  " * row.depth + row.span["name"], row.span["service"] or "?",
                              "+" + ms(row.offset_ns), ms(row.duration_ns))
    head = ("span", "service", "start", "duration")
    widths = [max(len(column[i]) for column in (head, *cells.values())) for i in range(4)]

    def columns(values):
        name, service, start, duration = values
        return (f"{name:<{widths[0]}}  {service:<{widths[1]}}  {start:>{widths[2]}}"
                f"  {duration:>{widths[3]}}")

    lines = [f"{columns(head)}  {'timeline':^{BAR_WIDTH + 2}}  {WAIT * 3} queued".rstrip()]
    first_start = traces[0].start_ns
    for number, trace in enumerate(traces, 1):
        length = f"{ms(trace.end_ns - trace.start_ns)} long"
        if number > 1:
            length += f", starting {ms(trace.start_ns - first_start)} after trace 1"
        lines.append(f"trace {number}: {trace.trace_id} ({length})")
        for row in trace.rows:
            waited, first, last = bar(row, trace)
            drawn = (EMPTY * waited + WAIT * (first - waited) + BAR * (last - first)
                     + EMPTY * (BAR_WIDTH - last))
            lines.append("  ".join([f"{columns(cells[id(row)])}  |{drawn}|", *marks(row)]))
    return "\n".join(lines)


def verdict(spans, worker_services=()):
    """How many traces the spans form, and how many spans the doctor finds orphaned: one
    judgement of connectedness, whoever asks (see tracetools.doctor.diagnose). A root span
    of a WORKER_SERVICES service that is not a Celery span is orphaned too."""
    return _counts(diagnose(spans, worker_services))


def describe(counts):
    traces = "1 trace" if counts["traces"] == 1 else f"{counts['traces']} traces"
    orphans = counts["orphans"]
    if orphans:
        return f"{traces}, {orphans} orphaned span{'s' * (orphans > 1)}: broken"
    return f"{traces}, no orphaned span: connected"


def _counts(diagnosis):
    return {
        "traces": diagnosis["traces"],
        "orphans": len(diagnosis["orphans"]),
        "spans": diagnosis["spans"],
    }


def ms(nanoseconds):
    """NANOSECONDS as milliseconds, to a tenth: 12.3 ms."""
    return f"{nanoseconds / 1e6:.1f} ms"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE")
    parser.add_argument(
        "--worker-service", action="append", default=[], metavar="NAME",
        help="a worker's service: its non-Celery root spans are orphans too (repeatable)",
    )
    parser.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="Jaeger: a service to query, the last hour of it (repeatable)")
    args = parser.parse_args(argv)

    def warn(message):
        print(f"view: {message}", file=sys.stderr)

    try:
        spans = list(sources.load(args.sources, services=args.service, warn=warn))
    except sources.SourceError as error:
        warn(str(error))
        return 2
    if not spans:
        warn(f"no spans in {', '.join(args.sources)}")
        return 2
    print(render(spans, args.worker_service))
    print(describe(verdict(spans, args.worker_service)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
