"""Clients fail closed: a model that requires a protection (``meta["requires"]``) the client's
pipeline does not provide gets an ``ERROR`` naming it, never the client's parameters."""

from __future__ import annotations

from foedus.core.filter import CLIP, MASK, NOISE, Stage
from foedus.core.message import Kind, Message
from foedus.roles.client import protections_of
from foedus.transport.local import LocalTransport
from tests.security.broadcast_kit import make_job, run_job_graphs


class Seen:
    """Everything that reaches the server pod's ``update`` input."""

    def __init__(self) -> None:
        self.messages: list[Message] = []


async def test_a_client_without_the_required_stage_sends_an_error_not_its_parameters() -> None:
    transport = LocalTransport()
    job = make_job(rounds=1, round_timeout=10.0, provides=frozenset())
    job.server.required_protections = frozenset({MASK})
    seen = Seen()
    offer = job.server.collector.offer

    async def spy(msg: Message) -> bool:
        seen.messages.append(msg)
        return await offer(msg)

    job.server.collector.offer = spy  # type: ignore[method-assign]
    await run_job_graphs(job, transport, [transport] * 3)
    assert [m.kind for m in seen.messages] == [Kind.ERROR] * 3
    assert all(not m.params and "missing protection: mask" in (m.error or "")
               for m in seen.messages)
    record = job.server.history[0]
    assert sorted(record.failed_clients) == ["client-000", "client-001", "client-002"]
    assert record.accepted == 0 and record.status == "no_quorum"


async def test_a_client_that_provides_what_is_required_trains_as_usual() -> None:
    transport = LocalTransport()
    job = make_job(rounds=1, provides=frozenset({CLIP, NOISE}))
    job.server.required_protections = frozenset({NOISE})
    await run_job_graphs(job, transport, [transport] * 3)
    assert job.server.history[0].accepted == 3


def test_protections_come_from_the_stages_declared_privacy_operations() -> None:
    class LocalDP(Stage):
        privacy_operations = (CLIP, NOISE)

    class Zstd(Stage):
        privacy_operations = ("lossless",)

    assert protections_of([LocalDP(), Zstd()]) == {CLIP, NOISE}
    assert protections_of([Zstd()]) == frozenset()
