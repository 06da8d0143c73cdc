"""What every vertical protocol shares (:mod:`foedus.vertical.parties`): joining a run."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.transport.local import LocalTransport
from foedus.vertical.linear import Task
from foedus.vertical.pods import FeaturePartyPod, Topics, feature_graph
from tests.vertical.helpers import run_vertical

pytest.importorskip("private_set_intersection.python")
pytest.importorskip("phe")


async def test_a_feature_party_whose_label_party_never_comes_ends_and_says_why() -> None:
    # it used to say hello every half second for ever: `foedus actor JOB lab` never ended
    lab = FeaturePartyPod(job_id="vfl", party="lab", label_party="hospital",
                          task=Task("binary", (0, 1)), ids=["a", "b"], x=np.zeros((2, 3)),
                          learning_rate=0.1, join_timeout=0.3)
    transport = LocalTransport()
    runtime = Runtime(feature_graph(lab, transport, Topics("foedus.vfl.vertical")))
    await runtime.start()
    await asyncio.wait_for(runtime.wait(), 10)
    await runtime.stop()
    await transport.close()
    assert lab.stop_reason == "the label party 'hospital' did not answer within 0.3s"


class _WrongShape(FeaturePartyPod):
    """Answers every step it is asked with a gradient of the wrong shape (a party whose job
    file disagrees with the label party's)."""

    def _residuals(self, msg: Message) -> None:
        self.emit("reply", self._message(Kind.UPDATE, "gradient", msg.round,
                                         {"gradient": np.zeros((3, 7), np.uint8)}))


async def test_a_party_whose_every_answer_is_refused_is_named_with_why() -> None:
    # the job used to stop saying only that the party 'did not answer', though it did
    run = await run_vertical("wine", {"hospital": range(0, 7), "lab": range(7, 13)}, rounds=2,
                             learning_rate=0.5, feature_cls=_WrongShape, round_timeout=1)
    reason = run.label.stop_reason
    assert reason is not None and reason.startswith(
        "parties ['lab'] did not answer step 'gradient' of round 1 within 1s; refused from "
        "lab: malformed (")
    assert "got uint8 (3, 7)" in reason and "\n" not in reason
