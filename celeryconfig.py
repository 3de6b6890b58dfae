"""The example app's Celery settings, read from the environment and nothing more.

Importing this module connects no signal and creates no file: tasks.py, the tests and the
benchmarks all take their settings from here.
"""

import os
import tempfile


def queue_names(env=os.environ):
    """The orders and emails queues. A prefix lets several deployments share one broker:
    the demo runs every variant at once."""
    prefix = env.get("QUEUE_PREFIX", "")
    return prefix + "orders", prefix + "emails"


def broker_settings(env=os.environ):
    url = env.get("CELERY_BROKER_URL") or "filesystem://"
    if not url.startswith("filesystem://"):
        return {"broker_url": url}
    # kombu's filesystem transport: the broker is a folder that producer and worker share,
    # so the demo runs with no broker server at all.
    folder = env.get("CELERY_BROKER_FOLDER") or os.path.join(tempfile.gettempdir(), "celery-broker")
    return {
        "broker_url": url,
        # kombu's own transport, made safe for several processes at once.
        "broker_transport": "harness.filesystem_broker:Transport",
        "broker_transport_options": {
            "data_folder_in": folder,
            "data_folder_out": folder,
            # Its exchange tables go to ./control unless told otherwise.
            "control_folder": os.path.join(folder, "control"),
            # Look for new messages every 0.1 s, not every second: a chain of tasks would
            # otherwise wait a second at every step.
            "polling_interval": 0.1,
        },
    }


def settings(env=os.environ):
    orders_queue, emails_queue = queue_names(env)
    return {
        **broker_settings(env),
        # JSON only: a pickle payload from anyone who can write to the broker runs code here.
        "task_serializer": "json",
        "accept_content": ["json"],
        # The task reports its outcome in the orders table; no result backend to run.
        "task_ignore_result": True,
        # A broker that is down must fail the request quickly, not hang it.
        "broker_connection_timeout": 2,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        "task_default_queue": orders_queue,
        "task_routes": {"tasks.send_confirmation_email": {"queue": emails_queue}},
        # Acknowledge after the task ran: a worker lost mid-task leaves the message to redeliver.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
    }
