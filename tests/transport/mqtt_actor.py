"""One actor of a federated job over MQTT, as its own OS process (for the multi-process test).

``python -m tests.transport.mqtt_actor JOB_JSON CERTS_DIR server`` or ``... client INDEX``.
Every actor builds the same job parts from the same job file (same seed, so the same data split)
and shares nothing with the others but the broker. Each presents its own certificate
(``client-00i`` or ``fl-server``), so with ``verify_sender`` every update is checked against the
identity of the connection that published it. Prints ``ready`` once subscribed; the server prints
one JSON line per finished round and ``done`` at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from foedus.config.parts import build_parts, client_id
from foedus.config.spec import JobSpec
from foedus.core.runtime import Runtime
from foedus.roles.server import RoundRecord
from foedus.topology.centralized import client_graph, server_graph
from foedus.transport.mqtt import MqttTransport
from foedus.transport.tls import TLSConfig


def _print_round(record: RoundRecord) -> None:
    print(json.dumps(record.to_dict()), flush=True)


async def main(raw: dict[str, object], certs: Path, role: str, index: int) -> None:
    spec = JobSpec.from_dict(raw)
    parts = build_parts(spec)
    if role == "server":
        parts.round_listeners.append(_print_round)
    name = "fl-server" if role == "server" else client_id(index)
    tls = TLSConfig(certs / "ca.pem", certs / "clients" / f"{name}.pem",
                    certs / "clients" / f"{name}.key")
    transport = MqttTransport(**{**spec.transport.params, "tls": tls})
    try:
        if role == "server":
            graph = server_graph(parts.make_server(), transport, filters=parts.server_filters())
            async with Runtime(graph) as runtime:
                print("ready", flush=True)
                await runtime.wait()
            print("done", flush=True)
        else:
            client = parts.make_client(index)
            graph = client_graph(client, transport, spec.job_id, filters=parts.client_filters())
            async with Runtime(graph):
                print("ready", flush=True)
                await client.finished.wait()
    finally:
        await transport.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3],
                     int(sys.argv[4]) if len(sys.argv) > 4 else 0))
