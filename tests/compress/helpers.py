"""Small builders shared by the compression tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from foedus.core.message import Kind, Message


def update(params: Mapping[str, np.ndarray], round: int = 1, sender: str = "client-000") -> Message:
    return Message.create(Kind.UPDATE, job_id="job", round=round, sender=sender, params=params)


def model(params: Mapping[str, np.ndarray], round: int = 1) -> Message:
    return Message.create(Kind.MODEL, job_id="job", round=round, sender="server", params=params)


def weights(seed: int = 0, scale: float = 0.1) -> dict[str, np.ndarray]:
    """A small model's parameters: two float32 layers, a float64 bias and an integer buffer."""
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": (rng.normal(size=(40, 30)) * scale).astype(np.float32),
        "layer.bias": (rng.normal(size=30) * scale).astype(np.float64),
        "head.weight": (rng.normal(size=(30, 10)) * scale).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }
