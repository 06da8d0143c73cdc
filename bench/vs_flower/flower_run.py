"""One workload in Flower's simulation runtime (Ray backend). Run with the Flower venv's python.

    bench/vs_flower/.venv-flower/bin/python bench/vs_flower/flower_run.py WORKLOAD_JSON DATA.npz

Written with Flower's current Message API (``ServerApp``/``ClientApp``, the message-based
``FedAvg`` strategy and ``flwr.simulation.run_simulation``). The client does what the bare loop
and foedus do (see ``workloads.py``): load the global arrays, the workload's epochs of SGD with
a fresh optimizer, reply with the state dict and its number of examples. Federated evaluation is off
(``fraction_evaluate=0``); the server evaluates the global model centrally after every round,
as foedus does. Each Ray actor gets one CPU (``client_resources.num_cpus = 1``, so two train
at once on two cores, like foedus's two workers; Flower's default is two CPUs per actor).

Sampling (the 10,000-client workload) is Flower's own (``fraction_train``, Python's
``random.sample``, seeded here), so the sampled clients differ from foedus's and the bare loop's.

Prints one line ``RESULT {json}`` with a wall-clock timestamp per round end (the times at which
the central evaluation of rounds 0..R finished) for ``run.py`` to turn into s/round.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network from a benchmark
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray on Linux puts its local instance on the machine's network address (even when asked for
# 127.0.0.1) unless its multi-node support is off: off, so that the benchmark talks over
# loopback only; set before Flower imports Ray, and inherited by Ray's processes
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray workers unpickle the ClientApp and import ``workloads`` by name: put it on their path.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")) if p
)

import workloads
from workloads import Workload, cached_data


def main() -> None:
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    work = Workload(**{**json.loads(sys.argv[1]),
                       "hidden": tuple(json.loads(sys.argv[1])["hidden"])})
    path = str(Path(sys.argv[2]).resolve())
    os.environ["VS_FLOWER_DATA"] = path  # Ray workers inherit the driver's environment
    hidden = work.hidden
    stamps: list[dict[str, Any]] = []
    sizes = {"down": 0, "up": 0}

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        d = cached_data(os.environ["VS_FLOWER_DATA"])
        index = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        model = workloads.make_mlp(hidden)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = d.share(index)
        seed = workloads.client_seed(workloads.SEED, index, rnd)
        loss = workloads.train_one(model, x, y, seed, lr=work.lr, epochs=work.epochs)
        content = RecordDict({
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
        })
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def server_main(grid: Grid, context: Context) -> None:
        random.seed(workloads.SEED)
        d = cached_data(path)
        evaluator = workloads.make_mlp(hidden)
        initial = ArrayRecord({k: torch.from_numpy(v) for k, v in d.initial.items()})
        model_bytes = initial.count_bytes()

        def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            evaluator.load_state_dict(arrays.to_torch_state_dict())
            acc = workloads.accuracy(evaluator, d.x_test, d.y_test)
            stamps.append({"round": rnd, "t_end": time.time(), "accuracy": acc})
            if rnd > 0:
                sizes["down"] += model_bytes * work.sampled
                sizes["up"] += model_bytes * work.sampled
            return MetricRecord({"accuracy": acc})

        strategy = FedAvg(
            fraction_train=work.sampled / work.clients, fraction_evaluate=0.0,
            min_train_nodes=work.sampled, min_available_nodes=work.clients,
        )
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=work.rounds,
                       evaluate_fn=evaluate)

    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=work.clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "logging_level": "ERROR",
                          "log_to_driver": False},
        },
    )
    rounds = [s for s in stamps if s["round"] > 0]
    print("RESULT " + json.dumps({
        "rounds": rounds, "t_ready": stamps[0]["t_end"] if stamps else None,
        "bytes_down": sizes["down"], "bytes_up": sizes["up"],
        "bytes_note": "computed: ArrayRecord.count_bytes() x clients",
    }), flush=True)


if __name__ == "__main__":
    main()
