"""docker-compose.yml, checked as data: no Docker engine runs here, so the file must run
exactly the processes the tests run."""

import re

import pytest
import yaml

from harness.processes import ROOT, web_args, worker_args


@pytest.fixture(scope="module")
def services():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


STACKS = ("fixed", "broken")


def test_each_stack_runs_the_commands_the_tests_run(services):
    for stack in STACKS:
        prefix = services[f"worker-{stack}"]["environment"]["QUEUE_PREFIX"]
        assert services[f"web-{stack}"]["command"] == ["python", *web_args("gunicorn", workers=4)]
        assert services[f"worker-{stack}"]["command"] == ["python", *worker_args()]
        assert services[f"email-worker-{stack}"]["command"] == [
            "python", *worker_args(extra_args=["--queues", f"{prefix}emails"])
        ]


def test_the_broken_and_fixed_stacks_run_side_by_side_and_agree_within(services):
    stacks = {}
    for stack in STACKS:
        web = services[f"web-{stack}"]["environment"]
        for part in ("worker", "email-worker"):
            worker = services[f"{part}-{stack}"]["environment"]
            for name in ("PROPAGATION", "QUEUE_PREFIX", "CELERY_BROKER_URL",
                         "OTEL_EXPORTER_OTLP_ENDPOINT", "ORDERS_DB"):
                assert web[name] == worker[name], (stack, part, name)
        assert web["PROPAGATION"] == stack
        assert web["CELERY_BROKER_URL"].startswith("redis://redis:")
        assert web["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        stacks[stack] = web
    # One Redis and one Jaeger, but queues, orders and service names of their own each.
    for name in ("QUEUE_PREFIX", "ORDERS_DB"):
        assert stacks["fixed"][name] != stacks["broken"][name], name
    names = [service.get("environment", {}).get("OTEL_SERVICE_NAME") for service in
             services.values() if service.get("environment")]
    assert len(names) == len(set(names)) == 6


def test_nothing_is_published_beyond_localhost(services):
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_no_secrets_in_the_repository_files():
    pattern = re.compile(r"(password|secret|api[_-]?key)\w*\s*[:=]\s*\S", re.IGNORECASE)
    for path in [ROOT / "docker-compose.yml", ROOT / "Dockerfile", *ROOT.glob("*.py")]:
        assert not pattern.search(path.read_text()), f"{path.name} seems to hold a secret"


def test_the_image_installs_the_pinned_requirements():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
