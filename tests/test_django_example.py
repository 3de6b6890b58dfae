"""The Django project of the tutorial (tutorial/django_project), run for real: Django's own
server, a worker of the project's Celery app on Redis, one order, one trace."""

import json
import os
import time
import urllib.request
from fractions import Fraction

from harness.polling import poll_until, port_answers
from harness.processes import ROOT, free_port, start, stop_all, wait_until_ready, worker_args
from tests.support.brokers import require
from tests.support.traces import assert_edges, complete, names
from tracetools.sources import load

PROJECT = ROOT / "tutorial" / "django_project"
TASK = "orders_site.tasks.process_order"


def test_a_django_request_and_its_task_share_one_trace(sink, tmp_path):
    require("redis")
    port = free_port()
    env = {
        # The project imports celery_signals and tracing from the repository's root.
        "PYTHONPATH": os.pathsep.join([str(PROJECT), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "orders_site.settings",
        # A database of the test's own on the shared Redis, apart from a reader's project.
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/3",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_RESOURCE_ATTRIBUTES": f"test.django={port}",
    }
    worker = start(worker_args("solo", app="orders_site"), env, tmp_path / "worker.log")
    web = start(["-m", "django", "runserver", "--noreload", f"127.0.0.1:{port}"], env,
                tmp_path / "web.log")
    try:
        wait_until_ready(worker)
        poll_until(lambda: port_answers(port), 30, "Django listening")
        since = time.time_ns()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/orders/", data=b"",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response) == {"order_id": 42}
        request_name = "POST orders/"
        wanted = {request_name, f"celery.run {TASK}", "send_confirmation"}

        def arrived():
            spans = list(load(sink.db_path, since=Fraction(since, 10**9),
                              resource={"test.django": str(port)}))
            return spans if wanted <= names(spans) and complete(spans) else None

        spans = poll_until(arrived, 30, "the request's spans")
    finally:
        stop_all([web, worker])
    assert_edges(spans, [
        (request_name, f"celery.apply {TASK}"),
        (f"celery.apply {TASK}", f"celery.run {TASK}"),
        (f"celery.run {TASK}", "charge_payment"),
        (f"celery.run {TASK}", "send_confirmation"),
    ])
