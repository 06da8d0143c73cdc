"""One swarm peer as its own OS process, talking to the others only through a Kafka broker.

``python -m tests.topology.swarm_actor JOB_JSON INDEX``. Every peer loads the same digits split
(same seed) and trains on its share. It prints ``ready`` once subscribed, one JSON line per
finished round (``{"round": r, "alive": [...]}``), then ``{"params": {...}}`` with its final model.
"""

from __future__ import annotations

import asyncio
import json
import sys

from foedus.core.runtime import Runtime
from foedus.roles.peer import PeerPod, PeerRecord
from foedus.topology.swarm import swarm_graph
from foedus.transport.kafka import KafkaTransport
from tests.topology.helpers import digits


def _print_round(peer: PeerPod, record: PeerRecord) -> None:
    print(json.dumps({"round": record.round, "alive": record.alive,
                      "received": record.received}), flush=True)


async def main(job: dict[str, object], index: int) -> None:
    data = digits(int(job["peers"]))  # type: ignore[call-overload]
    peer = PeerPod(
        job_id=str(job["job_id"]), peer_id=f"peer-{index}", model=data.model(),
        data=data.shares[index], rounds=int(job["rounds"]),  # type: ignore[call-overload]
        expected_peers=int(job["peers"]),  # type: ignore[call-overload]
        round_timeout=float(job["round_timeout"]),  # type: ignore[arg-type]
    )
    peer.round_listeners.append(_print_round)
    transport = KafkaTransport(str(job["bootstrap"]))
    try:
        async with Runtime(swarm_graph(peer, transport)) as runtime:
            print("ready", flush=True)
            await runtime.wait()
        print(json.dumps({"params": {k: v.tolist() for k, v in peer.params.items()}}),
              flush=True)
    finally:
        await transport.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), int(sys.argv[2])))
