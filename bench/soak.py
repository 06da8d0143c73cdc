"""Soak benchmark: resident memory of the server and the clients over many rounds.

Two runs of the demo job (digits, Dirichlet split, sklearn-sgd):

* ``inproc``: every actor in this process (``run_job`` on the local transport), RSS sampled
  after every round;
* ``procs``: the server and each client as separate OS processes over a mosquitto broker started
  here, every process's RSS sampled (from outside, with psutil) after every round.

    .venv/bin/python bench/soak.py [--rounds 200] [--clients 5] [--mode inproc,procs]
                                   [--out docs/benchmarks-reliability.md]

Prints a markdown table and writes it to ``--out``. "Growth" is the largest RSS after warm-up
(round 10) minus the RSS at round 10; a leak shows up as growth proportional to the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WARMUP = 10
MARKS = (1, 10, 50, 100, 150, 200, 300, 500)


def _mib(rss: int) -> float:
    return rss / 2**20


def soak_inproc(rounds: int, clients: int) -> dict[str, list[float]]:
    from foedus.config.spec import ClientSection, DataSection, JobSpec
    from foedus.roles.server import RoundRecord
    from foedus.runner import run_job

    me = psutil.Process()
    samples: list[float] = []

    def sample(record: RoundRecord) -> None:
        samples.append(_mib(me.memory_info().rss))

    spec = JobSpec(job_id="soak", rounds=rounds, round_timeout=60,
                   data=DataSection(dataset="digits", partition="dirichlet", alpha=0.5),
                   clients=ClientSection(count=clients))
    asyncio.run(run_job(spec, on_round=sample))
    return {"all actors (one process)": samples}


def soak_procs(rounds: int, clients: int) -> dict[str, list[float]]:
    from tests.conftest import free_port
    from tests.reliability.procs import Actors
    from tests.transport.mqtt_fixtures import Mosquitto

    from foedus.certs import create_deployment_certs

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        certs = create_deployment_certs(work / "certs", ("client-000",))
        broker = Mosquitto(work / "broker", certs, free_port(), free_port(), free_port())
        broker.start()
        actors = Actors(work)
        try:
            job: dict[str, Any] = {
                "job_id": f"soak-{uuid.uuid4().hex[:6]}", "seed": 0, "rounds": rounds,
                "round_timeout": 60,
                "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
                "clients": {"count": clients},
                "transport": {"type": "mqtt",
                              "params": {"host": "127.0.0.1", "port": broker.plain_port}},
            }
            started = actors.clients(job, [0.0] * clients)
            server = actors.server(job)
            watched = {"server": psutil.Process(server.proc.pid),
                       **{f"client {i}": psutil.Process(c.proc.pid)
                          for i, c in enumerate(started)},
                       "broker": psutil.Process(broker.proc.pid)}  # type: ignore[union-attr]
            samples: dict[str, list[float]] = {name: [] for name in watched}
            for rnd in range(1, rounds + 1):
                server.wait_round(rnd, timeout=120)
                for name, proc in watched.items():
                    samples[name].append(_mib(proc.memory_info().rss))
            server.summary()
        finally:
            actors.kill_all()
            broker.stop()
    return samples


def table(title: str, samples: dict[str, list[float]], seconds: float) -> str:
    rounds = len(next(iter(samples.values())))
    marks = [m for m in MARKS if m <= rounds]
    head = "| actor | " + " | ".join(f"round {m}" for m in marks) + " | growth after round 10 |"
    rows = [f"**{title}**: {rounds} rounds in {seconds:.0f} s; RSS in MiB", "", head,
            "|" + "---|" * (len(marks) + 2)]
    for name, values in samples.items():
        growth = max(values[WARMUP:]) - values[WARMUP - 1] if rounds > WARMUP else 0.0
        rows.append(f"| {name} | " + " | ".join(f"{values[m - 1]:.1f}" for m in marks)
                    + f" | {growth:+.1f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--mode", default="inproc,procs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-reliability.md")
    args = parser.parse_args()
    parts = ["# Soak benchmark (`bench/soak.py`)\n",
             f"Demo job (digits, Dirichlet 0.5, sklearn-sgd), {args.clients} clients, "
             f"machine: {psutil.cpu_count()} cores, load average "
             f"{psutil.getloadavg()[0]:.1f} at start.\n"]
    for mode in args.mode.split(","):
        began = time.perf_counter()
        samples = soak_inproc(args.rounds, args.clients) if mode == "inproc" else soak_procs(
            args.rounds, args.clients)
        title = ("in-process (local transport)" if mode == "inproc"
                 else "separate processes over mosquitto")
        parts.append(table(title, samples, time.perf_counter() - began))
        print(parts[-1], flush=True)
    text = "\n".join(parts)
    if args.out.exists() and "<!-- load.py: begin -->" in (old := args.out.read_text()):
        text += "\n\n<!-- load.py: begin -->" + old.split("<!-- load.py: begin -->", 1)[1]
    args.out.write_text(text)  # keeping bench/load.py's section of the same page
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
