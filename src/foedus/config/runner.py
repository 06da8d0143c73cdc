"""Turns a validated :class:`JobSpec` into pods, graphs and transports, and runs the job.

This is the one place that knows how job-file names map to objects; everything it builds is an
ordinary public class, so a Python user can do the same by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from foedus.aggregate.base import Aggregator, aggregators
from foedus.config.spec import JobSpec, Plugin
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter, Stage, stages
from foedus.core.params import Params
from foedus.core.registry import Registry
from foedus.data.datasets import load_dataset
from foedus.data.partition import partition
from foedus.models.base import ModelAdapter, build_model
from foedus.plugins import load_plugins
from foedus.roles.checkpoint import Checkpointer
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord, ServerPod
from foedus.topology.centralized import run_centralized
from foedus.transport.base import Transport, transports


@dataclass
class JobResult:
    """The outcome of a job: its rounds and the final global model's metrics."""

    job_id: str
    clients: int
    history: list[RoundRecord]
    params: dict[str, Any]
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_metrics(self) -> dict[str, float]:
        return self.history[-1].metrics if self.history else {}

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary printed by ``--json``."""
        return {
            "job_id": self.job_id,
            "rounds": len(self.history),
            "clients": self.clients,
            "final_accuracy": self.final_metrics.get("accuracy"),
            "final_loss": self.final_metrics.get("loss"),
            "duration_s": round(self.duration_s, 3),
            "history": [r.to_dict() for r in self.history],
            **self.extra,
        }


def _create(registry: Registry[Any], plugin: Plugin, key: str, **fixed: Any) -> Any:
    """Create a plugin, prefixing any error with the job-file key it came from."""
    try:
        return registry.create(plugin.type, **fixed, **plugin.params)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


async def run_job(
    spec: JobSpec, *, on_round: Callable[[RoundRecord], None] | None = None
) -> JobResult:
    """Run ``spec`` in this process, every actor on the configured transport."""
    load_plugins()
    began = time.perf_counter()
    try:
        train, test, data_spec = load_dataset(
            spec.data.dataset, test_fraction=spec.data.test_fraction, seed=spec.seed
        )
    except ConfigError as exc:
        raise ConfigError(f"data.dataset: {exc}") from exc
    shares = partition(
        train, spec.clients.count, scheme=spec.data.partition, alpha=spec.data.alpha,
        seed=spec.seed,
    )

    def make_model() -> ModelAdapter:
        try:
            return build_model(spec.model.type, data_spec, spec.seed, **spec.model.params)
        except ConfigError as exc:
            raise ConfigError(f"model: {exc}") from exc

    evaluator_model = make_model()

    def evaluate(params: Params) -> dict[str, float]:
        evaluator_model.set_params(params)
        return evaluator_model.evaluate(test)

    aggregator: Aggregator = _create(aggregators, spec.aggregator, "aggregator")
    pipeline: list[Stage] = [
        _create(stages, p, f"pipeline[{i}]") for i, p in enumerate(spec.pipeline)
    ]
    shared: Transport | None = None

    def open_transport() -> Transport:
        nonlocal shared
        if shared is not None:
            return shared
        transport: Transport = _create(transports, spec.transport, "transport")
        if transport.shared:
            shared = transport
        return transport

    opened: list[Transport] = []

    def actor_transport() -> Transport:
        t = open_transport()
        if t not in opened:
            opened.append(t)
        return t

    server = ServerPod(
        job_id=spec.job_id, initial_params=evaluator_model.get_params(), aggregator=aggregator,
        rounds=spec.rounds, expected_clients=spec.clients.count,
        min_clients=spec.clients.min_clients, round_timeout=spec.round_timeout,
        evaluate=evaluate,
        checkpointer=(
            Checkpointer(spec.checkpoint_dir, spec.job_id) if spec.checkpoint_dir else None
        ),
    )
    if on_round is not None:
        server.round_listeners.append(on_round)
    server_filters: list[Filter] = [f for s in reversed(pipeline) if (f := s.server())]
    clients = []
    for i, share in enumerate(shares):
        client = ClientPod(
            client_id=f"client-{i:03d}", model=make_model(), data=share,
            epochs=spec.clients.epochs,
        )
        client_filters: list[Filter] = [f for s in pipeline if (f := s.client())]
        clients.append((client, actor_transport(), client_filters))
    server_transport = actor_transport()
    try:
        history = await run_centralized(
            server, server_transport, clients, server_filters=server_filters
        )
    finally:
        for t in opened:
            await t.close()
    return JobResult(
        job_id=spec.job_id, clients=spec.clients.count, history=history, params=server.params,
        duration_s=time.perf_counter() - began,
    )


def run_job_sync(
    spec: JobSpec, *, on_round: Callable[[RoundRecord], None] | None = None
) -> JobResult:
    """:func:`run_job` for code that is not already inside an event loop."""
    return asyncio.run(run_job(spec, on_round=on_round))
