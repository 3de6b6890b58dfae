"""The demo's half-done fixes, which tasks.py installs for PROPAGATION=broken, inject-only
and call-site instead of the fix. Never copy this module: celery_signals.py is the fix.

  install_article_handler  (broken, inject-only) a task_prerun receiver declared with
                           headers=None, as the article and many projects write it.
  install_worker_half      (call-site) the worker extracts from task.request, but nothing
                           injects in before_task_publish: only app.py's call site does.

Both record the worker's spans with celery_signals's own code, reached into on purpose: the
variants then differ only in where the trace context goes astray, and the doctor reads the
same attributes on every variant's spans.
"""

from celery import signals
from opentelemetry.propagate import extract

import celery_signals


def install_article_handler():
    signals.task_prerun.connect(start_span_from_headers, weak=False)
    # Ends the span and detaches its context, as the fix does: the mistake is elsewhere.
    signals.task_postrun.connect(celery_signals._end_consumer_span, weak=False)


def start_span_from_headers(sender, headers=None, **_):
    # The mistake: task_prerun sends no headers argument, so HEADERS is None every time,
    # nothing is extracted, and each task's span starts a trace of its own, whatever the
    # message carried (the span still records what that was, as the fix's spans do).
    producer = celery_signals._producer_context(sender.request)
    celery_signals._start_consumer_span(
        sender, producer._replace(parent=extract(headers or {}), links=[]),
    )


def install_worker_half():
    celery_signals.install()
    # The mistake: nothing injects in before_task_publish. Only call sites that pass
    # headers= carry the trace context; what Celery publishes itself (a .delay() inside a
    # task, chain steps, callbacks) goes without, and a retry keeps the caller's headers.
    signals.before_task_publish.disconnect(celery_signals._start_publish_span)
    signals.after_task_publish.disconnect(celery_signals._end_publish_span)
