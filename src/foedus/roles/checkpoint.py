"""Server checkpoints: the global model, the round reached and the aggregator's state on disk.

Written atomically (temporary file, then rename) in the foedus wire format, so a crash while
saving leaves the previous checkpoint intact and loading never unpickles anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foedus.codec import decode, encode
from foedus.core.message import Kind, Message
from foedus.core.params import Params


@dataclass(frozen=True)
class Checkpoint:
    round: int
    params: dict[str, np.ndarray]
    aggregator_state: dict[str, Any]
    history: list[dict[str, Any]]


class Checkpointer:
    """Saves and loads the latest checkpoint of one job in ``directory``."""

    def __init__(self, directory: str | Path, job_id: str) -> None:
        self.path = Path(directory) / f"{job_id}.ckpt"
        self.job_id = job_id

    def save(
        self, round: int, params: Params, aggregator_state: dict[str, Any],
        history: list[dict[str, Any]],
    ) -> None:
        # aggregator state may hold arrays (optimiser moments): store them as parameters
        arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
        plain_state: dict[str, Any] = {}
        for key, value in aggregator_state.items():
            if isinstance(value, np.ndarray):
                arrays[f"state/{key}"] = value
            else:
                plain_state[key] = value
        msg = Message.create(
            Kind.CONTROL, job_id=self.job_id, round=round, sender="checkpoint", params=arrays,
            meta={"aggregator_state": plain_state, "history": history},
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(encode(msg))
        os.replace(tmp, self.path)

    def load(self) -> Checkpoint | None:
        if not self.path.exists():
            return None
        msg = decode(self.path.read_bytes())
        params = {k[6:]: np.array(v) for k, v in msg.params.items() if k.startswith("param/")}
        state: dict[str, Any] = dict(msg.meta["aggregator_state"])
        state.update({k[6:]: np.array(v) for k, v in msg.params.items() if k.startswith("state/")})
        return Checkpoint(msg.round, params, state, list(msg.meta["history"]))
