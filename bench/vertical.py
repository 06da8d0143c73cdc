"""Vertical FL side by side: PSI time by ids per party, bytes per training epoch, and accuracy
against the same model trained centrally on the joined columns.

Run: ``.venv/bin/python bench/vertical.py`` (PSI at 10^6 ids takes minutes;
``--sizes 10000,100000`` for a quick run). Prints two Markdown tables (training first):

* **PSI**: one label party and one feature party, each with ``n`` ids, half of them shared;
  the label party's request, the feature party's answer (setup and response), the label
  party's intersection, and the order (salted digests) the feature party follows; bytes each
  way. openmined-psi's ECDH, RAW data structure (exact, as the vertical topology runs it).
* **training**: breast cancer over three parties (10 columns each, each holding 80% of the
  people), every model the topology trains, run with ``foedus``'s ``run_job`` on the in-process
  transport; bytes per epoch are every byte a party received (the whole traffic, PSI and
  alignment excluded: the first epoch's figure is reported separately), accuracy on the label
  party's held-out people next to the centralized twin's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import time
from typing import Any

import numpy as np

from foedus.config.spec import JobSpec
from foedus.data.datasets import load_dataset
from foedus.runner import run_job
from foedus.vertical import split
from foedus.vertical.data import joined, split_vertically
from foedus.vertical.linear import Task, fit_centralized
from foedus.vertical.psi import PsiQuerier, PsiResponder, cores, order_of, rows_in_order

COLUMNS = {"hospital": list(range(0, 10)), "lab": list(range(10, 20)),
           "insurer": list(range(20, 30))}


def psi_row(n: int) -> str:
    load_before = os.getloadavg()[0]
    label_ids = [f"person-{i:09d}" for i in range(n)]
    feature_ids = [f"person-{i:09d}" for i in range(n // 2, n + n // 2)]
    began = time.perf_counter()
    querier = PsiQuerier(label_ids)
    request = querier.request()
    t_request = time.perf_counter() - began
    began = time.perf_counter()
    setup, response = PsiResponder(feature_ids).respond(request)
    t_answer = time.perf_counter() - began
    began = time.perf_counter()
    common = querier.shared(setup, response)
    t_shared = time.perf_counter() - began
    began = time.perf_counter()
    salt = secrets.token_bytes(16)
    _, digests = order_of(salt, common)
    rows_in_order(salt, digests, feature_ids)
    t_order = time.perf_counter() - began
    assert len(common) == n - n // 2
    total = t_request + t_answer + t_shared + t_order
    mb = 1e6
    return (f"| {n:,} | {t_request:.2f} | {t_answer:.2f} | {t_shared:.2f} | {t_order:.2f} | "
            f"**{total:.2f}** | {len(request) / mb:.1f} | "
            f"{(len(setup) + len(response)) / mb:.1f} | {digests.nbytes / mb:.1f} | "
            f"{load_before:.1f} / {os.getloadavg()[0]:.1f} |")


def _job(model: str, rounds: int, **params: Any) -> JobSpec:
    return JobSpec.from_dict({
        "job_id": f"bench-{model}", "rounds": rounds, "round_timeout": 300,
        "data": {"dataset": "breast_cancer"},
        "pipeline": params.pop("pipeline", []),
        "topology": {"type": "vertical", "params": {
            "label_party": "hospital", "model": model,
            "parties": {p: {"columns": c} for p, c in COLUMNS.items()}, **params}}})


def _people() -> tuple[Any, Task, list[str], list[str]]:
    """The parties' tables as the jobs split them, and the aligned train and test people."""
    train, test, spec = load_dataset("breast_cancer", seed=0)
    data = split_vertically(train, test, COLUMNS, "hospital",
                            share=dict.fromkeys(COLUMNS, 0.8), seed=0)
    others = [set(data[p].ids) for p in COLUMNS if p != "hospital"]
    people = sorted(set(data["hospital"].train_ids).intersection(*others))
    held_out = sorted(set(data["hospital"].test_ids).intersection(*others))
    return data, Task.of(spec), people, held_out


