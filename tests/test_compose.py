"""docker-compose.yml, checked as data: no Docker engine runs here, so the file must run
exactly the processes the tests run."""

import re

import pytest
import yaml

from harness.processes import ROOT, web_args, worker_args


@pytest.fixture(scope="module")
def services():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_web_and_worker_run_the_commands_the_tests_run(services):
    assert services["web"]["command"] == ["python", *web_args("gunicorn", workers=4)]
    assert services["worker"]["command"] == ["python", *worker_args()]
    assert services["email-worker"]["command"] == [
        "python", *worker_args(extra_args=["--queues", "emails"])
    ]


def test_web_and_worker_agree_on_variant_broker_and_collector(services):
    web = services["web"]["environment"]
    for worker in (services["worker"]["environment"], services["email-worker"]["environment"]):
        for name in ("PROPAGATION", "CELERY_BROKER_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            assert web[name] == worker[name], name
    assert web["CELERY_BROKER_URL"].startswith("redis://redis:")
    assert web["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert services["email-worker"]["environment"]["OTEL_SERVICE_NAME"] == "email-worker"


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
