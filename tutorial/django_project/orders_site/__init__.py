# Django's Celery convention: load the Celery app with Django, so that shared_task uses it
# and celery_signals is installed in the web process too.
from .celery import app as celery_app

__all__ = ("celery_app",)
