"""Just enough Django for the tutorial: one view, SQLite, Celery settings with a CELERY_ prefix."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "tutorial-only-not-for-production")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = ["orders_site"]
ROOT_URLCONF = "orders_site.urls"
WSGI_APPLICATION = "orders_site.wsgi.application"

# A Redis database and a queue of the project's own: on a Redis that other apps share, the
# defaults (database 0, queue "celery") would hand this worker their tasks, and them its own.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/2")
CELERY_TASK_DEFAULT_QUEUE = "orders_site"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = os.environ.get("CELERY_TASK_ALWAYS_EAGER") == "1"
