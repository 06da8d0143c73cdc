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
