"""The public testing kit runs users' pods and small jobs without brokers."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.core.filter import Filter
from foedus.core.message import Message
from foedus.testing import make_message, run_pod, run_rounds


class Double(Filter):
    def process(self, msg: Message) -> Message:
        return msg.replace(params={k: v * 2 for k, v in msg.params.items()})


def test_run_pod_returns_outputs_by_wire_in_order() -> None:
    out = run_pod(Double(), {"in": [make_message(params={"w": [1.0, 2.0]}, round=r)
                                    for r in (1, 2)]})
    assert [m.round for m in out["out"]] == [1, 2]
    np.testing.assert_array_equal(out["out"][0].params["w"], [2.0, 4.0])


def test_run_pod_reraises_handler_failures() -> None:
    class Broken(Filter):
        def process(self, msg: Message) -> Message:
            raise ValueError("bad filter")

    with pytest.raises(Exception, match="bad filter"):
        run_pod(Broken(), {"in": [make_message()]})


def test_run_rounds_runs_a_small_job() -> None:
    result = run_rounds(3, clients=3)
    assert len(result.history) == 3
    assert result.final_metrics["accuracy"] > 0.5


@pytest.mark.integration  # a fresh interpreter: what `import foedus.testing` pulls in alone
def test_the_kit_imports_without_pytest_and_the_contract_brings_it() -> None:
    import subprocess
    import sys

    code = ("import sys, foedus.testing; assert 'pytest' not in sys.modules, 'pytest imported'; "
            "import foedus.testing.transport_contract; assert 'pytest' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_wait_until_returns_once_the_condition_holds_and_names_it_when_it_never_does(
) -> None:
    import asyncio

    from foedus.testing import wait_until

    flag = asyncio.Event()
    asyncio.get_running_loop().call_soon(flag.set)
    await wait_until(flag.is_set, 5)
    with pytest.raises(TimeoutError, match="the impossible"):
        await wait_until(lambda: False, 0.05, what="the impossible")


def test_the_transport_contract_is_a_class_of_tests_to_subclass() -> None:
    from foedus.testing.transport_contract import TransportContract

    tests = [n for n in vars(TransportContract) if n.startswith("test_")]
    assert "test_group_resumes_after_reconnect" in tests and len(tests) >= 8
    assert not TransportContract.__name__.startswith("Test")  # collected only via subclasses
