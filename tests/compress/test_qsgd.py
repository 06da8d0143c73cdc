"""QSGD is unbiased, stays within the paper's variance bound, and packs to its bit budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from foedus.codec import decode as wire_decode
from foedus.codec import encode as wire_encode
from foedus.compress.qsgd import (
    CODES,
    NORMS,
    QSGDDecoder,
    QSGDEncoder,
    QSGDStage,
    dequantize,
    levels_for,
    quantize,
)
from foedus.core.errors import CodecError, ConfigError
from foedus.core.filter import stages

from .helpers import model, update, weights

BUCKET = 128


def vectors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    heavy = rng.standard_t(2, size=3 * BUCKET + 17)
    sparse = np.where(rng.random(3 * BUCKET) < 0.05, rng.normal(size=3 * BUCKET), 0.0)
    return {
        "gaussian": rng.normal(size=3 * BUCKET + 17).astype(np.float32),
        "heavy-tailed": heavy.astype(np.float32),
        "sparse": sparse.astype(np.float32),
    }


def draws(v: np.ndarray, bits: int, norm: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = levels_for(bits)
    out = np.empty((n, v.size), np.float64)
    for i in range(n):
        signed, norms = quantize(v, levels=s, bucket=BUCKET, norm=norm, rng=rng)
        out[i] = dequantize(signed, norms, levels=s, bucket=BUCKET)
    return out


def buckets(v: np.ndarray) -> list[np.ndarray]:
    return [v[i : i + BUCKET].astype(np.float64) for i in range(0, v.size, BUCKET)]


@pytest.mark.parametrize("norm", ["l2", "max"])
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("kind", ["gaussian", "heavy-tailed", "sparse"])
def test_mean_of_many_quantizations_converges_to_the_input(bits: int, norm: str, kind: str) -> None:
    v = vectors()[kind]
    samples = draws(v, bits, norm, 1500)
    per_draw = ((samples - v) ** 2).sum(axis=1).mean()  # E||Q(v) - v||^2
    for n in (100, 1500):
        error = float(((samples[:n].mean(axis=0) - v) ** 2).sum())
        # the mean of n independent draws has expected squared error per_draw / n
        assert error <= 4 * per_draw / n + 1e-12, (n, error, per_draw)
    final = float(((samples.mean(axis=0) - v) ** 2).sum())
    assert final < 0.01 * float((v.astype(float) ** 2).sum())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("kind", ["gaussian", "heavy-tailed", "sparse"])
def test_l2_variance_respects_lemma_3_1(bits: int, kind: str) -> None:
    """E||Q(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2 per bucket of d values."""
    v = vectors()[kind]
    s = levels_for(bits)
    samples = draws(v, bits, "l2", 300)
    for start, bucket in zip(range(0, v.size, BUCKET), buckets(v), strict=True):
        d = bucket.size
        measured = ((samples[:, start : start + d] - bucket) ** 2).sum(axis=1).mean()
        bound = min(d / s**2, math.sqrt(d) / s) * float((bucket**2).sum())
        assert measured <= bound * 1.05 + 1e-12, (start, measured, bound)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_max_norm_variance_is_at_most_a_quarter_step_squared_per_value(bits: int) -> None:
    v = vectors()["heavy-tailed"]
    s = levels_for(bits)
    samples = draws(v, bits, "max", 300)
    for start, bucket in zip(range(0, v.size, BUCKET), buckets(v), strict=True):
        measured = ((samples[:, start : start + bucket.size] - bucket) ** 2).sum(axis=1).mean()
        bound = bucket.size * float(np.abs(bucket).max()) ** 2 / (4 * s**2)
        assert measured <= bound * 1.05 + 1e-12


def test_more_bits_give_less_error() -> None:
    v = vectors()["gaussian"]
    errors = [((draws(v, b, "max", 50) - v) ** 2).sum(axis=1).mean() for b in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]


def test_levels_are_integers_within_s_and_zero_buckets_stay_zero() -> None:
    v = np.zeros(3 * BUCKET, np.float32)
    v[BUCKET:] = np.random.default_rng(1).normal(size=2 * BUCKET)
    signed, norms = quantize(v, levels=7, bucket=BUCKET, norm="l2", rng=np.random.default_rng(0))
    assert np.abs(signed).max() <= 7 and norms[0] == 0
    assert not dequantize(signed, norms, levels=7, bucket=BUCKET)[:BUCKET].any()


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_packed_size_matches_the_bit_budget(bits: int) -> None:
    params = weights()
    encoded = QSGDEncoder(bits=bits, bucket=BUCKET, delta=False)(update(params))
    assert encoded is not None
    n = sum(a.size for a in params.values() if a.dtype.kind == "f")
    assert encoded.params[CODES].nbytes == math.ceil(n * bits / 8)
    assert encoded.params[NORMS].nbytes == 4 * math.ceil(n / BUCKET)
    # integer buffers travel as they are; nothing else is sent
    assert set(encoded.params) == {CODES, NORMS, "bn.num_batches_tracked"}


def test_decoded_update_has_the_original_names_order_dtypes_and_shapes() -> None:
    params = weights()
    encoded = QSGDEncoder(bits=4, delta=False)(update(params))
    decoded = QSGDDecoder(delta=False)(encoded)  # type: ignore[arg-type]
    assert decoded is not None and decoded.trail == () and "qsgd" not in decoded.meta
    assert list(decoded.params) == list(params)
    for name, original in params.items():
        assert decoded.params[name].dtype == original.dtype
        assert decoded.params[name].shape == original.shape
    assert decoded.params["bn.num_batches_tracked"] == 7


@pytest.mark.parametrize("elias", [False, True])
def test_encoded_update_crosses_the_wire(elias: bool) -> None:
    params = {k: v for k, v in weights().items() if v.ndim}  # the wire codec keeps 0-d as (1,)
    encoded = QSGDEncoder(bits=3, elias=elias, delta=False, seed=1)(update(params))
    assert encoded is not None
    direct = QSGDDecoder(delta=False)(encoded)
    crossed = QSGDDecoder(delta=False)(wire_decode(wire_encode(encoded)))
    assert direct is not None and crossed is not None
    for name in params:
        assert np.array_equal(direct.params[name], crossed.params[name])


def test_elias_coding_decodes_identically_and_is_smaller_when_most_levels_are_zero() -> None:
    params = {"w": np.random.default_rng(2).normal(size=20_000).astype(np.float32)}
    fixed = QSGDEncoder(bits=2, bucket=4096, norm="l2", delta=False, seed=5)(update(params))
    elias = QSGDEncoder(bits=2, bucket=4096, norm="l2", elias=True, delta=False, seed=5)(
        update(params)
    )
    assert fixed is not None and elias is not None
    a = QSGDDecoder(delta=False)(fixed)
    b = QSGDDecoder(delta=False)(elias)
    assert a is not None and b is not None
    assert np.array_equal(a.params["w"], b.params["w"])
    sent = sum(x.nbytes for x in elias.params.values())
    assert sent < fixed.params[CODES].nbytes + fixed.params[NORMS].nbytes


def test_delta_mode_quantizes_the_change_from_the_global_model() -> None:
    global_params = weights(seed=1, scale=1.0)
    trained = {k: (v + 0.001 * np.ones_like(v)) if v.dtype.kind == "f" else v
               for k, v in global_params.items()}
    encoder, decoder = QSGDEncoder(bits=4, bucket=BUCKET), QSGDDecoder()
    for half in (encoder, decoder):
        half.on_model(model(global_params, round=4))
    decoded = decoder(encoder(update(trained, round=4)))  # type: ignore[arg-type]
    assert decoded is not None
    for name, value in trained.items():
        # the error is a fraction of the change (0.001), not of the weights (~1)
        assert np.abs(decoded.params[name] - value).max() <= 0.001 + 1e-6


def test_delta_mode_without_the_global_model_fails_closed() -> None:
    with pytest.raises(CodecError, match="no global model for round 2"):
        QSGDEncoder()(update(weights(), round=2))


@pytest.mark.parametrize(
    "damage", ["code-out-of-range", "nan-norm", "short-codes", "bits", "elias"]
)
def test_corrupted_encodings_give_a_codec_error(damage: str) -> None:
    encoded = QSGDEncoder(bits=2, bucket=BUCKET, delta=False)(update(weights()))
    assert encoded is not None
    params, meta = dict(encoded.params), dict(encoded.meta)
    entry = dict(meta["qsgd"])
    if damage == "code-out-of-range":
        params[CODES] = np.full_like(params[CODES], 0xFF)  # code 3 does not exist at 2 bits
    elif damage == "nan-norm":
        params[NORMS] = np.full_like(params[NORMS], np.nan)
    elif damage == "short-codes":
        params[CODES] = params[CODES][:-1]
    elif damage == "bits":
        entry["bits"] = 40
    else:
        entry["elias"] = "maybe"
    meta["qsgd"] = entry
    with pytest.raises(CodecError):
        QSGDDecoder(delta=False)(encoded.replace(params=params, meta=meta))


def test_stage_gives_each_client_its_own_random_stream() -> None:
    stage = stages.create("qsgd", bits=2, delta=False, seed=3)
    assert isinstance(stage, QSGDStage)
    msg = update(weights())
    first, second = stage.client()(msg), stage.client()(msg)
    assert first is not None and second is not None
    assert not np.array_equal(first.params[CODES], second.params[CODES])


@pytest.mark.parametrize("params", [{"bits": 1}, {"bits": 9}, {"bucket": 0}, {"norm": "l1"}])
def test_invalid_settings_are_config_errors(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        stages.create("qsgd", **params)
