"""Asynchronous FedBuff against synchronous FedAvg when clients differ 3x in speed.

Six clients on the digits data (IID shares, scikit-learn SGD logistic regression with a
constant step, so progress is bounded by how many updates arrive, not by a step schedule); the
local training of each is slowed by a sleep of 0.1, 0.2 or 0.3 s (two clients each), as slower
machines would be. Synchronous FedAvg waits every round for the slowest client; FedBuff (buffer
K=3, staleness weight 1/sqrt(1+s)) applies updates as they come. Both run in this process on
the in-process transport. The table shows the wall time until the global model first reaches the
target accuracy on the held-out test set (median over seeds), and what each had reached by then.

    .venv/bin/python bench/async_vs_sync.py [--target 0.92] [--seeds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import foedus.models.sklearn  # noqa: F401  (registers sklearn-sgd)
from foedus.aggregate.fedavg import FedAvg
from foedus.core.message import Message
from foedus.data.datasets import load_dataset
from foedus.data.partition import partition
from foedus.models.base import ModelAdapter, build_model
from foedus.roles.async_client import AsyncClientPod
from foedus.roles.async_server import AsyncServerPod
from foedus.roles.client import ClientPod
from foedus.roles.server import RoundRecord, ServerPod
from foedus.topology.asynchronous import run_asynchronous
from foedus.topology.centralized import run_centralized
from foedus.transport.local import LocalTransport

DELAYS = (0.1, 0.1, 0.2, 0.2, 0.3, 0.3)


class SlowSync(ClientPod):
    delay = 0.0

    def train(self, model_msg: Message) -> Message:
        time.sleep(self.delay)
        return super().train(model_msg)


class SlowAsync(AsyncClientPod):
    delay = 0.0

    def train(self, model_msg: Message) -> Message:
        time.sleep(self.delay)
        return super().train(model_msg)


def first_reach(trace: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, acc in trace if acc >= target), None)


async def one_run(
    kind: str, seed: int, target: float, budget: float, eta0: float
) -> tuple[float | None, float, int]:
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
    train, test, spec = load_dataset("digits", seed=seed)
    shares = partition(train, len(DELAYS), scheme="iid", seed=seed)

    def model() -> ModelAdapter:
        return build_model("sklearn-sgd", spec, seed=seed, learning_rate="constant", eta0=eta0)

    evaluator = model()

    def evaluate(params: object) -> dict[str, float]:
        evaluator.set_params(params)  # type: ignore[arg-type]
        return evaluator.evaluate(test)

    transport = LocalTransport()
    trace: list[tuple[float, float]] = []
    began = time.perf_counter()
    if kind == "sync":
        server = ServerPod(job_id="bench-sync", initial_params=model().get_params(),
                           aggregator=FedAvg(), rounds=int(budget / max(DELAYS)) + 1,
                           expected_clients=len(DELAYS), evaluate=evaluate)

        def on_round(record: RoundRecord) -> None:
            trace.append((time.perf_counter() - began, record.metrics["accuracy"]))

        server.round_listeners.append(on_round)
        clients: list[ClientPod] = []
        for i, (delay, share) in enumerate(zip(DELAYS, shares, strict=True)):
            c = SlowSync(client_id=f"c{i}", model=model(), data=share)
            c.delay = delay
            clients.append(c)
        await run_centralized(server, transport, [(c, transport, ()) for c in clients])
        updates = len(server.history) * len(DELAYS)
    else:
        fedbuff = AsyncServerPod(job_id="bench-async", initial_params=model().get_params(),
                                 versions=10_000, buffer_size=3, evaluate=evaluate,
                                 timeout=budget)
        fedbuff.round_listeners.append(
            lambda r: trace.append((r.elapsed_s, r.metrics["accuracy"])))
        aclients: list[ClientPod] = []
        for i, (delay, share) in enumerate(zip(DELAYS, shares, strict=True)):
            a = SlowAsync(client_id=f"c{i}", model=model(), data=share)
            a.delay = delay
            aclients.append(a)
        await run_asynchronous(fedbuff, transport, [(c, transport, ()) for c in aclients])
        updates = sum(r.updates for r in fedbuff.history)
    await transport.close()
    best = max(acc for _, acc in trace)
    return first_reach(trace, target), best, updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=float, default=0.92)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--eta0", type=float, default=0.01, help="clients' constant SGD step")
    args = parser.parse_args()
    print(f"clients: {len(DELAYS)}, local training delays (s): {DELAYS}; "
          f"target accuracy {args.target}; budget {args.budget}s per run; "
          f"SGD step {args.eta0} (constant)\n")
    print("| mode | time to target (median s) | per seed (s) | best accuracy | updates used |")
    print("|---|---|---|---|---|")
    for kind, label in (("sync", "synchronous FedAvg"), ("async", "FedBuff K=3")):
        times, bests, updates = [], [], []
        for seed in range(args.seeds):
            reached, best, used = asyncio.run(
                one_run(kind, seed, args.target, args.budget, args.eta0))
            times.append(reached)
            bests.append(best)
            updates.append(used)
        ok = [t for t in times if t is not None]
        median = f"{statistics.median(ok):.2f}" if len(ok) == len(times) else "not reached"
        shown = ", ".join("-" if t is None else f"{t:.2f}" for t in times)
        print(f"| {label} | {median} | {shown} | {statistics.mean(bests):.3f} | "
              f"{statistics.mean(updates):.0f} |")


if __name__ == "__main__":
    main()
