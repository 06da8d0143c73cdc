"""The asynchronous client: trains back to back on the newest model it has, never waiting for a
round barrier.

A synchronous :class:`~foedus.roles.client.ClientPod` trains once per model received, so a slow
client would work through a backlog of models that are stale by the time it reaches them. This
client keeps only the newest model: after each local round it starts the next one at once from
the newest version it has heard of (possibly the same version again: with a server buffer larger
than the number of fast clients, waiting for a new version could wait forever). Its update
carries the version it trained from in ``round``, which is what the FedBuff server needs to
weigh its staleness.
"""

from __future__ import annotations

import asyncio
import logging

from foedus.core.message import Kind, Message
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter
from foedus.roles.client import ClientPod

log = logging.getLogger("foedus.async_client")


class AsyncClientPod(ClientPod):
    """Same constructor and wires as :class:`ClientPod`; only the pacing differs."""

    def __init__(
        self, *, client_id: str, model: ModelAdapter, data: Dataset, epochs: int = 1,
        eval_data: Dataset | None = None, seed: int = 0, name: str = "client",
    ) -> None:
        super().__init__(client_id=client_id, model=model, data=data, epochs=epochs,
                         eval_data=eval_data, seed=seed, name=name)
        self._latest: Message | None = None
        self._have_model = asyncio.Event()

    async def on_model(self, msg: Message) -> None:
        if msg.kind is Kind.CONTROL:
            if msg.meta.get("action") == "stop":
                self.finished.set()
                self._have_model.set()
            return
        if msg.kind is not Kind.MODEL:
            return
        if self._latest is None or msg.round >= self._latest.round:
            self._latest = msg
            self._have_model.set()

    async def run(self) -> None:
        await self._have_model.wait()
        while not self.finished.is_set():
            model = self._latest
            assert model is not None
            try:
                update = await asyncio.to_thread(self.train, model)
            except Exception as exc:
                log.exception("client %s failed on version %d", self.client_id, model.round)
                update = model.reply(Kind.ERROR, self.client_id,
                                     error=f"{type(exc).__name__}: {exc}")
            if self.finished.is_set():
                return
            await self.send("update", update)
