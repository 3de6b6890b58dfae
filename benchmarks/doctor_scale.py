"""How the doctor copes with a million spans: time and peak memory, on an OTLP JSON lines file
and on the trace sink's SQLite file; and how many HTTP calls a Tempo search costs it.

    python -m benchmarks.doctor_scale [--spans 1000000] [--folder DIR]

Writes both files (traces shaped like the example app's fixed variant: a request, two tasks,
eight spans; one trace in ten orphans its first task, one in ten loses its email worker's
spans), then runs `python doctor.py FILE --json` on each in a process of its own. Then serves
N traces, K of them orphaned, from a fake Tempo (harness/fake_backends.py) and counts the calls
the doctor makes to it, for a few N and K. Prints one JSON object: spans, file size, wall and
CPU time, peak RSS and what the doctor found per file; the calls per N and K.
Not a test: at a million spans it takes minutes, and the figures depend on the machine. CI
runs it with a few thousand spans, so that it keeps working.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.fake_backends import FakeTempo
from tracetools import otlp_json, sink
from tracetools.doctor import diagnose
from tracetools.sources import load

ROOT = Path(__file__).resolve().parent.parent
SPANS_PER_TRACE = 8
TRACES_PER_LINE = 64  # a batch of 512 spans per line, as an SDK's batch processor sends them
# (traces, orphaned traces) served from the fake Tempo: the calls should follow the second.
TEMPO_WINDOWS = ((100, 5), (1000, 5), (1000, 50), (5000, 50))


def trace_spans(number, rng, orphaned=None, lost=None):
    """One order's spans as span records: request, two publishes and runs, task spans.
    ORPHANED: the first run starts a trace of its own (default: one trace in ten); LOST: the
    email worker's spans never arrive (default: another one in ten)."""
    trace_id = f"{rng.getrandbits(128):032x}"
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(SPANS_PER_TRACE)]
    start = 1_700_000_000_000_000_000 + number * 10_000_000
    order_id, email_id = f"order-{number}", f"email-{number}"
    celery = {"messaging.system": "celery"}
    shape = [  # name, kind, service, parent index, attributes
        ("POST /orders", "SERVER", "orders-web", None, {"http.route": "/orders"}),
        ("celery.apply tasks.process_order", "PRODUCER", "orders-web", 0,
         {**celery, "messaging.operation.type": "send", "messaging.message.id": order_id,
          "celery.task.name": "tasks.process_order"}),
        ("celery.run tasks.process_order", "CONSUMER", "orders-worker", 1,
         {**celery, "messaging.operation.type": "process", "messaging.message.id": order_id,
          "celery.task.name": "tasks.process_order", "celery.attempt": 1}),
        ("charge_payment", "INTERNAL", "orders-worker", 2, {}),
        ("send_confirmation", "INTERNAL", "orders-worker", 2, {}),
        ("celery.apply tasks.send_confirmation_email", "PRODUCER", "orders-worker", 4,
         {**celery, "messaging.operation.type": "send", "messaging.message.id": email_id,
          "celery.task.name": "tasks.send_confirmation_email"}),
        ("celery.run tasks.send_confirmation_email", "CONSUMER", "email-worker", 5,
         {**celery, "messaging.operation.type": "process", "messaging.message.id": email_id,
          "celery.task.name": "tasks.send_confirmation_email", "celery.attempt": 1,
          "celery.parent_task_id": order_id}),
        ("render_email", "INTERNAL", "email-worker", 6, {}),
    ]
    spans = []
    for index, (name, kind, service, parent, attributes) in enumerate(shape):
        spans.append({
            "trace_id": trace_id, "span_id": ids[index],
            "parent_id": None if parent is None else ids[parent], "name": name, "kind": kind,
            "service": service, "start_ns": start + index * 1000,
            "end_ns": start + index * 1000 + 500, "status": "UNSET", "attributes": attributes,
            "resource": {"service.name": service}, "links": [],
        })
    if number % 10 == 3 if orphaned is None else orphaned:
        # A worker that did not extract: its run starts a trace of its own.
        orphan_trace = f"{rng.getrandbits(128):032x}"
        for span in spans[2:5]:
            span["trace_id"] = orphan_trace
        spans[2]["parent_id"] = None
    if number % 10 == 7 if lost is None else lost:  # the email worker's spans were lost
        spans = spans[:6]
    return spans


def all_spans(count, seed=0):
    rng = random.Random(seed)
    number, made = 0, 0
    while made < count:
        spans = trace_spans(number, rng)[: count - made]
        made += len(spans)
        number += 1
        yield spans


def write_files(count, folder):
    lines_path, db_path = folder / "spans.jsonl", folder / "spans.db"
    sink.create(db_path)
    with open(lines_path, "w") as lines:
        batch = []
        for number, spans in enumerate(all_spans(count), 1):
            batch += spans
            if number % TRACES_PER_LINE == 0:
                lines.write(json.dumps(otlp_json.document_of(batch)) + "\n")
                batch = []
        if batch:
            lines.write(json.dumps(otlp_json.document_of(batch)) + "\n")
    # Streamed, one transaction: the sink's own writer, as a day of exports would fill it.
    sink.write(db_path, (span for spans in all_spans(count) for span in spans))
    return lines_path, db_path


def measure(path):
    """Run the doctor on PATH in a process of its own: seconds, peak RSS, its findings."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "doctor.py", str(path), "--json"],
                                   cwd=ROOT, stdout=out, stderr=err)
        # wait4, not wait: the resource usage of this one child, its peak RSS included.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode not in (0, 1):
            raise SystemExit(f"doctor failed on {path}: {err.read()}")
        diagnosis = json.load(out)
    return {
        "file_mb": round(os.path.getsize(path) / 2**20, 1),
        "seconds": round(seconds, 1),
        # CPU time as well: on a busy machine it is the steadier figure.
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux counts it in KiB
        "spans": diagnosis["spans"],
        "orphans": len(diagnosis["orphans"]),
        "never_consumed": len(diagnosis["never_consumed"]),
        "causes": {k: v for k, v in diagnosis["causes"].items() if v},
    }


def tempo_calls(traces, orphans):
    """The doctor's HTTP calls to a Tempo /api/search source holding TRACES orders, the first
    ORPHANS of them with their run cut off; and the orphans it found."""
    rng = random.Random(traces * 7919 + orphans)
    spans = [span for number in range(traces)
             for span in trace_spans(number, rng, orphaned=number < orphans, lost=False)]
    with FakeTempo(spans) as tempo:
        diagnosis = diagnose(load(f"{tempo.url}/api/search", since=0, until=2**33))
    if len(diagnosis["orphans"]) != orphans:
        raise SystemExit(f"the doctor found {len(diagnosis['orphans'])} orphans in a Tempo "
                         f"holding {orphans}")
    searches = sum(1 for kind, _ in tempo.calls if kind == "search")
    return {"traces": traces, "orphaned": orphans, "http_calls": len(tempo.calls),
            "searches": searches, "traces_fetched": len(tempo.calls) - searches,
            # What reading the window whole costs: one search, then every trace.
            "http_calls_fetching_every_trace": traces + 1}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", "--size", type=int, default=1_000_000,
                        help="spans in each file (%(default)s)")
    parser.add_argument("--folder", type=Path, help="keep the files here (default: deleted)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="doctor-scale-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        lines_path, db_path = write_files(args.spans, folder)
        written = round(time.monotonic() - started, 1)
        report = {"generated_in_seconds": written, "otlp_json": measure(lines_path),
                  "sqlite": measure(db_path),
                  "tempo": [tempo_calls(*window) for window in TEMPO_WINDOWS]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
