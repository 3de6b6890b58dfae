"""What propagating the trace context costs per Celery task: every variant, side by side.

    python -m benchmarks.run           # the whole benchmark, about 3 minutes on 2 cores
    python -m benchmarks.run --json    # the same figures as JSON
    python -m benchmarks.run --help    # task counts, rounds, what to skip

install() connects signal receivers for the whole process, so every measurement runs in a
process of its own: benchmarks/inprocess.py runs one variant, benchmarks/redis_bench.py starts a
worker and a producer process per variant. The variants take turns, in a rotating order, and
the report gives medians.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import hotpaths

ROOT = Path(__file__).resolve().parent.parent

# The auto-instrumentation is only a reference row, and only if requirements-bench.txt is
# installed. The app never imports it.
AUTO_AVAILABLE = importlib.util.find_spec("opentelemetry.instrumentation.celery") is not None
VARIANTS = ("untraced", "broken", "fixed") + (("auto",) if AUTO_AVAILABLE else ())

TARGET_PROPAGATION_US = 15.0  # fixed minus broken, per task
TARGET_SHARE_OF_AUTO = 1 / 3  # fixed's overhead, as a share of the auto-instrumentation's
TARGET_REDIS_RATIO = 0.9  # fixed's throughput over untraced's
TARGET_RSS_MB = 5.0  # growth over 50,000 tasks
TARGET_RSS_TASKS = 50_000
# Above this many CPUs kept busy by other processes, the machine was not quiet.
BUSY_CPUS = 0.25


def progress(message):
    print(message, file=sys.stderr, flush=True)  # stdout is kept for the report


def busy_cpu_seconds():
    """(CPU seconds the whole machine has been busy, of which this run's processes)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = stat.readline().split()[1:9]
    machine = sum(map(int, (user, nice, system, irq, softirq, steal))) / os.sysconf("SC_CLK_TCK")
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        ours += usage.ru_utime + usage.ru_stime
    return machine, ours


def run_script(module, deadline, *args):
    """Run benchmarks.MODULE in a fresh interpreter; return the JSON object it prints, plus
    how many CPUs other processes kept busy meanwhile."""
    command = [sys.executable, "-m", f"benchmarks.{module}", *map(str, args)]
    started, (machine, ours) = time.monotonic(), busy_cpu_seconds()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=deadline)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{' '.join(command)} did not finish within {deadline}s")
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    machine_after, ours_after = busy_cpu_seconds()
    others = (machine_after - machine) - (ours_after - ours)
    result = json.loads(done.stdout.splitlines()[-1])
    result["other_cpus"] = max(0.0, others / (time.monotonic() - started))
    return result


def rounds(count, label, measure):
    """MEASURE(variant) for every variant, COUNT times; each round starts one variant later."""
    results = {variant: [] for variant in VARIANTS}
    for number in range(count):
        order = VARIANTS[number % len(VARIANTS):] + VARIANTS[:number % len(VARIANTS)]
        progress(f"{label}, round {number + 1}/{count}: {', '.join(order)}")
        for variant in order:
            results[variant].append(measure(variant))
    return results


def medians(results, keys):
    return {
        variant: {key: statistics.median(r[key] for r in runs) for key in keys if key in runs[0]}
        | {"rounds": runs}
        for variant, runs in results.items()
    }


def target(name, met, figure):
    return {"target": name, "met": met, "figure": figure}


def redis_ratios(redis, variant):
    # Slot by slot: the two batches ran a second or two apart, through the same spells.
    slots = redis["variants"]
    return [mine["tasks_per_second"] / base["tasks_per_second"]
            for mine, base in zip(slots[variant]["slots"], slots["untraced"]["slots"])]


def evaluate(inprocess, redis, memory):
    targets = []
    fixed, broken, untraced = (inprocess[v]["total_us"] for v in ("fixed", "broken", "untraced"))
    propagation = fixed - broken
    publish, run = (
        inprocess["fixed"][k] - inprocess["broken"][k] for k in ("publish_us", "run_us")
    )
    targets.append(target(
        f"propagation itself (fixed - broken) <= {TARGET_PROPAGATION_US:g} µs per task",
        propagation <= TARGET_PROPAGATION_US,
        f"{propagation:+.1f} µs (publish {publish:+.1f}, run {run:+.1f})",
    ))
    if "auto" in inprocess:
        ours, auto = fixed - untraced, inprocess["auto"]["total_us"] - untraced
        targets.append(target(
            "total overhead (fixed - untraced) <= 1/3 of the auto-instrumentation's",
            ours <= auto * TARGET_SHARE_OF_AUTO,
            f"{ours:+.1f} µs vs {auto:+.1f} µs: {ours / auto:.2f} of it (limit {auto / 3:.1f} µs)",
        ))
    else:
        targets.append(target(
            "total overhead (fixed - untraced) <= 1/3 of the auto-instrumentation's", None,
            "not measured: pip install -r requirements-bench.txt",
        ))
    if redis:
        ratios = redis_ratios(redis, "fixed")
        ratio = statistics.median(ratios)
        targets.append(target(
            f"Redis prefork throughput fixed / untraced >= {TARGET_REDIS_RATIO:g}",
            ratio >= TARGET_REDIS_RATIO,
            f"{ratio:.3f}, the median of the slots' {', '.join(f'{r:.2f}' for r in ratios)}",
        ))
    if memory:
        growth, tasks, objects = (memory[k] for k in ("rss_growth_mb", "memory_tasks",
                                                        "objects_growth"))
        # Nothing of a finished task may stay behind: not one object per hundred tasks.
        met = (growth <= TARGET_RSS_MB and objects < tasks / 100
               and not memory["context_left_attached"] and not memory["requests_left_pushed"])
        note = "" if tasks == TARGET_RSS_TASKS else f" (the target is for {TARGET_RSS_TASKS:,})"
        targets.append(target(
            f"RSS growth <= {TARGET_RSS_MB:g} MB over {TARGET_RSS_TASKS:,} tasks, nothing left "
            "behind", met, f"{growth:+.2f} MB, {objects:+d} objects over {tasks:,} tasks{note}",
        ))
    return targets


