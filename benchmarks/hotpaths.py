"""Where a variant spends its time per task: benchmarks/inprocess.py sampled by py-spy.

    python -m benchmarks.hotpaths --variant fixed

py-spy samples the process from outside, so it does not distort the code it measures (an
in-process profiler that hooks every call inflates Celery's many small calls most). It needs
to be allowed to ptrace (root, or CAP_SYS_PTRACE); run.py skips the profile when it is not.
Each row is a share of the publish or the run phase; run.py turns shares into µs per task
with the phase's median from the in-process table.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A row counts the samples whose stack passes through its steps in order ("A > B": B called,
# at any depth, from A), every path starting from the phase's root and Signal.send: Celery's
# signal dispatch, which runs the receivers, i.e. all of the tracing code. A step is
# "file:function", both matched as suffixes of what py-spy prints.
SEND = "dispatch/signal.py:Signal.send"
START_SPAN = "trace/__init__.py:Tracer.start_span"
END_SPAN = "trace/__init__.py:Span.end"
SPAN_ROWS = [  # (depth, label, path below Signal.send)
    (1, "Tracer.start_span", START_SPAN),
    (2, "attributes (BoundedAttributes)",
     f"{START_SPAN} > attributes/__init__.py:BoundedAttributes.__init__"),
    (2, "sampler (ParentBased)", f"{START_SPAN} > sampling.py:ParentBased.should_sample"),
    (1, "Span.end", END_SPAN),
    (2, "BatchSpanProcessor.on_end", f"{END_SPAN} > export/__init__.py:BatchSpanProcessor.on_end"),
]
PHASES = {
    "publish": ("inprocess.py:publish", [
        *SPAN_ROWS,
        (1, "inject (global propagator: tracecontext, baggage)", "propagate/__init__.py:inject"),
        (1, "Celery finding the receivers", "dispatch/signal.py:Signal._live_receivers"),
    ]),
    "run": ("inprocess.py:run", [
        *SPAN_ROWS,
        (1, "extract (global propagator: tracecontext, baggage)", "propagate/__init__.py:extract"),
        (2, "the getter", "propagate/__init__.py:extract > celery_signals.py:get"),
        (1, "context attach + detach", "context/__init__.py:attach"),
        (0, "", "context/__init__.py:detach"),  # depth 0: added to the row above
        (1, "Span.set_attribute", "trace/__init__.py:Span.set_attribute"),
        (1, "Celery finding the receivers", "dispatch/signal.py:Signal._live_receivers"),
    ]),
}


def record(variant, batches, rate, deadline):
    """Run inprocess.py under py-spy; return its samples as (frames, count) pairs."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise RuntimeError("py-spy is not installed: pip install -r requirements-bench.txt")
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "samples.txt"
        command = [
            py_spy, "record", "--rate", str(rate), "--format", "raw", "--output", str(output),
            "--", sys.executable, "-m", "benchmarks.inprocess", "--variant", variant,
            "--batches", str(batches),
        ]
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=deadline
        )
        if done.returncode != 0 or not output.exists():
            raise RuntimeError(f"py-spy failed:\n{done.stderr[-2000:]}")
        samples = []
        for line in output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples.append((stack.split(";"), int(count)))
    return samples


def _matches(frame, step):
    # py-spy writes a frame as "Class.function (path/to/file.py:line)".
    name, _, where = frame.partition(" (")
    file, function = step.rsplit(":", 1)
    return name.endswith(function) and where.rsplit(":", 1)[0].endswith(file)


def _passes_through(frames, steps):
    steps = iter(steps)
    step = next(steps)
    for frame in frames:
        if _matches(frame, step):
            step = next(steps, None)
            if step is None:
                return True
    return False


def count(samples, path):
    steps = path.split(" > ")
    return sum(n for frames, n in samples if _passes_through(frames, steps))


def shares(samples):
    """{phase: [[label, share of the phase], ...]}"""
    result = {}
    for phase, (root, rows) in PHASES.items():
        total = count(samples, root)
        receivers = f"{root} > {SEND}"
        figures = [["tracing receivers, all of them", count(samples, receivers) / total]]
        top_level = []
        for depth, label, path in rows:
            share = count(samples, f"{receivers} > {path}") / total
            if depth == 0:
                figures[-1][1] += share
            else:
                figures.append(["  " * depth + label, share])
            if depth < 2:
                top_level.append(path)
        # Whatever the receivers spend outside the rows above: their own Python code.
        listed = sum(n for frames, n in samples
                     if _passes_through(frames, receivers.split(" > "))
                     and any(_passes_through(frames, [SEND, *p.split(" > ")]) for p in top_level))
        figures.append(["  their own code (dicts, header reads, task.request)",
                        figures[0][1] - listed / total])
        figures.append(["Celery's own work (all but the receivers)", 1 - figures[0][1]])
        result[phase] = figures
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="fixed", choices=("broken", "fixed", "auto"))
    parser.add_argument("--batches", type=int, default=32, help="batches of 250 tasks")
    # Faster than 500 samples a second, py-spy's pauses start to cost this VM more than the
    # benchmark itself.
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    args = parser.parse_args()
    result = shares(record(args.variant, args.batches, args.rate, deadline=120))
    print(f"{args.variant}: shares of each phase's time")
    for phase in PHASES:
        print(phase)
        for label, share in result[phase]:
            print(f"  {label:<55} {share:6.1%}")


if __name__ == "__main__":
    main()
