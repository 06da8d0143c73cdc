"""The client's round (figure 2 of the ALCHIMIA seed) as one pod.

On each global model received on ``model``: load it into the local framework, train on local
data, evaluate, and send the update on ``update`` (through whatever privacy and compression
filters the graph puts after it). Training runs in a worker thread so the event loop keeps
serving the transport. A failure is reported to the server as an ``ERROR`` message: errors travel
as values, and the server skips this client for the round instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from foedus.core.errors import ConfigError
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter, task_seed

log = logging.getLogger("foedus.client")


class ClientPod(Pod):
    """One participant. ``data`` never leaves this pod; only parameters and metrics do."""

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("model"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("update"),)

    def __init__(
        self, *, client_id: str, model: ModelAdapter, data: Dataset, epochs: int = 1,
        eval_data: Dataset | None = None, seed: int = 0, name: str = "client",
    ) -> None:
        super().__init__(name)
        if epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {epochs}")
        if len(data) == 0:
            raise ConfigError(f"client {client_id!r} has no training data")
        self.client_id = client_id
        self.model = model
        self.data = data
        self.eval_data = eval_data
        self.epochs = epochs
        self.seed = seed
        self.rounds_trained = 0
        self.finished = asyncio.Event()

    async def on_model(self, msg: Message) -> None:
        if msg.kind is Kind.CONTROL:
            if msg.meta.get("action") == "stop":
                self.finished.set()
            return
        if msg.kind is not Kind.MODEL:
            return
        selected = msg.meta.get("selected")
        if selected is not None and self.client_id not in selected:
            return  # not sampled this round
        try:
            update = await asyncio.to_thread(self.train, msg)
        except Exception as exc:
            log.exception("client %s failed in round %d", self.client_id, msg.round)
            update = msg.reply(Kind.ERROR, self.client_id, error=f"{type(exc).__name__}: {exc}")
        await self.send("update", update)

    def train(self, model_msg: Message) -> Message:
        """One local round: load, fit, evaluate; returns the update message."""
        self.model.set_params(model_msg.params)
        self.model.begin_round(task_seed(self.seed, self.client_id, model_msg.round))
        train_metrics = self.model.fit(self.data, epochs=self.epochs)
        metrics = {f"train_{k}": v for k, v in train_metrics.items()}
        if self.eval_data is not None and len(self.eval_data):
            metrics.update({f"eval_{k}": v for k, v in self.model.evaluate(self.eval_data).items()})
        self.rounds_trained += 1
        return model_msg.reply(
            Kind.UPDATE, self.client_id, params=self.model.get_params(),
            num_examples=len(self.data), metrics=metrics,
        )

    async def run(self) -> None:
        await self.finished.wait()
