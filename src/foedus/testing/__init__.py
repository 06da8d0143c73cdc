"""A kit for testing your own pods and jobs without brokers.

``run_pod`` feeds messages to a pod's input wires through a real runtime and returns what it
emitted on each output; ``make_message`` builds a message with sensible defaults; ``run_rounds``
runs a small in-process federated job. Everything runs on the in-process transport.
``wait_until`` waits for a condition with a deadline, so an asynchronous test states what it
waits for instead of sleeping for a guessed while.

:mod:`foedus.testing.transport_contract` is the test suite every transport passes, for authors
of new transports (see ``docs/extending.md``). It needs pytest, so it is a submodule that this
package never imports: ``import foedus.testing`` works without test dependencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from foedus.config.spec import ClientSection, DataSection, JobSpec, Plugin
from foedus.core.graph import Graph
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod
from foedus.core.runtime import Runtime

if TYPE_CHECKING:  # the job runner is imported by run_rounds, so the kit stays light to import
    from foedus.runner import JobResult


class _Recorder(Pod):
    """Collects everything that arrives, per wire."""

    def __init__(self, wires: Sequence[str]) -> None:
        super().__init__("__recorder__")
        self.received: dict[str, list[Message]] = {w: [] for w in wires}
        for wire in wires:
            self.add_input(wire, self.received[wire].append, required=False)


def make_message(
    kind: Kind | str = Kind.UPDATE, *, params: Mapping[str, Any] | None = None,
    job_id: str = "test-job", round: int = 1, sender: str = "tester", **body: Any,
) -> Message:
    """A message with defaults for every header field; ``params`` values become arrays."""
    arrays = {k: np.asarray(v) for k, v in (params or {}).items()}
    return Message.create(kind, job_id=job_id, round=round, sender=sender, params=arrays, **body)


def run_pod(
    pod: Pod, inputs: Mapping[str, Sequence[Message]], *, queue_size: int = 16
) -> dict[str, list[Message]]:
    """Feed ``inputs`` (wire -> messages, in order) to ``pod`` and return its outputs by wire.

    Handler failures are re-raised after the run, so a test sees the pod's exception.
    """

    async def go() -> tuple[dict[str, list[Message]], Runtime]:
        outputs = list(pod.output_wires)
        recorder = _Recorder(outputs)
        graph = Graph(f"test:{pod.name}").add(pod, recorder)
        for wire in outputs:
            graph.connect(f"{pod.name}.{wire}", f"{recorder.name}.{wire}")
        for wire in pod.input_wires:
            graph.expose(f"{pod.name}.{wire}")
        runtime = Runtime(graph, queue_size=queue_size)
        async with runtime:
            for wire, messages in inputs.items():
                for msg in messages:
                    await runtime.inject(pod.name, wire, msg)
            await runtime.drain()
        return recorder.received, runtime

    received, runtime = asyncio.run(go())
    if runtime.stats.failures:
        raise runtime.stats.failures[0]
    return received


def run_rounds(
    rounds: int = 3, *, clients: int = 3, model: str = "sklearn-sgd", dataset: str = "digits",
    pipeline: Sequence[Plugin] = (), aggregator: str = "fedavg", seed: int = 0,
    **model_params: Any,
) -> JobResult:
    """A small in-process federated job, for testing a pipeline stage or an aggregator."""
    from foedus.runner import run_job_sync

    return run_job_sync(JobSpec(
        job_id="testing", seed=seed, rounds=rounds,
        data=DataSection(dataset=dataset, partition="iid"),
        clients=ClientSection(count=clients),
        model=Plugin(model, dict(model_params)), aggregator=Plugin(aggregator),
        pipeline=tuple(pipeline),
    ))


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, *, interval: float = 0.01,
    what: str | None = None,
) -> None:
    """Return as soon as ``predicate()`` is true; raise :class:`TimeoutError` after ``timeout``.

    For conditions nobody signals (a counter reaching a value, a log line appearing, a peer
    noticing a restart): polling with a deadline waits exactly as long as needed on a fast
    machine and fails with a clear message on a stuck one, where a fixed sleep would be either
    wasted time or a flaky guess. ``what`` names the condition in the error.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            raise TimeoutError(f"not true within {timeout}s: {what or predicate!r}")
        await asyncio.sleep(interval)


__all__ = ["make_message", "run_pod", "run_rounds", "wait_until"]
