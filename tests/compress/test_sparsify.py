"""Top-k sends the largest values and, with error feedback, eventually everything."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foedus.compress.sparsify import INDICES, VALUES, TopKDecoder, TopKEncoder, TopKStage
from foedus.core.errors import CodecError, ConfigError
from foedus.core.filter import stages

from .helpers import model, update, weights


def test_keeps_exactly_the_k_largest_magnitudes() -> None:
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(50, 20)).astype(np.float32), "b": rng.normal(size=300)}
    n = 50 * 20 + 300
    encoded = TopKEncoder(ratio=0.05, delta=False)(update(params))
    assert encoded is not None
    k = math.ceil(0.05 * n)
    assert encoded.params[INDICES].size == k and encoded.params[VALUES].dtype == np.float32
    flat = np.concatenate([params["a"].ravel(), params["b"].astype(np.float32)])
    threshold = np.sort(np.abs(flat))[-k]
    decoded = TopKDecoder(delta=False)(encoded)
    assert decoded is not None and list(decoded.params) == ["a", "b"]
    dense = np.concatenate([decoded.params["a"].ravel(), decoded.params["b"]])
    kept = dense != 0
    assert kept.sum() == k
    assert np.all(np.abs(flat[kept]) >= threshold)
    assert np.allclose(dense[kept], flat[kept])


def test_error_feedback_delays_but_never_loses_any_part_of_the_updates() -> None:
    rng = np.random.default_rng(1)
    encoder, decoder = TopKEncoder(ratio=0.02, delta=False), TopKDecoder(delta=False)
    sent_total = np.zeros(1000)
    update_total = np.zeros(1000)
    for rnd in range(1, 21):
        u = {"w": rng.normal(size=1000).astype(np.float32)}
        update_total += u["w"]
        decoded = decoder(encoder(update(u, round=rnd)))  # type: ignore[arg-type]
        assert decoded is not None
        sent_total += decoded.params["w"]
    assert encoder.residual is not None
    assert np.allclose(sent_total + encoder.residual, update_total, atol=1e-4)


def test_without_error_feedback_nothing_is_remembered() -> None:
    encoder = TopKEncoder(ratio=0.1, error_feedback=False, delta=False)
    encoder(update(weights()))
    assert encoder.residual is None


def test_delta_mode_sends_the_change_and_the_decoder_adds_the_global_model_back() -> None:
    global_params = weights(seed=3, scale=1.0)
    trained = dict(global_params)
    trained["head.weight"] = global_params["head.weight"].copy()
    trained["head.weight"][0, :3] += np.float32(0.5)  # only three values changed
    encoder, decoder = TopKEncoder(ratio=0.01), TopKDecoder()
    encoder.on_model(model(global_params, round=2))
    decoder.on_model(model(global_params, round=2))
    encoded = encoder(update(trained, round=2))
    assert encoded is not None
    decoded = decoder(encoded)
    assert decoded is not None
    for name, value in trained.items():
        assert np.allclose(decoded.params[name], value, atol=1e-6), name
    assert decoded.params["bn.num_batches_tracked"] == 7


@pytest.mark.parametrize("damage", ["out-of-range", "unsorted", "length", "dtype"])
def test_corrupted_indices_give_a_codec_error(damage: str) -> None:
    encoded = TopKEncoder(ratio=0.1, delta=False)(update(weights()))
    assert encoded is not None
    params = dict(encoded.params)
    index = params[INDICES].copy()
    if damage == "out-of-range":
        index[-1] = 10**9
    elif damage == "unsorted":
        index[[0, 1]] = index[[1, 0]]
    elif damage == "length":
        index = index[:-1]
    else:
        index = index.astype(np.int64)
    params[INDICES] = index
    with pytest.raises(CodecError):
        TopKDecoder(delta=False)(encoded.replace(params=params))


def test_each_client_gets_its_own_residual() -> None:
    stage = stages.create("topk", ratio=0.1, delta=False)
    assert isinstance(stage, TopKStage)
    a, b = stage.client(), stage.client()
    assert isinstance(a, TopKEncoder) and isinstance(b, TopKEncoder) and a is not b
    a(update(weights()))
    assert a.residual is not None and b.residual is None


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, "1%"])
def test_ratio_outside_zero_to_one_is_a_config_error(ratio: object) -> None:
    with pytest.raises(ConfigError, match="ratio"):
        stages.create("topk", ratio=ratio)
