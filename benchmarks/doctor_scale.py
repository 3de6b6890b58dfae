"""How the doctor copes with a million spans: time and peak memory, on an OTLP JSON lines file
and on the trace sink's SQLite file.

    python -m benchmarks.doctor_scale [--spans 1000000] [--folder DIR]

Writes both files (traces shaped like the example app's fixed variant: a request, two tasks,
eight spans; one trace in ten orphans its first task, one in ten loses its email worker's
spans), then runs `python doctor.py FILE --json` on each in a process of its own and prints
one JSON object: spans, file size, wall and CPU time, peak RSS, and what the doctor found.
Not a test: it takes minutes, and the figures depend on the machine.
"""

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracetools.sink import SCHEMA
from tracetools.sources import COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SPANS_PER_TRACE = 8
TRACES_PER_LINE = 64  # a batch of 512 spans per line, as an SDK's batch processor sends them
KINDS = {"INTERNAL": 1, "SERVER": 2, "PRODUCER": 4, "CONSUMER": 5}


def trace_spans(number, rng):
    """One order's spans in the sink's shape: request, two publishes and runs, task spans."""
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
    if number % 10 == 3:  # a worker that did not extract: its run starts a trace of its own
        orphan_trace = f"{rng.getrandbits(128):032x}"
        for span in spans[2:5]:
            span["trace_id"] = orphan_trace
        spans[2]["parent_id"] = None
    if number % 10 == 7:  # the email worker's spans were lost
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


def otlp_line(spans):
    """One batch as the Collector's file exporter writes it: a resourceSpans per service."""
    by_service = {}
    for span in spans:
        by_service.setdefault(span["service"], []).append({
            "traceId": span["trace_id"], "spanId": span["span_id"],
            **({"parentSpanId": span["parent_id"]} if span["parent_id"] else {}),
            "name": span["name"], "kind": KINDS[span["kind"]],
            "startTimeUnixNano": str(span["start_ns"]), "endTimeUnixNano": str(span["end_ns"]),
            "attributes": [{"key": k, "value": _any_value(v)}
                           for k, v in span["attributes"].items()],
            "status": {},
        })
    return json.dumps({"resourceSpans": [
        {"resource": {"attributes": [{"key": "service.name",
                                      "value": {"stringValue": service}}]},
         "scopeSpans": [{"scope": {"name": "scale"}, "spans": spans}]}
        for service, spans in by_service.items()
    ]})


def _any_value(value):
    return {"intValue": str(value)} if isinstance(value, int) else {"stringValue": value}


def write_files(count, folder):
    lines_path, db_path = folder / "spans.jsonl", folder / "spans.db"
    db = sqlite3.connect(db_path)
    db.execute(SCHEMA)
    batch = []
    with open(lines_path, "w") as lines:
        for number, spans in enumerate(all_spans(count), 1):
            batch += spans
            if number % TRACES_PER_LINE == 0:
                flush(batch, lines, db)
                batch = []
        flush(batch, lines, db)
    db.commit()
    db.close()
    return lines_path, db_path


def flush(spans, lines, db):
    if not spans:
        return
    lines.write(otlp_line(spans) + "\n")
    db.executemany(
        f"INSERT INTO spans ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
        [(*(s[c] for c in COLUMNS[:9]), json.dumps(s["attributes"]),
          json.dumps(s["resource"]), json.dumps(s["links"])) for s in spans],
    )


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, help="keep the files here (default: deleted)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="doctor-scale-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        lines_path, db_path = write_files(args.spans, folder)
        written = round(time.monotonic() - started, 1)
        report = {"generated_in_seconds": written, "otlp_json": measure(lines_path),
                  "sqlite": measure(db_path)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