def linear_twin(rounds: int, lr: float) -> float:
    data, task, people, held_out = _people()
    table = joined(data, people, "hospital")
    fit = fit_centralized(table.x, table.y, task, rounds=rounds, learning_rate=lr)
    test = joined(data, held_out, "hospital", "test")
    return task.metrics(fit.scores(test.x), test.y)["accuracy"]


def split_twin(spec: split.SplitSpec, epochs: int) -> float:
    data, task, people, held_out = _people()

    def blocks(ids: list[str], which: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        out = {}
        for p, d in data.items():
            own = p == "hospital"
            rows_ids, x = ((d.train_ids, d.train_x) if which == "train" else
                           (d.test_ids, d.test_x)) if own else (d.ids, d.x)
            row = {e: i for i, e in enumerate(rows_ids)}
            out[p] = x[[row[e] for e in ids]]
        table = joined(data, ids, "hospital", which)
        return out, table.y

    x, y = blocks(people, "train")
    net = split.fit_centralized(x, y, task, spec, epochs=epochs, seed=0)
    tx, ty = blocks(held_out, "test")
    return task.metrics(net.scores(tx), ty)["accuracy"]


def train_row(name: str, spec: JobSpec, twin: float | None) -> str:
    began = time.perf_counter()
    result = asyncio.run(run_job(spec))
    seconds = time.perf_counter() - began
    assert result.extra.get("stop_reason") is None, result.extra
    history = result.history
    later = [r.bytes_in for r in history[1:]] or [history[0].bytes_in]
    acc = result.final_metrics["accuracy"]
    eps = ", ".join(f"{k[11:]} {v:.1f}" for k, v in result.final_metrics.items()
                    if k.startswith("dp_epsilon_"))
    twin_text = "-" if twin is None else f"{twin:.4f}"
    return (f"| {name} | {len(history)} | {history[0].bytes_in / 1e3:,.0f} | "
            f"{sum(later) / len(later) / 1e3:,.1f} | {acc:.4f} | {twin_text} | "
            f"{eps or '-'} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--key-bits", type=int, default=2048)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} at the start\n")
    print("| model (breast cancer, 3 parties) | epochs | bytes epoch 1 (kB, with PSI) | "
          "bytes per later epoch (kB) | accuracy | centralized twin | epsilon | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    print(train_row(f"linear, Paillier {args.key_bits} bits (1 epoch = 1 full-batch step)",
                    _job("linear", 10, learning_rate=1.0, key_bits=args.key_bits),
                    linear_twin(10, 1.0)), flush=True)
    nn = split.SplitSpec(batch_size=32)
    print(train_row("split-nn, concat", _job("split-nn", 10, batch_size=32),
                    split_twin(nn, 10)), flush=True)
    summed = split.SplitSpec(batch_size=32, combine="sum")
    print(train_row("split-nn, sum", _job("split-nn", 10, batch_size=32, combine="sum"),
                    split_twin(summed, 10)), flush=True)
    print(train_row("split-nn, secure sum", _job("split-nn", 10, batch_size=32,
                                                  combine="sum", secure_sum=True),
                    split_twin(summed, 10)), flush=True)
    for z in (1.0, 4.0):
        noise = [{"type": "split-noise", "params": {
            "embedding_noise": z, "gradient_noise": z, "embedding_clip": 1.0,
            "gradient_clip": 1.0}}]
        print(train_row(f"split-nn, concat, split-noise z={z}",
                        _job("split-nn", 10, batch_size=32, pipeline=noise), None), flush=True)
    print(f"\nPSI: each side's elliptic-curve work on {cores()} threads (one per core)\n")
    print("| ids per party | request (s) | answer (s) | intersection (s) | order (s) | "
          "total (s) | request MB | answer MB | order MB | load before / after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        print(psi_row(n), flush=True)


if __name__ == "__main__":
    main()
