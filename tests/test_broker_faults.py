"""A broker that restarts under a running worker: it reconnects by itself and loses no task."""

import shutil
import time

import pytest

from harness.processes import wait_until_ready
from tests.support.private_redis import PrivateRedis


@pytest.fixture
def private_redis(tmp_path):
    redis = PrivateRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


def count_work(spans, prefix):
    return sum(span["name"].startswith(f"work {prefix}-") for span in spans)


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs the redis-server program")
def test_the_worker_reconnects_after_a_broker_restart_and_loses_no_task(
    started, private_redis, tmp_path, figures
):
    deployment = started(
        broker=private_redis.url, worker_args=["--include", "tests.apps.matrix_tasks"],
        env={"MATRIX_RESULTS_FOLDER": str(tmp_path)},
    )
    wait_until_ready(deployment.workers[0])
    since = time.time_ns()
    for number in range(10):
        deployment.send_task("matrix.work", [f"before-{number}"])
    deployment.wait_for_spans(lambda spans: count_work(spans, "before") == 10, since)
    private_redis.stop()
    private_redis.start()
    # Nobody tells the worker: it has to notice, reconnect, and take these.
    for number in range(10):
        deployment.send_task("matrix.work", [f"after-{number}"])
    spans = deployment.wait_for_spans(
        lambda spans: count_work(spans, "after") == 10, since, deadline=60
    )
    assert count_work(spans, "before") == count_work(spans, "after") == 10
    figures["broker restarted under a running worker"] = (
        "reconnected by itself; 20 of 20 tasks published before and after it ran"
    )
