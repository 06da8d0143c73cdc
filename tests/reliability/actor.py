"""One actor of a job as its own OS process, for the fault-injection tests.

``python -m tests.reliability.actor server JOB_JSON`` runs the server (``run_server``, so the
job's ``checkpoint_dir`` is honoured) and prints one JSON line per finished round, then
``summary <json>``. ``python -m tests.reliability.actor client JOB_JSON INDEX [DELAY]`` runs client
``INDEX``; it prints ``ready`` once subscribed, ``training <round>`` as a local round starts and
``trained <round>`` after it.
``DELAY`` seconds of extra "training" make a client slower than the round deadline; a last
argument ``held`` makes it print ``loaded`` once built and wait for a line on stdin to join.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from foedus.config.parts import build_parts, client_id
from foedus.config.spec import JobSpec
from foedus.core.message import Message
from foedus.core.runtime import Runtime
from foedus.plugins import load_plugins
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord
from foedus.runner import run_server
from foedus.topology.centralized import client_graph
from foedus.transport.base import transports


class ReportingClient(ClientPod):
    """A client that says when it trained, and may be slow on purpose."""

    delay = 0.0

    def train(self, model_msg: Message) -> Message:
        print(f"training {model_msg.round}", flush=True)
        if self.delay:
            time.sleep(self.delay)
        update = super().train(model_msg)
        print(f"trained {model_msg.round}", flush=True)
        return update


def _print_round(record: RoundRecord) -> None:
    print(json.dumps(record.to_dict()), flush=True)


async def serve(spec: JobSpec) -> None:
    result = await run_server(spec, on_round=_print_round)
    print("summary " + json.dumps(result.summary()), flush=True)


async def client(spec: JobSpec, index: int, delay: float, held: bool) -> None:
    load_plugins()
    parts = build_parts(spec)
    pod = ReportingClient(
        client_id=client_id(index), model=parts.make_model(), data=parts.shares[index],
        epochs=spec.clients.epochs, seed=spec.seed,
    )
    pod.delay = delay
    if held:
        print("loaded", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    transport = transports.create(spec.transport.type, **spec.transport.params)
    try:
        graph = client_graph(pod, transport, spec.job_id, filters=parts.client_filters())
        async with Runtime(graph):
            print("ready", flush=True)
            await pod.finished.wait()
    finally:
        await transport.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = JobSpec.from_dict(json.loads(sys.argv[2]))
    if sys.argv[1] == "server":
        asyncio.run(serve(job))
    else:
        asyncio.run(client(job, int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0,
                           held=sys.argv[-1] == "held"))
