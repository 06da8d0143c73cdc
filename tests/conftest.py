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


# ---- how scripts/test.sh spreads the suite over workers (pytest-xdist, --dist loadgroup) ---------

#: files (or folders) whose tests take longest, slowest first. They are queued before the rest,
#: so that no worker starts one of them when the others are nearly done (with files queued in
#: collection order, the last minutes of a run were one worker finishing a slow file alone).
SLOWEST_FIRST: tuple[str, ...] = (
    "tests/federation/",
    "tests/trees/histforest/",
    "tests/transport/test_kafka.py",
    "tests/mlops/",
    "tests/vertical/",
    "tests/test_examples.py",
    "tests/transport/test_actor_processes.py",
    "tests/topology/test_registry.py",
    "tests/transport/test_mqtt.py",
    "tests/test_cli_processes.py",
)


def work_unit(item: pytest.Item) -> str | None:
    """The unit of work a test belongs to: its file, whose tests share module fixtures. The
    docs blocks of tests/test_docs.py are independent and some are long: each is its own unit
    (None), so they spread over the workers, except those that need MLflow or S3, which go with
    tests/mlops/ so that one worker starts those servers once."""
    path = item.nodeid.split("::")[0]
    if path.startswith("tests/mlops/"):
        return "tests/mlops/"
    if path == "tests/test_docs.py":
        callspec = getattr(item, "callspec", None)
        block = callspec.params.get("block") if callspec is not None else None
        return "tests/mlops/" if block is not None and block.options.get("needs") else None
    return path


def _queue_rank(item: pytest.Item) -> int:
    unit = work_unit(item) or item.nodeid
    for rank, prefix in enumerate(SLOWEST_FIRST):
        if unit.startswith(prefix):
            return rank
    return len(SLOWEST_FIRST) + (unit.startswith("tests/test_docs.py::"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group each test into its unit of work (an ``xdist_group``) and queue the slowest units
    first; scripts/test.sh runs ``--dist loadgroup --no-loadscope-reorder``."""
    if config.getoption("dist", "no") != "loadgroup":
        return
    for item in items:
        unit = work_unit(item)
        if unit is not None:
            item.add_marker(pytest.mark.xdist_group(unit))
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (_queue_rank(item), position[id(item)]))
