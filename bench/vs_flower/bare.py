"""One workload as a bare loop in plain torch: no framework, the floor for any framework.

    python bench/vs_flower/bare.py WORKLOAD_JSON DATA.npz [--serialize] [--threads N]

Per round: for each (sampled) client, load the global weights into one reused module, train the
workload's epochs (``workloads.train_one``: fresh SGD optimizer, per-client-and-round shuffle
seed), collect its state dict and fold it into a running example-weighted sum; then the mean
becomes the global model and is evaluated on the test split. Clients are sampled exactly as
foedus samples them.

``--serialize`` adds what any real deployment pays: the global model is turned into bytes once
per round and every client decodes it; every update is turned into bytes and decoded before it
is averaged (numpy ``tobytes``/``frombuffer``, the cheapest possible encoding: no header, no
checksum). The bytes are counted like foedus counts them (the model once per client, each update
once).

Prints one line ``RESULT {json}`` with a wall-clock timestamp per round end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import workloads
from workloads import Data, Workload


def to_bytes(state: dict[str, np.ndarray]) -> bytes:
    return b"".join(np.ascontiguousarray(v).tobytes() for v in state.values())


def from_bytes(blob: bytes, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for name, ref in like.items():
        n = ref.nbytes
        out[name] = np.frombuffer(blob, dtype=ref.dtype, count=ref.size, offset=offset).reshape(
            ref.shape)
        offset += n
    return out


def run(work: Workload, data: Data, serialize: bool) -> dict[str, Any]:
    torch.manual_seed(workloads.SEED)
    model = workloads.make_mlp(work.hidden)
    global_np = {k: np.array(v, dtype=np.float32) for k, v in data.initial.items()}
    bytes_down = bytes_up = 0
    rounds = []
    for rnd in range(1, work.rounds + 1):
        chosen = workloads.sample_round(workloads.SEED, rnd, data.clients, work.per_round)
        sums = {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in global_np.items()}
        weight = 0
        model_blob = to_bytes(global_np) if serialize else b""
        for index in chosen:
            if serialize:
                incoming = from_bytes(model_blob, global_np)
                bytes_down += len(model_blob)
            else:
                incoming = global_np
            model.load_state_dict({k: torch.from_numpy(v) for k, v in incoming.items()})
            x, y = data.share(index)
            workloads.train_one(model, x, y, workloads.client_seed(workloads.SEED, index, rnd),
                                lr=work.lr, epochs=work.epochs)
            update = {k: v.detach().numpy() for k, v in model.state_dict().items()}
            if serialize:
                blob = to_bytes(update)
                bytes_up += len(blob)
                update = from_bytes(blob, global_np)
            else:
                update = {k: v.copy() for k, v in update.items()}  # "collect the state dict"
            for k, v in update.items():
                sums[k].add_(torch.from_numpy(v), alpha=float(len(y)))
            weight += len(y)
        global_np = {k: (s / weight).numpy() for k, s in sums.items()}
        model.load_state_dict({k: torch.from_numpy(v) for k, v in global_np.items()})
        acc = workloads.accuracy(model, data.x_test, data.y_test)
        rounds.append({"round": rnd, "t_end": time.time(), "accuracy": acc})
    return {"rounds": rounds, "bytes_down": bytes_down if serialize else None,
            "bytes_up": bytes_up if serialize else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("data")
    parser.add_argument("--serialize", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    raw = json.loads(args.workload)
    work = Workload(**{**raw, "hidden": tuple(raw["hidden"])})
    data = Data(args.data)
    t_ready = time.time()
    result = run(work, data, serialize=args.serialize)
    print("RESULT " + json.dumps({**result, "t_ready": t_ready}), flush=True)


if __name__ == "__main__":
    main()
