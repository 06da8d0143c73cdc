"""The asynchronous client: trains back to back on the newest model it has, never waiting for a
round barrier.

A synchronous :class:`~foedus.roles.client.ClientPod` trains once per model received, so a slow
client would work through a backlog of models that are stale by the time it reaches them. This
client keeps only the newest model: after each local round it starts the next one at once from
the newest version it has heard of (possibly the same version again: with a server buffer larger
than the number of fast clients, waiting for a new version could wait forever). Its update
carries the version it trained from in ``round``, which is what the FedBuff server needs to
weigh its staleness.

Training again on the same version is a new local round, with a seed of its own (the k-th
round from one version is seeded by the client, the version and k), so it is new work and
not the update already sent: the server would count a copy as another update, applying the
same delta again. A model whose training ignores the seed (full-batch training) produces the
same update anyway: a client that trained exactly what it already sent does not send it
again, and waits for a newer version instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

import numpy as np

from foedus.core.message import Kind, Message
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter, task_seed
from foedus.roles.client import BroadcastCheck, ClientPod

log = logging.getLogger("foedus.async_client")


class AsyncClientPod(ClientPod):
    """Same constructor and wires as :class:`ClientPod`; only the pacing differs. What it obeys
    (signed broadcasts, its run's stop, the protections a model requires) is the same."""

    def __init__(
        self, *, client_id: str, model: ModelAdapter, data: Dataset, epochs: int = 1,
        eval_data: Dataset | None = None, seed: int = 0, name: str = "client",
        verify_broadcast: BroadcastCheck | None = None,
        provides: Collection[str] = frozenset(), stop_grace: float = 120.0,
    ) -> None:
        super().__init__(client_id=client_id, model=model, data=data, epochs=epochs,
                         eval_data=eval_data, seed=seed, name=name,
                         verify_broadcast=verify_broadcast, provides=provides,
                         stop_grace=stop_grace)
        self._latest: Message | None = None
        self._have_model = asyncio.Event()
        self._again = 0  # local rounds trained before from the version being trained now
        self._sent: tuple[Message, Message] | None = None  # the last model and its update

    async def on_model(self, msg: Message) -> None:
        if not await self.admit(msg):
            return
        if msg.kind is Kind.CONTROL:
            self.on_control(msg)
            return
        if self._latest is None or msg.round >= self._latest.round or (
            msg.meta.get("run") != self._latest.meta.get("run")  # a new run starts anew
        ):
            self._latest = msg
            self._have_model.set()

    def _finish(self, reason: str) -> None:
        super()._finish(reason)
        self._have_model.set()  # wake run() so it can end

    def round_seed(self, model_msg: Message) -> int:
        if not self._again:  # the first round from a version: seeded as a simulation's
            return super().round_seed(model_msg)
        return task_seed(self.seed, f"{self.client_id}#{self._again}", model_msg.round)

    async def run(self) -> None:
        await self._have_model.wait()
        while not self.finished.is_set():
            model = self._latest
            assert model is not None
            last = self._sent
            self._again = self._again + 1 if last is not None and last[0] is model else 0
            refusal = self.refusal(model)
            refused = refusal is not None
            update = refusal if refusal is not None else await self.trained(model)
            if self.finished.is_set():
                return
            copy = not refused and last is not None and last[0] is model \
                and _same_params(last[1], update)
            if not copy:
                await self.answer(update)
                self._sent = (model, update)
            if (refused or copy) and self._latest is model:  # wait for another model
                self._have_model.clear()
                await self._have_model.wait()


def _same_params(a: Message, b: Message) -> bool:
    """Whether two updates carry exactly the same parameters."""
    return a.kind is b.kind and a.params.keys() == b.params.keys() and all(
        np.array_equal(a.params[k], b.params[k]) for k in a.params)
