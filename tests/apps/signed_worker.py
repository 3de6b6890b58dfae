"""Message signing (Celery's `auth` serializer) for a worker that trusts one certificate.

Loaded with `--include tests.apps.signed_worker`; SIGNING_FOLDER holds worker.key, worker.pem.
"""

import os

from tasks import celery_app

folder = os.environ["SIGNING_FOLDER"]
celery_app.conf.update(
    security_key=f"{folder}/worker.key", security_certificate=f"{folder}/worker.pem",
    security_cert_store=f"{folder}/worker.pem", task_serializer="auth", accept_content=["auth"],
)
celery_app.setup_security()
