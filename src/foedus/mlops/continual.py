"""Continual learning: drift on enough clients triggers a new federated training.

:class:`ContinualLearning` is a pod fed by the clients' drift events (see
:class:`~foedus.mlops.drift.DriftMonitor`; they may arrive over any transport). It counts the
distinct clients whose data drifted since the last training; when ``min_clients`` have, it runs a
new job with the ``run_job`` it was given (:func:`foedus.run_job`; the job file comes from
``make_spec``, so the user decides the data, rounds and warm start of each generation), tracks it
with an
:class:`~foedus.mlops.mlflow.MlflowTracker`, and registers the new model with lineage tags: the
trigger, the drifted clients, the generation and the parent model version.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from foedus.core.errors import ConfigError
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.mlops.drift import is_drift_event
from foedus.mlops.mlflow import MlflowTracker, RegisteredModel

log = logging.getLogger("foedus.mlops.continual")

class JobSpec(Protocol):
    """What a retraining reads of a job file (:class:`foedus.JobSpec` has it; ``config`` sits
    above ``mlops``, whose integrations a job's server uses, so it is not imported here)."""

    @property
    def job_id(self) -> str: ...


SpecFactory = Callable[[int, list[str]], JobSpec]


class JobResult(Protocol):
    """What a retraining reads of a job's result (:class:`foedus.runner.JobResult` has it)."""

    params: dict[str, Any]
    history: list[Any]

    @property
    def final_metrics(self) -> dict[str, float]: ...


#: runs a job with a round listener: :func:`foedus.run_job` (passed in, since the runner sits
#: above mlops: a job's server uses mlops, so mlops cannot import the runner)
JobRunner = Callable[..., Awaitable[JobResult]]
TrackerFactory = Callable[[JobSpec], MlflowTracker]


@dataclass(frozen=True)
class Retraining:
    """One generation triggered by drift."""

    generation: int
    job_id: str
    drifted_clients: tuple[str, ...]
    result: JobResult
    model: RegisteredModel | None


class ContinualLearning(Pod):
    """Retrains when drift is reported by at least ``min_clients`` distinct clients.

    ``make_spec(generation, drifted_clients)`` returns the job to run and ``run_job`` runs it
    (:func:`foedus.run_job`); ``make_tracker(spec)``
    (optional) returns the tracker that logs and registers it. ``parent_version`` is the
    registered version in production when the loop starts (a lineage tag of the first
    retraining). Output ``retrained`` (optional) carries a ``CONTROL`` message per new model.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("drift"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("retrained", required=False),)

    def __init__(
        self, *, make_spec: SpecFactory, run_job: JobRunner, min_clients: int,
        make_tracker: TrackerFactory | None = None, parent_version: str | None = None,
        name: str = "continual",
    ) -> None:
        super().__init__(name)
        if min_clients < 1:
            raise ConfigError(f"min_clients: expected at least 1, got {min_clients}")
        self.make_spec = make_spec
        self.run_job = run_job
        self.make_tracker = make_tracker
        self.min_clients = min_clients
        self.parent_version = parent_version
        self.drifted: set[str] = set()
        self.history: list[Retraining] = []

    def observe(self, event: Message) -> bool:
        """Record a drift event; True when enough clients drifted to retrain."""
        if not is_drift_event(event):
            raise ConfigError(f"{self.name}: expected a drift event, got {event.kind.value}")
        if event.meta.get("drift_detected"):
            self.drifted.add(str(event.meta.get("client", event.sender)))
        return len(self.drifted) >= self.min_clients

    async def retrain(self) -> Retraining:
        """Run the next generation now, whatever the drift count, and register its model."""
        generation = len(self.history) + 1
        drifted = sorted(self.drifted)
        spec = self.make_spec(generation, drifted)
        tracker = self.make_tracker(spec) if self.make_tracker is not None else None
        log.info("drift on %d clients (%s): training generation %d as job %s",
                 len(drifted), ", ".join(drifted), generation, spec.job_id)
        try:
            result = await self.run_job(
                spec, on_round=tracker.listener() if tracker is not None else None
            )
        except BaseException:
            if tracker is not None:
                tracker.finish(status="FAILED")
            raise
        model = None
        if tracker is not None:
            lineage: dict[str, Any] = {
                "foedus.trigger": "drift", "foedus.generation": str(generation),
                "foedus.drifted_clients": ",".join(drifted),
            }
            if self.parent_version is not None:
                lineage["foedus.parent_version"] = self.parent_version
            model = tracker.finish(result.params, lineage=lineage)
            if model is not None:
                self.parent_version = model.version
        self.drifted.clear()
        done = Retraining(generation, spec.job_id, tuple(drifted), result, model)
        self.history.append(done)
        return done

    async def on_drift(self, msg: Message) -> None:
        if self.observe(msg):
            done = await self.retrain()
            await self.send("retrained", Message.create(
                Kind.CONTROL, job_id=done.job_id, round=len(done.result.history),
                sender=self.name, metrics=done.result.final_metrics,
                meta={"action": "retrained", "generation": done.generation,
                      "model_version": done.model.version if done.model else None,
                      "drifted_clients": list(done.drifted_clients)},
            ))
