"""What every vertical protocol shares (:mod:`foedus.vertical.parties`): joining a run."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from foedus.core.runtime import Runtime
from foedus.transport.local import LocalTransport
from foedus.vertical.linear import Task
from foedus.vertical.pods import FeaturePartyPod, Topics, feature_graph

pytest.importorskip("private_set_intersection.python")


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
