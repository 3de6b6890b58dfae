"""Fixtures for real processes: one trace sink for the session, and deployments of the
example app on real brokers (harness/deployment.py starts them)."""

import pytest

from harness.deployment import Deployment
from harness.processes import stop_all
from tests.support.brokers import require
from tracetools.sink import TraceSink


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "readme_table: checks a README table against figures the run collected"
    )


def pytest_collection_modifyitems(items):
    # A README table is checked once every test that measures a figure for it has run.
    items.sort(key=lambda item: item.get_closest_marker("readme_table") is not None)


@pytest.fixture(scope="session")
def figures():
    """What the tests measured, for the README's tables: {row: figure}."""
    return {}


@pytest.fixture(scope="session")
def sink(tmp_path_factory):
    with TraceSink(str(tmp_path_factory.mktemp("sink") / "spans.db")) as running:
        yield running


@pytest.fixture(scope="session")
def deploy(sink, tmp_path_factory):
    """deploy(variant, broker, parts, ...) returns a running Deployment, shared by every test
    that asks for the same one: starting and stopping workers is most of the suite's time.
    Tests tell their own spans apart by start time (see Deployment.wait_for_spans)."""
    running = {}

    def get(variant, broker="filesystem", parts=(), pool="prefork", worker_args=(), env=None):
        key = (variant, broker, tuple(parts), pool, tuple(worker_args),
               tuple(sorted((env or {}).items())))
        if key not in running:
            require(broker)
            deployment = Deployment(
                sink, tmp_path_factory.mktemp("deployment"), variant, broker, pool,
                worker_args=worker_args, env=env,
            )
            running[key] = deployment.start(*parts)
        return running[key]

    yield get
    stop_all(process for deployment in running.values() for process in deployment.processes())
    for deployment in running.values():
        deployment.stop()  # closes its producer; its processes are gone already


@pytest.fixture
def started(sink, tmp_path):
    """started(variant, broker, parts, ...) returns a Deployment of this test's own, stopped
    when the test ends: for tests that kill, restart or reconfigure its processes."""
    deployments = []

    def start(variant="fixed", broker="redis", parts=("worker",), **options):
        require(broker)
        deployment = Deployment(sink, tmp_path / f"deployment-{len(deployments)}", variant,
                                broker, **options)
        deployment.workdir.mkdir()
        deployments.append(deployment)
        return deployment.start(*parts)

    yield start
    for deployment in deployments:
        deployment.stop()
