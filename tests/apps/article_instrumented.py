"""The article's set-up beside celery_signals: CeleryInstrumentor in worker_process_init.

Loaded with `--include tests.apps.article_instrumented` into a worker whose tasks.py installed
celery_signals at import, before the instrumentor became active.
"""

from celery import signals


@signals.worker_process_init.connect(weak=False)
def instrument(**_):
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()
