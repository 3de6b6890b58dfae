"""Publish every scenario of the matrix, each from inside a span `scenario <name>`.

Run from the repository root as `python -m tests.apps.matrix_publish NAME...`, with the
same environment as the worker: it is a producer process like the web app.
"""

import os
import sys
from datetime import datetime, timedelta, timezone

from celery import chain, chord, group
from opentelemetry import trace

from celery_signals import NEW_TRACE_HEADER
from tasks import celery_app
from tests.apps.matrix_tasks import (
    autoretry,
    call_site_headers,
    errback,
    errback_task,
    fail,
    flaky,
    never_runs,
    spawn,
    work,
)
from tracing import flush_tracing, setup_tracing


def soon(seconds):
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


PUBLISH = {
    "apply_async": lambda h: work.apply_async(("apply_async",), headers=h),
    # .delay() takes no headers: the call-site variant has nothing to pass.
    "delay": lambda h: work.delay("delay"),
    "send_task": lambda h: celery_app.send_task("matrix.work", ("send_task",), headers=h),
    "signature": lambda h: work.s("signature").apply_async(headers=h),
    "chain": lambda h: chain(
        work.s("chain-1"), work.s("chain-2"), work.s("chain-3")
    ).apply_async(headers=h),
    "group": lambda h: group(work.s("group-1"), work.s("group-2")).apply_async(headers=h),
    "chord": lambda h: chord(
        [work.s("chord-1"), work.s("chord-2")], work.s("chord-body")
    ).apply_async(headers=h),
    "link": lambda h: work.apply_async(("link",), link=work.s("link-callback"), headers=h),
    # An errback that takes (request, exc, traceback) runs inside the failed task...
    "link_error": lambda h: fail.apply_async(
        ("link-error",), link_error=errback.s("link-errback"), headers=h
    ),
    # ...one that takes none of them is published as a task of its own.
    "link_error_task": lambda h: fail.apply_async(
        ("link-error-task",), link_error=errback_task.si("link-errback-task"), headers=h
    ),
    "countdown": lambda h: work.apply_async(("countdown",), countdown=1, headers=h),
    "eta": lambda h: work.apply_async(("eta",), eta=soon(1), headers=h),
    "nested": lambda h: spawn.apply_async(("nested",), headers=h),
    "retry": lambda h: flaky.apply_async(("retry",), headers=h),
    "autoretry": lambda h: autoretry.apply_async(("autoretry",), headers=h),
    # Not a matrix row: the per-call opt-out, a new trace linked to this one.
    "new_trace": lambda h: work.apply_async(("new-trace",), headers={**h, NEW_TRACE_HEADER: "1"}),
    "revoked": lambda h: revoke_before_start(never_runs.apply_async(
        ("revoked",), countdown=3, headers=h
    )),
}


def revoke_before_start(result):
    # A broadcast: every worker remembers the id and discards the message when it comes.
    # (An `expires` would not do: RabbitMQ drops an expired message before any worker
    # sees it, so nothing could record it.)
    celery_app.control.revoke(result.id)


def main(names):
    # Task protocol 1 is still supported: its task id travels in the body, not the headers.
    celery_app.conf.task_protocol = int(os.environ.get("TASK_PROTOCOL", "2"))
    setup_tracing("publisher")
    tracer = trace.get_tracer(__name__)
    for name in names or PUBLISH:
        with tracer.start_as_current_span(f"scenario {name}"):
            PUBLISH[name](call_site_headers())
    flush_tracing()


if __name__ == "__main__":
    main(sys.argv[1:])
