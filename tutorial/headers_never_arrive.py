"""Why the article's consumer handler stays orphaned: task_prerun has no `headers`.

A real worker (in a thread of this process) runs one task published with a
traceparent header. Two task_prerun receivers look for it: the article's, through a
`headers` keyword, and ours, on the task request.
"""

import threading

from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_prerun
from opentelemetry import trace
from opentelemetry.propagate import extract

# The example traceparent of the W3C Trace Context specification.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def article_handler(sender, headers=None, **kwargs):
    print("task_prerun sent:", ", ".join(sorted(["sender", *kwargs])))
    print("the article's handler got headers =", headers)


def request_handler(sender, **kwargs):
    print("task.request.traceparent =", sender.request.traceparent)
    parent = trace.get_current_span(extract(sender.request)).get_span_context()
    print(f"extract(task.request) found trace {parent.trace_id:032x}, span {parent.span_id:016x}")
    seen.set()


seen = threading.Event()
# kombu's in-memory transport: a real message through a real worker, in one process.
app = Celery("demo", broker="memory://")


@app.task
def hello():
    pass


task_prerun.connect(article_handler)
task_prerun.connect(request_handler)
with start_worker(app, pool="solo", perform_ping_check=False):
    hello.apply_async(headers={"traceparent": TRACEPARENT})
    if not seen.wait(timeout=30):
        raise SystemExit("the worker did not run the task within 30 s")
