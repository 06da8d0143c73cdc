"""Clipping: the update's norm is bounded, the filter fails closed, the adaptive norm tracks a
quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foedus.core.errors import ConfigError, PrivacyError
from foedus.core.graph import Graph
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.core.runtime import Runtime
from foedus.privacy.clip import (
    CLIP_TAG,
    META_CLIP_NORM,
    ClipFilter,
    ClipReceiver,
    QuantileClipNorm,
    l2_clip,
)


def model_msg(round: int, params: dict[str, np.ndarray]) -> Message:
    return Message.create(Kind.MODEL, job_id="j", round=round, sender="server", params=params)


def update_of(model: Message, params: dict[str, np.ndarray]) -> Message:
    return model.reply(Kind.UPDATE, "c1", params=params, num_examples=50,
                       metrics={"train_loss": 0.3})


def base() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=(20, 5)), "b": rng.normal(size=5)}


def delta_norm(update: Message, global_params: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((update.params[k] - global_params[k]) ** 2))
                         for k in global_params))


def test_l2_clip_scales_long_vectors_to_the_norm_and_keeps_short_ones() -> None:
    long = np.full(100, 3.0)
    clipped, norm = l2_clip(long, 1.5)
    assert norm == pytest.approx(30.0)
    assert np.linalg.norm(clipped) == pytest.approx(1.5)
    short = np.array([0.3, 0.4])
    same, _ = l2_clip(short, 1.0)
    assert np.array_equal(same, short)


def test_clip_filter_bounds_the_update_norm_relative_to_the_global_model() -> None:
    g = base()
    model = model_msg(3, g)
    trained = {k: v + 5.0 for k, v in g.items()}  # an update of norm 5 * sqrt(105)
    f = ClipFilter(2.0)
    f.observe_model(model)
    out = f(update_of(model, trained))
    assert out is not None
    assert delta_norm(out, g) == pytest.approx(2.0, rel=1e-9)
    # still a full model, in the global model's direction of change
    assert out.params["w"].shape == (20, 5)
    assert np.all(out.params["w"] > g["w"])
    assert out.trail == (CLIP_TAG,)
    assert out.meta[META_CLIP_NORM] == 2.0
    assert out.num_examples == 1, "weights must not depend on private data"
    assert dict(out.metrics) == {}, "unnoised training metrics are dropped"


def test_clip_filter_leaves_small_updates_unchanged() -> None:
    g = base()
    model = model_msg(1, g)
    trained = {k: v + 1e-3 for k, v in g.items()}
    f = ClipFilter(10.0)
    f.observe_model(model)
    out = f(update_of(model, trained))
    assert out is not None
    assert np.allclose(out.params["w"], trained["w"])


def test_clip_filter_without_the_rounds_global_model_refuses_to_send() -> None:
    g = base()
    f = ClipFilter(1.0)
    f.observe_model(model_msg(1, g))
    with pytest.raises(PrivacyError, match="no global model recorded for round 2"):
        f(update_of(model_msg(2, g), g))


def test_clip_receiver_checks_trail_and_the_clients_norm() -> None:
    g = base()
    model = model_msg(1, g)
    f = ClipFilter(1.0)
    f.observe_model(model)
    sent = f(update_of(model, {k: v + 1 for k, v in g.items()}))
    assert sent is not None
    received = ClipReceiver(1.0)(sent)
    assert received is not None and received.trail == ()
    assert META_CLIP_NORM not in received.meta
    with pytest.raises(PrivacyError, match=r"server expects 0\.5"):
        ClipReceiver(0.5)(sent)
    with pytest.raises(PrivacyError, match="cannot undo"):
        ClipReceiver(1.0)(update_of(model, g))


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "1"])
def test_invalid_clip_norms_raise_at_construction(bad: object) -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        ClipFilter(bad)  # type: ignore[arg-type]


class FakeClient(Pod):
    """Answers each model message with an update far from it."""

    inputs = (Wire("model"),)
    outputs = (Wire("update"),)

    async def on_model(self, msg: Message) -> None:
        await self.send("update", msg.reply(
            Kind.UPDATE, "c1", params={k: v + 4.0 for k, v in msg.params.items()},
            num_examples=3,
        ))


class Sink(Pod):
    inputs = (Wire("in"),)

    def __init__(self) -> None:
        super().__init__("sink")
        self.seen: list[Message] = []

    def on_in(self, msg: Message) -> None:
        self.seen.append(msg)


async def test_clip_filter_reads_the_global_model_from_its_model_wire() -> None:
    client, clip, sink = FakeClient("client"), ClipFilter(1.0), Sink()
    graph = Graph("c").add(client, clip, sink)
    graph.connect("client.update", f"{clip.name}.in").connect(f"{clip.name}.out", "sink.in")
    graph.expose("client.model").expose(f"{clip.name}.model")
    g = base()
    async with Runtime(graph) as rt:
        await rt.inject(clip.name, "model", model_msg(1, g))
        await rt.inject("client", "model", model_msg(1, g))
        await rt.drain()
    assert len(sink.seen) == 1
    assert delta_norm(sink.seen[0], g) == pytest.approx(1.0)


def test_the_client_topology_connects_the_clip_filters_model_wire() -> None:
    from foedus.data.datasets import load_dataset
    from foedus.models.base import build_model
    from foedus.roles.client import ClientPod
    from foedus.topology.centralized import client_graph
    from foedus.transport.local import LocalTransport

    train, _, spec = load_dataset("iris")
    pod = ClientPod(client_id="c1", model=build_model("sklearn-sgd", spec), data=train)
    clip = ClipFilter(1.0)
    graph = client_graph(pod, LocalTransport(), "job", filters=[clip])
    assert ("model_in.out", f"{clip.name}.model") in {(str(s), str(d)) for s, d in graph.edges}


def test_adaptive_norm_converges_to_the_target_quantile_of_update_norms() -> None:
    rng = np.random.default_rng(1)
    estimator = QuantileClipNorm(initial_norm=0.1, target_quantile=0.5, learning_rate=0.2,
                                 count_noise_std=0.5, seed=2)
    for rnd in range(1, 301):
        clip = estimator.norm(rnd)
        for norm in rng.lognormal(mean=1.0, sigma=0.3, size=50):  # median e^1
            estimator.record(rnd, bool(norm <= clip))
    assert estimator.norm(301) == pytest.approx(math.e, rel=0.1)


def test_adaptive_norm_is_fixed_once_a_round_started() -> None:
    estimator = QuantileClipNorm(initial_norm=1.0, seed=0)
    first = estimator.norm(1)
    estimator.record(1, True)
    assert estimator.norm(1) == first
    assert estimator.norm(2) < first  # every update fit: the norm shrinks


@pytest.mark.parametrize("kwargs", [
    {"target_quantile": 1.0}, {"target_quantile": 0.0}, {"learning_rate": 0},
    {"count_noise_std": -1.0}, {"initial_norm": -2},
])
def test_invalid_estimator_settings_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        QuantileClipNorm(**kwargs)  # type: ignore[arg-type]