def environment():
    names = ("celery", "kombu", "opentelemetry-sdk", "opentelemetry-instrumentation-celery")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    found |= {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    # The figures belong to one version of celery_signals.py: say which.
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "log", "-1", "--format=%h"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "celery_signals.py"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        found["commit"] = commit + (" + uncommitted celery_signals.py" if changed else "")
    except OSError:
        pass
    return found


def print_report(report, args):
    env, run = report["environment"], report["run"]
    print("Celery trace propagation: what it costs per task")
    print("  " + ", ".join(f"{name} {version}" for name, version in env.items()))
    busy = run["other_processes_cpus"]
    noisy = ": expect noise, rerun on a quiet machine" if busy > BUSY_CPUS else ""
    print(f"  {run['seconds']:.0f} s; other processes (redis-server included) kept {busy:.2f} of "
          f"{env['cpus']} CPUs busy{noisy}")

    inprocess = report["inprocess"]
    print(f"""
1. In process: CPU µs per task, median of {args.rounds} rounds (each in a process of its own, the
   fastest of {args.batches} batches of {args.batch_size} tasks).
   publish: apply_async on memory:// inside one span, nothing consuming.
   run:     the message through celery.app.trace.build_tracer, which sends task_prerun and
            task_postrun as a worker does.
   The SDK variants' BatchSpanProcessor hands spans to an exporter that discards them:
   queueing and batching spans are counted, sending them is not.
""")
    round_trip = args.round_trip_tasks > 0
    print(f"   {'variant':<9} {'publish':>8} {'run':>7} {'total':>7} {'vs untraced':>12} "
          f"{'spans/task':>11}" + (f" {'round trip':>11}" if round_trip else ""))
    base = inprocess["untraced"]["total_us"]
    for variant, row in inprocess.items():
        delta = "" if variant == "untraced" else f"{row['total_us'] - base:+.1f}"
        line = (f"   {variant:<9} {row['publish_us']:8.1f} {row['run_us']:7.1f} "
                f"{row['total_us']:7.1f} {delta:>12} {row['spans_per_task']:11.2f}")
        if round_trip:
            line += f" {row['round_trip_us']:11.0f}"
        print(line)
    fixed, broken = inprocess["fixed"], inprocess["broken"]
    publish, run_ = (fixed[k] - broken[k] for k in ("publish_us", "run_us"))
    print(f"""
   fixed - broken: publish {publish:+.1f} µs, all in receivers only fixed has (PRODUCER span,
   inject, queue-time header); run {run_:+.1f} µs, where both start a CONSUMER span and fixed
   also extracts the context and reads its headers.""")
    if round_trip:
        print(f"""   round trip: CPU µs per task with a threaded solo worker consuming \
{args.round_trip_tasks} tasks on
   memory:// as they are published: a whole worker's work, noisier, for scale only.""")
    spread = [r["reference_ms"] for runs in inprocess.values() for r in runs["rounds"]]
    print(f"""   A fixed loop, timed in every process, took {min(spread):.2f} to \
{max(spread):.2f} ms: this VM has spells at
   half speed, and a spread over ~15% means some rounds ran in one.""")

    redis = report["redis"]
    if redis:
        print(f"""
2. End to end on Redis: one worker per variant (tasks.py, prefork, 1 pool process) exporting
   over OTLP/HTTP to the trace sink. {args.redis_slots} slots; in each, the variants take turns \
running a
   batch of {args.redis_batch} trivial tasks queued beforehand. Medians over the slots; \
"vs untraced" is
   the median of slot-by-slot ratios (batches a second apart meet the same machine).
   Other processes kept {redis['other_cpus']:.2f} CPUs busy meanwhile.
""")
        print(f"   {'variant':<9} {'tasks/s':>8} {'vs untraced':>12} {'pool CPU µs/task':>17} "
              f"{'spans/task':>11}   each slot (tasks/s)")
        for variant, row in redis["variants"].items():
            each = ", ".join(f"{s['tasks_per_second']:.0f}" for s in row["slots"])
            ratio = statistics.median(redis_ratios(redis, variant))
            print(f"   {variant:<9} {row['tasks_per_second']:8.0f} {ratio:12.3f} "
                  f"{row['pool_cpu_us']:17.0f} {row['worker_spans_per_task']:11.2f}   {each}")
        print("""
   untraced here: bench_tasks.py disconnects the receivers tasks.py installed, and
   OTEL_SDK_DISABLED=true makes the worker's TracerProvider hand out no-op tracers: no span
   is recorded and its exporter never sends anything.""")

    memory = report["memory"]
    if memory:
        attached = "YES" if memory["context_left_attached"] else "no"
        print(f"""
3. Memory: fixed, {memory['memory_tasks']:,} tasks published and run through build_tracer after a
   warm-up: RSS {memory['rss_growth_mb']:+.2f} MB (from {memory['rss_before_mb']:.1f} MB), \
live Python objects {memory['objects_growth']:+d},
   context left attached: {attached}, requests left pushed: {memory['requests_left_pushed']}.""")

    profile = report["profile"]
    if profile:
        print(f"""
4. Where fixed spends its time: py-spy sampling benchmarks/inprocess.py from outside
   ({args.profile_batches} batches of 250 tasks). Share of each phase; µs = that share of the \
phase's median
   in table 1.""")
        for phase, rows in profile.items():
            print(f"\n   {phase} ({inprocess['fixed'][f'{phase}_us']:.1f} µs)")
            for label, share, us in rows:
                print(f"     {label:<56} {share:6.1%} {us:6.1f} µs")

    print("\nTargets")
    for row in report["targets"]:
        state = {True: "met    ", False: "NOT MET", None: "skipped"}[row["met"]]
        print(f"  [{state}] {row['target']}: {row['figure']}")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds (default 5)")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per process")
    parser.add_argument("--batch-size", type=int, default=250, help="tasks per batch")
    parser.add_argument("--round-trip-tasks", type=int, default=1000,
                        help="tasks through a threaded worker per round; 0 skips it")
    parser.add_argument("--redis-slots", type=int, default=10,
                        help="Redis batches per variant; 0 skips Redis")
    parser.add_argument("--redis-batch", type=int, default=600, help="tasks per Redis batch")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--memory-tasks", type=int, default=TARGET_RSS_TASKS, help="0 skips it")
    parser.add_argument("--profile-batches", type=int, default=32,
                        help="batches of 250 tasks to profile with py-spy; 0 skips it")
    parser.add_argument("--profile-rate", type=int, default=500, help="py-spy samples a second")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds any one measuring process may take")
    args = parser.parse_args()

    started, (machine_before, ours_before) = time.monotonic(), busy_cpu_seconds()
    inprocess = medians(
        rounds(args.rounds, "in process", lambda variant: run_script(
            "inprocess", args.deadline, "--variant", variant, "--batches", args.batches,
            "--batch-size", args.batch_size, "--round-trip", args.round_trip_tasks)),
        ("publish_us", "run_us", "round_trip_us", "spans_per_task", "reference_ms"),
    )
    for row in inprocess.values():
        row["total_us"] = row["publish_us"] + row["run_us"]
    redis = {}
    if args.redis_slots:
        progress(f"Redis: {args.redis_slots} slots of {args.redis_batch} tasks per variant")
        redis = run_script("redis_bench", args.deadline * 3, "--variants", ",".join(VARIANTS),
                           "--slots", args.redis_slots, "--batch-size", args.redis_batch,
                           "--redis-url", args.redis_url)
    memory = {}
    if args.memory_tasks:
        progress(f"memory: {args.memory_tasks:,} tasks, fixed")
        memory = run_script("inprocess", args.deadline, "--variant", "fixed",
                            "--memory", args.memory_tasks)
    profile = {}
    if args.profile_batches:
        progress(f"profile: fixed, {args.profile_batches} batches under py-spy")
        try:
            shares = hotpaths.shares(hotpaths.record("fixed", args.profile_batches,
                                                     args.profile_rate, args.deadline))
        except RuntimeError as error:  # py-spy missing, or not allowed to attach here
            progress(f"profile skipped: {error}")
        else:
            # Shares of a phase, in µs: times the phase's median from the in-process rounds.
            profile = {
                phase: [[label, share, share * inprocess["fixed"][f"{phase}_us"]]
                        for label, share in rows]
                for phase, rows in shares.items()
            }

    # Anything else running here (tests, builds, redis-server serving us) slows the rounds
    # unevenly: say how much there was.
    machine_after, ours_after = busy_cpu_seconds()
    seconds = time.monotonic() - started
    others = (machine_after - machine_before) - (ours_after - ours_before)
    report = {
        "environment": environment(),
        "run": {"seconds": seconds, "other_processes_cpus": max(0.0, others / seconds)},
        "inprocess": inprocess,
        "redis": redis,
        "memory": memory,
        "profile": profile,
        "targets": evaluate(inprocess, redis, memory),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, args)


if __name__ == "__main__":
    main()
