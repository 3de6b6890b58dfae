"""Set-up 1: what one variant costs per task, in one process, with no worker and no network.

    python -m benchmarks.inprocess --variant fixed --batches 8 --batch-size 250

The method (set-up 1 in benchmarks/README.md): publish N tasks with apply_async on kombu's
memory:// transport inside one span while nothing consumes them, then run the published
messages through Celery's own build_tracer, which sends task_prerun and task_postrun exactly
as a worker's pool process does. Each phase is timed with time.process_time(): the CPU of
the whole process, so the batch span processor's thread counts too. Taking the fastest of
several small batches, this is stable to a few microseconds; a worker's wall clock is not
(a threaded worker's timings swing by about ±30 % from one run to the next).

Spans go to a BatchSpanProcessor, as in tracing.py, but its exporter throws them away: the
cost of queueing and batching spans is measured, the cost of sending them is not.

Prints one JSON object. --round-trip and --memory reuse the same publish and run steps;
benchmarks/hotpaths.py profiles this script from outside, with py-spy.
"""

import argparse
import gc
import json
import os
import threading
import time

from celery import Celery
from celery.app.trace import build_tracer
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import celeryconfig

VARIANTS = ("untraced", "broken", "fixed", "auto")
QUEUE = "benchmark"
HOSTNAME = "benchmark@localhost"
WARM_UP_TASKS = 500
DEADLINE = 60.0  # seconds any single wait may last

# The example app's settings; memory:// keeps messages in this process.
app = Celery("benchmark")
app.conf.update(celeryconfig.settings({"CELERY_BROKER_URL": "memory://"}), task_default_queue=QUEUE)
batch_done = threading.Event()


@app.task(name="benchmark.noop")
def noop(number):
    return None


@app.task(name="benchmark.finish")
def finish():
    # A solo worker runs its queue in order: when this runs, every task before it has too.
    batch_done.set()


class DiscardingExporter(SpanExporter):
    """Counts the spans it is given and drops them: no network, no memory kept."""

    def __init__(self):
        self.spans = 0

    def export(self, spans):
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def set_up(variant):
    """Trace this process the way VARIANT does; return the exporter, or None if untraced."""
    if variant == "untraced":
        return None  # no SDK at all: the API's no-op tracer, no receivers connected
    exporter = DiscardingExporter()
    provider = TracerProvider()
    # BatchSpanProcessor's defaults, as tracing.py uses them: a queue of 2048 spans, exported
    # in batches of 512 by a background thread.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if variant == "auto":
        # Optional (requirements-bench.txt); run.py only asks for it when it is installed.
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
    elif variant == "broken":
        # What PROPAGATION=broken installs: the consumer span alone, from a context never found.
        from demo_mistakes import install_article_handler

        install_article_handler()
    else:
        from celery_signals import install

        install()
    return exporter


def flush():
    # End every phase with an empty span queue, so that each span's processing is charged
    # to the phase that created it. The API's no-op provider has no force_flush.
    provider = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush()


def publish(count):
    # One enclosing span, like the web request a real producer publishes from.
    with trace.get_tracer(__name__).start_as_current_span("benchmark.publish"):
        for number in range(count):
            noop.apply_async((number,))


