"""The consumer side as the article writes it, kept to show why it never works.

Load it into a worker whose web app injects at its call site (PROPAGATION=inject-only):

    PROPAGATION=inject-only python -m celery -A tasks worker --include tutorial.article_consumer

(`python -m celery` runs from the repository root, where tasks.py and the tutorial package
are importable; a bare `celery` command may not find them.)
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
