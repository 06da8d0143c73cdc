"""Federated runs with each codec in the pipeline reach a documented accuracy.

digits (1,437 training images, iid over 5 clients), torch MLP, 2 local epochs, 8 rounds. Without
compression the global model reaches about 0.95; the thresholds below are the ones documented
in docs/compression.md, with a margin for run-to-run variation.
"""

from __future__ import annotations

from typing import Any

import pytest

import foedus.compress  # noqa: F401  (registers the stages)
from foedus.config.spec import JobSpec
from foedus.runner import JobResult, run_job

ROUNDS = 8

CASES: dict[str, tuple[list[Any], float]] = {
    "zstd": (["zstd"], 0.90),
    "zstd-level9-threads": ([{"type": "zstd", "params": {"level": 9, "threads": 2}}], 0.90),
    "lzma": (["lzma"], 0.90),
    "qsgd-4bit": ([{"type": "qsgd", "params": {"bits": 4, "seed": 1}}], 0.90),
    "qsgd-2bit": ([{"type": "qsgd", "params": {"bits": 2, "seed": 1}}], 0.88),
    "qsgd-4bit-weights": ([{"type": "qsgd", "params": {"bits": 4, "delta": False, "seed": 1}}],
                          0.88),
    "qsgd-2bit-elias-then-zstd": (
        [{"type": "qsgd", "params": {"bits": 2, "elias": True, "seed": 1}}, "zstd"], 0.88,
    ),
    "topk-10pct": ([{"type": "topk", "params": {"ratio": 0.1}}], 0.88),
    "topk-1pct": ([{"type": "topk", "params": {"ratio": 0.01}}], 0.70),
}


async def federated(pipeline: list[Any], name: str) -> JobResult:
    spec = JobSpec.from_dict({
        "job_id": f"compress-{name}", "seed": 0, "rounds": ROUNDS, "round_timeout": 30,
        "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": 5, "epochs": 2},
        "model": {"type": "torch-mlp"},
        "pipeline": pipeline,
    })
    return await run_job(spec)


@pytest.fixture(scope="module")
def baseline_accuracy() -> float:
    import asyncio

    result = asyncio.run(federated([], "baseline"))
    return float(result.final_metrics["accuracy"])


@pytest.mark.parametrize("case", CASES)
async def test_federated_run_with_codec_reaches_documented_accuracy(
    case: str, baseline_accuracy: float
) -> None:
    pipeline, threshold = CASES[case]
    result = await federated(pipeline, case)
    assert len(result.history) == ROUNDS
    assert all(r.accepted == 5 and not r.rejected for r in result.history), [
        r.to_dict() for r in result.history
    ]
    accuracy = result.final_metrics["accuracy"]
    assert accuracy >= threshold, accuracy
    if case in ("zstd", "lzma", "zstd-level9-threads"):  # lossless: the same job as without it
        assert accuracy == pytest.approx(baseline_accuracy, abs=0.01)


async def test_a_pipeline_decoded_in_the_wrong_order_is_caught() -> None:
    """The server undoes stages in reverse; a hand-built reversed pair fails with a clear error."""
    from foedus.compress.lossless import LzmaDecoder, ZstdEncoder
    from foedus.core.errors import CodecError

    from .helpers import update, weights

    with pytest.raises(CodecError, match="reverse order"):
        LzmaDecoder()(ZstdEncoder()(update(weights())))  # type: ignore[arg-type]