def take_messages(count):
    """The COUNT published messages, as a worker's consumer would receive them."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        messages = [channel.basic_get(QUEUE, no_ack=True) for _ in range(count)]
    if None in messages:
        raise RuntimeError(f"fewer than {count} messages were published")
    return messages


def worker_request(message):
    """What a worker hands the traced task: the message headers, plus what
    celery.worker.request.Request and celery.app.trace.trace_task_ret add to them."""
    args, kwargs, embed = message.decode()
    properties = message.properties
    request = dict(message.headers)
    request.update(
        properties=properties,
        reply_to=properties.get("reply_to"),
        correlation_id=properties.get("correlation_id"),
        hostname=HOSTNAME,
        delivery_info={
            "exchange": message.delivery_info.get("exchange"),
            "routing_key": message.delivery_info.get("routing_key"),
            "priority": properties.get("priority"),
            "redelivered": False,
        },
        args=args,
        kwargs=kwargs,
        is_eager=False,
        **(embed or {}),
    )
    return request["id"], args, kwargs, request


# As a worker builds it, once per task type (setup_worker_optimizations), from the registered
# task itself: `noop` above is a lazy proxy to it, as @app.task returns before the app is
# finalized, and each attribute read through the proxy would cost a little.
run_task = build_tracer(noop.name, app.tasks[noop.name], app.loader, HOSTNAME, app=app)


def run(requests):
    for task_id, args, kwargs, request in requests:
        run_task(task_id, args, kwargs, request)


def cpu_us_per_task(work, count):
    start = time.process_time()
    work()
    flush()
    return (time.process_time() - start) / count * 1e6


def reference_ms():
    """CPU milliseconds of a fixed pure-Python loop: how fast the machine is right now.
    On a shared virtual machine this can change by half from one second to the next."""
    start = time.process_time()
    total = 0
    for number in range(100_000):
        total += number
    return (time.process_time() - start) * 1e3


def measure(batches, batch_size):
    """CPU µs per task of publishing and of running tasks, in BATCHES small batches. The
    fastest batch counts, as with timeit: the slower ones are those something else (another
    process, another guest on the host) disturbed."""
    publish_us, run_us, reference = [], [], []
    for _ in range(batches):
        reference.append(reference_ms())
        gc.collect()
        publish_us.append(cpu_us_per_task(lambda: publish(batch_size), batch_size))
        # Decoding the messages is the same for every variant: it is done before the clock.
        requests = [worker_request(message) for message in take_messages(batch_size)]
        gc.collect()
        run_us.append(cpu_us_per_task(lambda: run(requests), batch_size))
    return {"publish_us": min(publish_us), "run_us": min(run_us), "reference_ms": min(reference)}


def round_trip(count):
    """CPU µs per task with a real worker consuming as we publish: a solo-pool worker in a
    thread of this process. Noisier than measure(): the worker also polls, acknowledges and
    schedules. Call it last: the worker thread is a daemon that simply ends with the process
    (a clean stop would cost 4 seconds of Celery's timeouts on memory://)."""
    from celery.worker import WorkController

    # Poll the empty queue every 10 ms rather than every second, so the batch starts at once.
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    worker = WorkController(
        app=app, hostname=HOSTNAME, pool="solo", concurrency=1,
        without_heartbeat=True, without_mingle=True, without_gossip=True,
    )
    threading.Thread(target=worker.start, daemon=True).start()
    batch_done.clear()
    start = time.process_time()
    publish(count)
    finish.apply_async()
    if not batch_done.wait(DEADLINE):
        raise TimeoutError(f"the worker did not run {count} tasks within {DEADLINE}s")
    flush()
    return (time.process_time() - start) / count * 1e6


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


MEMORY_CHUNK = 1000


def memory_growth(count, chunk=MEMORY_CHUNK):
    """RSS growth over COUNT tasks published and run in chunks (so that no more than one
    chunk of messages waits in the memory:// queue at a time), after a warm-up."""
    def cycle(tasks):
        publish(tasks)
        run([worker_request(message) for message in take_messages(tasks)])

    cycle(2 * chunk)  # caches, connection pool, a full span queue
    flush()
    gc.collect()
    before, objects_before = rss_bytes(), len(gc.get_objects())
    for _ in range(count // chunk):
        cycle(chunk)
    flush()
    gc.collect()
    after, objects_after = rss_bytes(), len(gc.get_objects())
    return {
        "memory_tasks": count // chunk * chunk,
        "rss_before_mb": before / 2**20,
        "rss_growth_mb": (after - before) / 2**20,
        # Sharper than RSS, which the allocator rounds to pages and arenas: objects the
        # garbage collector tracks (spans, contexts, dicts, tokens) that are still alive.
        "objects_growth": objects_after - objects_before,
        # Nothing of a finished task may stay behind: no attached context, no pushed request.
        "context_left_attached": len(context.get_current()) > 0,
        "requests_left_pushed": len(noop.request_stack.stack),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--batches", type=int, default=8, help="timed batches; the fastest counts")
    parser.add_argument("--batch-size", type=int, default=250, help="tasks per timed batch")
    parser.add_argument("--round-trip", type=int, default=0, metavar="N",
                        help="also time N tasks through a threaded solo worker")
    parser.add_argument("--memory", type=int, default=0, metavar="N",
                        help="instead: RSS growth over N tasks")
    args = parser.parse_args()

    exporter = set_up(args.variant)
    publish(WARM_UP_TASKS)  # imports, connection pool, first-call caches
    run([worker_request(message) for message in take_messages(WARM_UP_TASKS)])
    flush()
    spans_before = exporter.spans if exporter else 0

    result = {"variant": args.variant, "exporter": "BatchSpanProcessor -> discarding exporter"}
    if args.memory:
        result.update(memory_growth(args.memory))
        tasks = result["memory_tasks"] + 2 * MEMORY_CHUNK  # with its warm-up
    else:
        result.update(measure(args.batches, args.batch_size))
        tasks = args.batches * args.batch_size
        if args.round_trip:
            result["round_trip_us"] = round_trip(args.round_trip)
            tasks += args.round_trip + 1
    flush()
    # Spans exported per task: checks that the variant did what it says (broken 1, fixed 2)
    # and that the span queue dropped nothing.
    exported = (exporter.spans - spans_before) if exporter else 0
    result["spans_per_task"] = round(exported / tasks, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
