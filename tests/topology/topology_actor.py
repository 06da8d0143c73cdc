"""Some actors of a hierarchical or async job as one OS process, meeting the others only
through the job's transport (a Kafka broker in the tests).

``python -m tests.topology.topology_actor JOB_JSON ACTOR[,ACTOR...] [DELAY_S]``. ``JOB_JSON`` is
the job file's content as JSON; every process gets the same one (same seed, same data split).
``DELAY_S`` makes each local training of this process's clients that much slower, as on a slower
machine. Prints ``ready`` once every actor here is subscribed, one JSON line per record as it
ends (``{"record": {...}}``: the job's rounds, where the server runs here), then
``{"result": {...}}`` with the records of every actor here and, for the server, its final model.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from foedus.config.spec import JobSpec
from foedus.core.message import Message
from foedus.roles.client import ClientPod
from foedus.runner import run_actors


def slow_down(delay: float) -> None:
    """Every client in this process takes ``delay`` seconds longer per local round."""
    train = ClientPod.train

    def slower(self: ClientPod, model_msg: Message) -> Message:
        time.sleep(delay)
        return train(self, model_msg)

    ClientPod.train = slower  # type: ignore[method-assign]


def _print(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


async def main(job: dict[str, Any], actors: list[str], delay: float) -> None:
    if delay > 0:
        slow_down(delay)
    result = await run_actors(
        JobSpec.from_dict(job), actors, on_ready=lambda: print("ready", flush=True),
        on_round=lambda record: _print({"record": record.to_dict()}), timeout=120,
    )
    params = {k: v.tolist() for k, v in result.params.items()} if result.params else None
    _print({"result": {"records": result.records, "metrics": result.final_metrics,
                       "params": params}})


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2].split(","),
                     float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
    # the job is done and reported; skip the interpreter's teardown of aiokafka, sklearn and
    # the thread pool, which takes seconds on a loaded machine and tells the test nothing
    sys.stdout.flush()
    os._exit(0)
