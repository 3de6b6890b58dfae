"""The example app's Celery settings, read from the environment and nothing more.

Importing this module connects no signal and creates no file: tasks.py, the tests and the
benchmarks all take their settings from here.
"""

import math
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
        visibility_timeout = env.get("CELERY_BROKER_VISIBILITY_TIMEOUT")
        if visibility_timeout:
            return {"broker_url": url,
                    "broker_transport_options": visibility_options(visibility_timeout)}
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


def visibility_options(seconds):
    """Redis's transport options for a visibility timeout of SECONDS (text or a number).

    Redis has no acknowledgements of its own: kombu keeps each message a worker took until
    the worker acknowledges it, and hands it to another worker only after the visibility
    timeout (an hour by default). Keep it above your longest task, countdown and eta: a
    message held longer goes to a second worker while the first still has it.
    """
    try:
        timeout = float(seconds)
    except ValueError:
        timeout = 0.0
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(
            f"CELERY_BROKER_VISIBILITY_TIMEOUT must be a number of seconds above 0, not {seconds!r}"
        )
    return {
        "visibility_timeout": timeout,
        # kombu looks for such messages every 10 x 10 s by default, so a short timeout would
        # still mean waiting minutes: look ten times per timeout instead (one query to Redis).
        "unacked_restore_interval": max(1.0, timeout / 10),
        "unacked_restore_throttle": 1,
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
        # A pool process killed mid-task (kill -9, the OOM killer): without this, Celery marks
        # the task failed and acknowledges its message, and the order stays half done. With
        # it, the message goes back to the queue and the task runs again, so tasks must be
        # idempotent (orders_db.advance). A task that kills its process every time would
        # come back for ever: watch for WorkerLostError in the worker's log.
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
    }
