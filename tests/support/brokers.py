"""Which brokers a test needs, and what happens when one does not answer."""

import os

import pytest

from harness.deployment import broker_problem


def require(broker):
    """Skip the test when BROKER does not answer; in CI, where every broker runs, fail."""
    problem = broker_problem(broker)
    if problem and os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must test every broker")
    if problem:
        pytest.skip(problem)
