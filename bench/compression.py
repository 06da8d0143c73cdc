"""Compression of real model updates: ratio, encode/decode speed, error, and accuracy.

Updates are the parameter deltas of a torch MLP (64-512-512-10, 300k parameters) and a small CNN
(two 3x3 conv layers on the 8x8 digits, 60k parameters) after two local epochs on scikit-learn's
digits, starting from a model pre-trained for one epoch (so the delta is a typical mid-training
round). Each codec encodes the delta as the wire codec would carry it; the ratio is raw float
bytes over encoded wire bytes. Speeds are MB of raw update per second, best of ``--repeat`` runs.
The last table runs a federated job (digits, 5 clients, 8 rounds, torch-mlp) per codec.

Run: ``.venv/bin/python bench/compression.py [--repeat 5] [--no-federated]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import foedus.compress  # noqa: F401  (registers the stages)
from foedus.codec import encode as wire_encode
from foedus.compress.lossless import LzmaDecoder, LzmaEncoder, ZstdDecoder, ZstdEncoder
from foedus.compress.qsgd import QSGDDecoder, QSGDEncoder
from foedus.compress.sparsify import TopKDecoder, TopKEncoder
from foedus.core.filter import Chain, Filter
from foedus.core.message import Kind, Message
from foedus.data.datasets import load_dataset
from foedus.models.torch import TorchAdapter

Codec = tuple[str, Callable[[], Filter], Callable[[], Filter]]

CODECS: list[Codec] = [
    ("zstd-1", lambda: ZstdEncoder(level=1), ZstdDecoder),
    ("zstd-3", lambda: ZstdEncoder(level=3), ZstdDecoder),
    ("zstd-9", lambda: ZstdEncoder(level=9), ZstdDecoder),
    ("lzma-6", lambda: LzmaEncoder(preset=6), LzmaDecoder),
    ("qsgd-2", lambda: QSGDEncoder(bits=2, delta=False, seed=0), lambda: QSGDDecoder(delta=False)),
    ("qsgd-4", lambda: QSGDEncoder(bits=4, delta=False, seed=0), lambda: QSGDDecoder(delta=False)),
    ("qsgd-8", lambda: QSGDEncoder(bits=8, delta=False, seed=0), lambda: QSGDDecoder(delta=False)),
    ("qsgd-2-l2-elias", lambda: QSGDEncoder(bits=2, norm="l2", elias=True, delta=False, seed=0),
     lambda: QSGDDecoder(delta=False)),
    ("qsgd-4+zstd-3", lambda: Chain(QSGDEncoder(bits=4, delta=False, seed=0), ZstdEncoder()),
     lambda: Chain(ZstdDecoder(), QSGDDecoder(delta=False))),
    ("topk-1%", lambda: TopKEncoder(ratio=0.01, delta=False), lambda: TopKDecoder(delta=False)),
    ("topk-10%", lambda: TopKEncoder(ratio=0.10, delta=False), lambda: TopKDecoder(delta=False)),
]

FEDERATED: list[tuple[str, list[Any]]] = [
    ("none", []),
    ("zstd-3", ["zstd"]),
    ("lzma-6", ["lzma"]),
    ("qsgd-2", [{"type": "qsgd", "params": {"bits": 2, "seed": 1}}]),
    ("qsgd-4", [{"type": "qsgd", "params": {"bits": 4, "seed": 1}}]),
    ("qsgd-8", [{"type": "qsgd", "params": {"bits": 8, "seed": 1}}]),
    ("qsgd-4 (weights, no delta)", [{"type": "qsgd", "params": {"bits": 4, "delta": False}}]),
    ("topk-1%", [{"type": "topk", "params": {"ratio": 0.01}}]),
    ("topk-10%", [{"type": "topk", "params": {"ratio": 0.10}}]),
]


def models() -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    )
    cnn = torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)),
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 16, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10),
    )
    return {"mlp": mlp, "cnn": cnn}


def real_delta(module: Any) -> dict[str, np.ndarray]:
    train, _, _ = load_dataset("digits", seed=0)
    adapter = TorchAdapter(module, lr=0.05)
    adapter.fit(train, epochs=1)
    before = adapter.get_params()
    adapter.fit(train, epochs=2)
    after = adapter.get_params()
    return {k: after[k] - before[k] for k in before}


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def measure(delta: dict[str, np.ndarray], repeat: int) -> list[list[str]]:
    msg = Message.create(Kind.UPDATE, job_id="bench", round=1, sender="c", params=delta)
    raw = sum(a.nbytes for a in delta.values())
    plain = len(wire_encode(msg))
    flat = np.concatenate([a.ravel() for a in delta.values()]).astype(np.float64)
    rows = []
    for name, make_enc, make_dec in CODECS:
        enc, dec = make_enc(), make_dec()
        t_enc, encoded = best(lambda e=enc: e(msg), repeat)
        t_dec, decoded = best(lambda d=dec, m=encoded: d(m), repeat)
        sent = len(wire_encode(encoded))
        back = np.concatenate([decoded.params[k].ravel() for k in delta]).astype(np.float64)
        rel = float(np.linalg.norm(back - flat) / np.linalg.norm(flat))
        rows.append([
            name, f"{plain / sent:.1f}x", f"{sent / 1024:.1f}",
            f"{raw / t_enc / 1e6:.0f}", f"{raw / t_dec / 1e6:.0f}", f"{rel:.3f}",
        ])
    return rows


async def federated_accuracy() -> list[list[str]]:
    from foedus.config.spec import JobSpec
    from foedus.runner import run_job

    rows = []
    for name, pipeline in FEDERATED:
        spec = JobSpec.from_dict({
            "job_id": "bench-compress", "seed": 0, "rounds": 8,
            "data": {"dataset": "digits", "partition": "iid"},
            "clients": {"count": 5, "epochs": 2}, "model": {"type": "torch-mlp"},
            "pipeline": pipeline,
        })
        t = time.perf_counter()
        result = await run_job(spec)
        acc = [r.metrics["accuracy"] for r in result.history]
        rows.append([name, f"{acc[1]:.3f}", f"{acc[3]:.3f}", f"{acc[-1]:.3f}",
                     f"{time.perf_counter() - t:.1f}"])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-federated", action="store_true")
    args = parser.parse_args()
    header = ["codec", "ratio", "sent KiB", "encode MB/s", "decode MB/s", "rel. error"]
    for name, module in models().items():
        delta = real_delta(module)
        n = sum(a.size for a in delta.values())
        print(f"\n### {name}: {n:,} parameters, {n * 4 / 1024:.0f} KiB of float32 per update\n")
        print(table(header, measure(delta, args.repeat)))
    if not args.no_federated:
        print("\n### federated accuracy (digits, 5 clients iid, torch-mlp, 2 epochs a round)\n")
        print(table(["pipeline", "round 2", "round 4", "round 8", "job s"],
                    asyncio.run(federated_accuracy())))


if __name__ == "__main__":
    main()
