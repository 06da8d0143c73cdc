"""Shared fixtures. Integration fixtures start real components on free loopback ports."""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

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


# ---- how scripts/test.sh spreads the suite over workers (pytest-xdist, --dist loadscope) ---------
#
# A unit of work is a test file (its tests share module fixtures: a federation, a broker), but
# each docs block is its own unit (they are independent and some are long), except the blocks
# that need MLflow or S3, which join tests/mlops/ so that one worker starts those servers once.
# xdist's own grouping (``--dist loadgroup``, a suffix on each node id) does not work with
# pytest 9, whose node ids cannot be rewritten; ``pytest_xdist_make_scheduler`` below tells
# xdist's scope scheduler our units instead.

#: files (or folders) whose tests take longest, slowest first. They are queued before the rest,
#: so that no worker starts one of them when the others are nearly done (with files queued in
#: collection order, the last minutes of a run were one worker finishing a slow file alone).
SLOWEST_FIRST: tuple[str, ...] = (
    "tests/federation/",
    "tests/mlops/",
    "tests/transport/test_kafka.py",
    "tests/sim/test_engine.py",
    "tests/reliability/test_faults.py",
    "tests/vertical/",
    "tests/test_examples.py",
    "tests/transport/test_mqtt.py",
    "tests/topology/test_topologies_kafka.py",
    "tests/transport/test_actor_processes.py",
    "tests/privacy/test_secagg_jobs.py",
    "tests/test_cli.py",
)


@functools.cache
def _blocks_needing_servers() -> frozenset[str]:
    from tests.docblocks import PAGES, read_blocks

    return frozenset(b.id for page in PAGES for b in read_blocks(page) if b.options.get("needs"))


def work_unit(nodeid: str) -> str:
    """The unit of work of a test, from its node id (what the scheduler sees)."""
    path, _, rest = nodeid.partition("::")
    if path.startswith("tests/mlops/"):
        return "tests/mlops/"
    if path == "tests/test_docs.py":
        block = rest.partition("[")[2].removesuffix("]")
        return "tests/mlops/" if block in _blocks_needing_servers() else nodeid
    return path


def _queue_rank(nodeid: str) -> int:
    unit = work_unit(nodeid)
    for rank, prefix in enumerate(SLOWEST_FIRST):
        if unit.startswith(prefix):
            return rank
    return len(SLOWEST_FIRST) + unit.startswith("tests/test_docs.py::")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With ``--dist loadscope``: xdist's scope scheduler, whose scopes are our work units (and
    whose queue is the workers' collection order, slowest units first: see below)."""
    if config.getoption("dist", "no") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker (which collects the tests the scheduler queues, in this order): the
    slowest units first. A run without workers keeps the files' order."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (_queue_rank(item.nodeid), position[id(item)]))
