"""The orders Celery app with a beat schedule: `celery -A tests.apps.beat_app beat`."""

from tasks import celery_app

celery_app.conf.beat_schedule = {
    "tick": {"task": "matrix.work", "schedule": 0.5, "args": ("beat",)},
}
