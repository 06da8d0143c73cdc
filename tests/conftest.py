"""Shared fixtures. Integration fixtures start real components on free loopback ports."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that starts a real component must be marked integration (see tests/markers.py)."""
    from tests.markers import check

    check(item)
