"""JobParts builds every actor of a job from its job file, so what one process's job file asks
for is what its actors do, whatever the other processes' files say."""

from __future__ import annotations

from foedus.config.parts import build_parts
from foedus.config.spec import JobSpec
from foedus.config.topology import topology_of
from foedus.runner import run_assembly
from foedus.transport.local import LocalTransport

JOB = {"job_id": "parts", "rounds": 2, "round_timeout": 10, "clients": {"count": 3},
       "data": {"dataset": "digits", "partition": "iid"}}
LOCAL_DP = {"type": "local-dp", "params": {"clip_norm": 1.0, "noise_multiplier": 0.5}}


async def test_clients_whose_job_file_lacks_the_servers_protection_fail_closed() -> None:
    """The server's job file asks for local DP; the clients' file forgot it. Each client sees
    the broadcast require clip and noise, and answers with an error instead of its update."""
    server_spec = JobSpec.from_dict(JOB | {"pipeline": [LOCAL_DP]})
    client_spec = JobSpec.from_dict(JOB)
    shared = LocalTransport()  # both halves in this process, meeting on one transport
    server_side = topology_of(server_spec).build(
        build_parts(server_spec, clients=()), ["server"], lambda _actor: shared)
    client_side = topology_of(client_spec).build(
        build_parts(client_spec), ["client-000", "client-001", "client-002"],
        lambda _actor: shared)
    server_side.runtimes.update(client_side.runtimes)
    await run_assembly(server_side, None, grace=5)
    history = server_side.history()
    assert [r.status for r in history] == ["no_quorum", "no_quorum"]
    assert all(sorted(r.failed_clients) == ["client-000", "client-001", "client-002"]
               for r in history)
    assert all(r.accepted == 0 for r in history)


async def test_clients_with_the_same_protection_train() -> None:
    spec = JobSpec.from_dict(JOB | {"pipeline": [LOCAL_DP]})
    shared = LocalTransport()
    built = topology_of(spec).build(build_parts(spec), topology_of(spec).actors(spec),
                                    lambda _actor: shared)
    await run_assembly(built, None, grace=5)
    assert [r.accepted for r in built.history()] == [3, 3]
