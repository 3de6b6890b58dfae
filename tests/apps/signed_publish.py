"""Publish one message signed by the producer's own certificate, which the worker does not
trust: `python -m tests.apps.signed_publish`, with the deployment's environment and
SIGNING_FOLDER. A process of its own: setting up signing changes kombu's serializers for
the whole process."""

import os

from celery import Celery

import celeryconfig

folder = os.environ["SIGNING_FOLDER"]
producer = Celery("signed-producer")
producer.conf.update(
    celeryconfig.settings(),
    security_key=f"{folder}/producer.key", security_certificate=f"{folder}/producer.pem",
    security_cert_store=f"{folder}/producer.pem", task_serializer="auth", accept_content=["auth"],
)
producer.setup_security()
producer.send_task("matrix.work", ["signed"], headers={"traceparent": os.environ["TRACEPARENT"]})
