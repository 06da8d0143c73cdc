"""The server checks this suite proposes for ``foedus.roles.server.ServerPod``, as a subclass.

Three gaps found by the hostile-input tests, each closed here exactly as the proposed kernel
change would close it (see docs/reliability.md, "Proposed kernel changes"):

* **replayed**: a message id seen in this round or the previous one is refused, whoever claims
  to send it. Today a replay is refused only as ``duplicate`` (same sender, same round) or
  ``stale_round`` (older round), and one recorded before a restart is not recognised at all.
* **unknown_sender**: when the participants are known (the runner always passes them), a sender
  outside that list is refused. Today any name is accepted, so an outsider on a shared broker can
  both add an update to the aggregate and count as an answer that ends the round early.
* **wrong_dtype**: an array whose dtype cannot be cast to the model's within its kind (complex
  into float, for example) is refused. Today ``ParamSpec.check`` compares names and shapes only,
  and FedAvg silently drops the imaginary part of a complex update. The proposed change is in
  ``ParamSpec.check`` (every aggregator calls it in ``accept``); :class:`StrictFedAvg` shows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from foedus.aggregate.fedavg import FedAvg
from foedus.core.errors import RejectedUpdate
from foedus.core.message import Message
from foedus.core.params import Params, ParamSpec
from foedus.roles.server import ServerPod


def check_dtypes(spec: ParamSpec, params: Params) -> None:
    """The proposed addition to ``ParamSpec.check``, after its name and shape checks."""
    for name, dtype, array in zip(spec.names, spec.dtypes, params.values(), strict=True):
        if not np.can_cast(array.dtype, dtype, "same_kind"):
            raise RejectedUpdate(
                "wrong_dtype", f"{name!r} is {array.dtype}, the model's is {dtype}"
            )


class StrictFedAvg(FedAvg):
    """FedAvg with the proposed dtype check, where the kernel would run it (in ``accept``)."""

    def accept(self, update: Message) -> None:
        self.spec.check(update.params)
        check_dtypes(self.spec, update.params)
        super().accept(update)


class HardenedServer(ServerPod):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._seen_ids: dict[int, set[str]] = {}

    async def _run_round(self, rnd: int) -> None:
        async with self._lock:  # forget ids older than the previous round: bounded memory
            self._seen_ids = {r: ids for r, ids in self._seen_ids.items() if r >= rnd - 1}
        await super()._run_round(rnd)

    def _check(self, msg: Message) -> None:
        mid = msg.header.message_id
        if any(mid in ids for ids in self._seen_ids.values()):
            raise RejectedUpdate("replayed", f"message {mid} was already received")
        super()._check(msg)
        if self.participants is not None and msg.sender not in self.participants:
            raise RejectedUpdate("unknown_sender", f"{msg.sender!r} is not a participant")
        self._seen_ids.setdefault(self.current_round, set()).add(mid)
