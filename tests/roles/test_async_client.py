"""The asynchronous client: trains back to back on the newest version, and what it sends when
no newer version has come is new work, never a copy of an update it already sent."""

from __future__ import annotations

import numpy as np

from foedus.codec import encode
from foedus.core.message import Kind, Message
from foedus.core.runtime import Runtime
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter, task_seed
from foedus.roles.async_client import AsyncClientPod
from foedus.roles.client import ClientPod
from foedus.testing import wait_until
from foedus.topology.centralized import client_graph, topics
from foedus.transport.local import LocalTransport

JOB = "fedbuff"


class Stepper(ModelAdapter):
    """Each local round adds 1 to ``w``; ``seeded``: plus a little that depends on the round's
    seed (as a shuffle would), else the same every time (as full-batch training would)."""

    def __init__(self, seeded: bool) -> None:
        self.w, self.seed, self.seeded = np.zeros(2), 0, seeded

    def get_params(self) -> dict[str, np.ndarray]:
        return {"w": self.w.copy()}

    def set_params(self, params: dict[str, np.ndarray]) -> None:  # type: ignore[override]
        self.w = np.array(params["w"], dtype=np.float64)

    def begin_round(self, seed: int) -> None:
        self.seed = seed

    def fit(self, data: Dataset, *, epochs: int = 1) -> dict[str, float]:
        self.w = self.w + 1.0 + (self.seed / 2**32 if self.seeded else 0.0)
        return {}

    def evaluate(self, data: Dataset) -> dict[str, float]:
        return {}


def version(n: int) -> bytes:
    return encode(Message.create(Kind.MODEL, job_id=JOB, round=n, sender="server",
                                 params={"w": np.full(2, 10.0 * n)}))


async def run_client(seeded: bool, enough: int) -> list[Message]:
    """Give a client version 0, and version 1 once it sent ``enough`` updates; its updates."""
    sent: list[Message] = []
    client = AsyncClientPod(client_id="c0", model=Stepper(seeded), data=Dataset(
        np.zeros((4, 2)), np.zeros(4)))

    def record(_: ClientPod, update: Message) -> None:
        sent.append(update)

    client.round_listeners.append(record)
    transport = LocalTransport()
    runtime = Runtime(client_graph(client, transport, JOB))
    await runtime.start()
    await transport.publish(topics(JOB).model, version(0))
    await wait_until(lambda: len(sent) >= enough, what=f"{enough} updates from version 0")
    await transport.publish(topics(JOB).model, version(1))
    await wait_until(lambda: any(u.round == 1 for u in sent), what="an update from version 1")
    await runtime.stop()
    await transport.close()
    return sent


async def test_training_again_on_the_same_version_is_a_fresh_local_round() -> None:
    sent = await run_client(seeded=True, enough=3)
    again = [u.params["w"][0] for u in sent if u.round == 0]
    assert len(again) >= 3 and len(set(again)) == len(again)  # each one new work
    assert again[0] == 1.0 + task_part(sent[0])  # the first is the round a sim would train


def task_part(update: Message) -> float:
    """What the seed of ``update``'s first local round adds to it."""
    return task_seed(0, "c0", update.round) / 2**32


async def test_an_update_identical_to_one_already_sent_is_not_sent_again() -> None:
    # a model whose local round ignores the seed trains the same update from the same version:
    # the server counted each copy as new work (the same delta applied again and again)
    sent = await run_client(seeded=False, enough=1)
    assert [u.round for u in sent] == [0, 1]
