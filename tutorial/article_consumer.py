"""The consumer side as the article writes it, kept to show why it never works.

Load it into a worker with `celery -A tasks worker --include tutorial.article_consumer`.
"""

from celery.signals import task_prerun
from opentelemetry import context
from opentelemetry.propagate import extract


@task_prerun.connect(weak=False)
def attach_context_from_headers(sender, headers=None, **kwargs):
    # task_prerun sends sender, task_id, task, args and kwargs, never `headers`: this
    # default is all the handler ever sees, and the branch below never runs.
    if headers:
        sender.request.article_token = context.attach(extract(headers))
