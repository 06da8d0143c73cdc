"""One actor of a federated job over Kafka, as its own OS process (for the multi-process tests).

``python -m tests.transport.kafka_actor JOB_JSON server`` or ``... JOB_JSON client INDEX``.
Every actor builds the same job parts from the same job file (same seed, so the same data split)
and shares nothing with the others but the Kafka broker. It prints ``ready`` once subscribed; the
server prints one JSON line per finished round and ``done`` at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys

from foedus.config.parts import build_parts, client_id
from foedus.config.spec import JobSpec
from foedus.core.runtime import Runtime
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord
from foedus.topology.centralized import client_graph, server_graph
from foedus.transport.kafka import KafkaTransport


def _print_round(record: RoundRecord) -> None:
    print(json.dumps(record.to_dict()), flush=True)


async def main(raw: dict[str, object], role: str, index: int) -> None:
    spec = JobSpec.from_dict(raw)
    parts = build_parts(spec)
    if role == "server":
        parts.round_listeners.append(_print_round)
    transport = KafkaTransport(**spec.transport.params)
    try:
        if role == "server":
            graph = server_graph(parts.make_server(), transport, filters=parts.server_filters())
            async with Runtime(graph) as runtime:
                print("ready", flush=True)
                await runtime.wait()
            print("done", flush=True)
        else:
            client = ClientPod(client_id=client_id(index), model=parts.make_model(),
                               data=parts.shares[index], epochs=spec.clients.epochs)
            graph = client_graph(client, transport, spec.job_id, filters=parts.client_filters())
            async with Runtime(graph):
                print("ready", flush=True)
                await client.finished.wait()
    finally:
        await transport.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2],
                     int(sys.argv[3]) if len(sys.argv) > 3 else 0))
