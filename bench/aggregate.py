"""Aggregation speed: every foedus aggregator against the memory-bandwidth limit and Flower.

For K clients in {10, 100} and P in {1e6, 1e7} float32 parameters, one round of each
aggregator is timed as the server runs it: ``reset``, K x ``accept`` (validation included:
shape and NaN/Inf checks), ``result``. Steady state: each aggregator first runs one untimed
warm-up round (it allocates its buffers and faults their pages in, as a server's first round
does), then the best of ``--repeat`` timed rounds is reported. Flower's functions get the same
untimed warm-up call. Inputs are K random float32 updates around a random
global model, built once per (K, P) from a fixed seed; messages are read-only views of them.

Every timed run starts with empty caches (a buffer twice the size of the largest cache is
read first, untimed), so the updates come from memory, as the goal "the machine's memory
bandwidth" means; this machine's 480 MiB L3 would otherwise keep a 40 MB case between repeats
and the reference would time the cache. foedus's rounds are also timed with the updates left
in cache by the round before (the ``cached`` columns, next to a cached read).

Columns: round seconds, seconds in ``result()``, and effective GB/s = K*P*4 bytes / round
seconds, next to machine references measured in the same run on the same K*P*4 bytes. Every
figure (references, foedus, Flower) is the best of at least ``--repeat`` runs, and of more (up
to 50) while they add up to less than half a second:

* read: read every update once with ``np.dot`` on all cores, each reading a slice of every
  update, or on one core if that is faster: the machine's memory bandwidth, the lower bound of
  any aggregator, which must at least look at every value; read1, the same on one core (the
  best of ``np.sum`` and ``np.dot``); cached read: the read with the updates in cache;
* add: ``acc += update`` for every update (``np.add`` with ``out=``, on one core and on all
  cores; what a streaming mean does if it folds updates in one by one: read the update, read
  and write the accumulator).

With ``--flower-python PATH`` the same inputs (regenerated from the same seed) go through
Flower's own aggregation functions (``flwr.server.strategy.aggregate``: ``aggregate``,
``aggregate_median``, ``aggregate_trimmed_avg``, ``aggregate_krum``, ``aggregate_bulyan``)
in a subprocess run by that interpreter; Flower is never imported by foedus itself.

Run:  .venv/bin/python bench/aggregate.py [--quick] [--repeat 3]
          [--flower-python bench/vs_flower/.venv-flower/bin/python]
          [--out docs/benchmarks-aggregation.md]
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import platform
import subprocess
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

SEED = 1234
LOAD_AT_START = os.getloadavg()[0]
# the O(K^2 P) rules are timed with fewer clients at the largest size (see COSTLY)
COSTLY = {"krum", "multi-krum", "geomedian", "bulyan"}


def byzantine_f(k: int) -> int:
    """Tolerated attackers for the Krum family and Bulyan: 10% of the clients."""
    return max(1, k // 10)


# rows that run a registered aggregator with other settings: FedAvg's fold without numba
VARIANTS = {"fedavg-numpy": ("fedavg", {"kernel": "numpy"})}


def settings(name: str, k: int) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {
        "krum": {"f": byzantine_f(k)}, "multi-krum": {"f": byzantine_f(k)},
        "bulyan": {"f": byzantine_f(k)}, "trimmed-mean": {"beta": 0.1},
    }
    return table.get(name, {})


def create(name: str, k: int) -> Any:
    """The aggregator a row of the table times (a registered name or a :data:`VARIANTS` row)."""
    from foedus.aggregate.base import aggregators

    registered, extra = VARIANTS.get(name, (name, {}))
    return aggregators.create(registered, **settings(registered, k), **extra)


def make_inputs(k: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """K updates (rows) around a global model, float32, from a fixed seed."""
    rng = np.random.default_rng([SEED, k, p])
    global_model = rng.standard_normal(p, dtype=np.float32)
    updates = rng.standard_normal((k, p), dtype=np.float32)
    updates *= np.float32(0.01)
    updates += global_model
    return global_model, updates


def last_level_cache_bytes() -> int:
    """The largest CPU cache's size (Linux sysfs), or 512 MiB where it cannot be read."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(path) as fh:
            text = fh.read().strip()
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=512 << 20)


_EVICTION: list[np.ndarray] = []


def empty_caches() -> None:
    """Read a buffer twice the size of the largest cache, so that whatever a timed run touches
    next comes from memory: this machine's 480 MiB L3 otherwise keeps a whole small case (40
    to 400 MB of updates) between repeats, and the reference would measure the cache."""
    if not _EVICTION:
        _EVICTION.append(np.ones(2 * last_level_cache_bytes() // 4, np.float32))
    _EVICTION[0].sum()


def best_of(repeat: int, fn: Callable[[], Any], cold: bool = False, budget: float = 0.5,
            most: int = 50) -> float:
    """The best of at least ``repeat`` runs, and of more (up to ``most``) while they take less
    than ``budget`` seconds in all: a millisecond-long case is otherwise at the mercy of one
    scheduler hiccup per run. ``cold``: the caches are emptied before each run (untimed).

    The cyclic garbage collector is off while the runs are timed, as in ``timeit``: a full
    collection before each run walks every Python object and pushes the run's data out of the
    cores' own caches (measured: a 1.1 ms FedAvg round then takes 2.2 ms), and a collection
    inside a run would time the collector."""
    times: list[float] = []
    gc.collect()
    gc.disable()
    try:
        while len(times) < repeat or (sum(times) < budget and len(times) < most):
            if cold:
                empty_caches()
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    finally:
        gc.enable()
    return min(times)


# ---- machine references ---------------------------------------------------------------------
def reference_times(updates: np.ndarray, repeat: int) -> dict[str, float]:
    """Best times, caches emptied before each run, to read the updates on one core (``read1``)
    and at the machine's memory bandwidth (``read``: the faster of one core and all cores,
    each core reading a contiguous slice of every update), and to sum them into one
    accumulator (``add``, likewise); and ``cached``: the read repeated with the updates left in
    cache by the run before (what a round of updates that fit in cache can be read at)."""
    cores = os.cpu_count() or 1
    pool = ThreadPoolExecutor(cores)
    width = updates.shape[1]
    cuts = [(i * width // cores, (i + 1) * width // cores) for i in range(cores)]
    acc = np.zeros(width, np.float32)

    def on_all_cores(task: Callable[[int, int], None]) -> None:
        for future in [pool.submit(task, lo, hi) for lo, hi in cuts]:
            future.result()

    def read_slice(lo: int, hi: int) -> None:
        for row in updates:
            np.dot(row[lo:hi], row[lo:hi])

    def add_slice(lo: int, hi: int) -> None:
        for row in updates:
            np.add(acc[lo:hi], row[lo:hi], out=acc[lo:hi])

    def fastest(cold: bool, *ways: Callable[[], Any]) -> float:
        return min(best_of(repeat, way, cold) for way in ways)

    add_slice(0, width)  # touch the accumulator's pages
    try:
        read1 = fastest(True, lambda: [row.sum() for row in updates],
                        lambda: read_slice(0, width))
        return {
            "read1": read1,
            "read": min(read1, fastest(True, lambda: on_all_cores(read_slice))),
            "add": fastest(True, lambda: add_slice(0, width),
                           lambda: on_all_cores(add_slice)),
            "cached": fastest(False, lambda: read_slice(0, width),
                              lambda: on_all_cores(read_slice)),
        }
    finally:
        pool.shutdown()


# ---- foedus ---------------------------------------------------------------------------------
def time_foedus(name: str, global_model: np.ndarray, updates: np.ndarray,
                repeat: int) -> dict[str, float]:
    """Best round time with the caches emptied before each round (``s``) and with the updates
    left in cache by the round before (``cached_s``), the best time in ``result()`` of the
    former (``result_s``), and the peak bytes a fresh aggregator allocates in its first round
    (``peak``: its buffers, beyond the updates themselves)."""
    import foedus.aggregate  # noqa: F401 - registers every aggregator
    from foedus.core.message import Kind, Message

    k = updates.shape[0]
    messages = [
        Message.create(Kind.UPDATE, job_id="bench", round=1, sender=f"c{i}",
                       params={"w": updates[i]}, num_examples=100 + i)
        for i in range(k)
    ]
    agg = create(name, k)
    params = {"w": global_model}
    agg.reset(params)  # untimed warm-up round: buffers allocated, pages faulted in
    for msg in messages:
        agg.accept(msg)
    agg.result()
    cold_round, cold_result = steady_rounds(agg, params, messages, repeat, cold=True)
    cached_round, _ = steady_rounds(agg, params, messages, repeat, cold=False)
    agg.reset(params)  # drop the stacked updates before the next case
    del agg
    # memory: a fresh aggregator's first round under tracemalloc (numpy reports its buffers
    # to it), untimed: everything it allocates, buffers kept for later rounds included
    gc.collect()
    tracemalloc.start()
    fresh = create(name, k)
    fresh.reset(params)
    for msg in messages:
        fresh.accept(msg)
    fresh.result()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del fresh
    return {"s": cold_round, "cached_s": cached_round, "result_s": cold_result, "peak": peak}


def steady_rounds(agg: Any, params: dict[str, np.ndarray], messages: list[Any],
                  repeat: int, cold: bool) -> tuple[float, float]:
    """Best round time and best time in ``result()`` over repeated rounds."""
    in_result: list[float] = []

    def one_round() -> None:
        agg.reset(params)
        for msg in messages:
            agg.accept(msg)
        mid = time.perf_counter()
        agg.result()
        in_result.append(time.perf_counter() - mid)

    return best_of(repeat, one_round, cold), min(in_result)


# ---- Flower (runs inside the Flower interpreter) ----------------------------------------------
def flower_cases(k: int) -> dict[str, Callable[[list[tuple[list[np.ndarray], int]]], Any]]:
    from flwr.server.strategy import aggregate as fl

    f = byzantine_f(k)
    return {
        "fedavg": fl.aggregate,
        "median": fl.aggregate_median,
        "trimmed-mean": lambda r: fl.aggregate_trimmed_avg(r, 0.1),
        "krum": lambda r: fl.aggregate_krum(r, f, 0),
        "multi-krum": lambda r: fl.aggregate_krum(r, f, k - f),
        # Flower's Bulyan pops from the list it is given: hand it a fresh one each time
        "bulyan": lambda r: fl.aggregate_bulyan(list(r), f, fl.aggregate_krum, to_keep=0),
    }


# Flower's server optimisers are strategies, not functions: their ``aggregate_fit`` takes the
# clients' parameters serialised (Flower's API has no other way in), deserialises them, runs
# FedAvg, then the optimiser step, and serialises the result. foedus is handed the decoded
# arrays (its codec decodes without copying); the table notes the difference.
FLOWER_STRATEGIES = {"fedavgm", "fedadagrad", "fedadam", "fedyogi"}


def flower_strategy(name: str, global_model: np.ndarray) -> Any:
    """A Flower strategy with the same settings as foedus's defaults for ``name``."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import strategy as st

    start = ndarrays_to_parameters([global_model])
    if name == "fedavgm":
        return st.FedAvgM(initial_parameters=start, server_learning_rate=1.0,
                          server_momentum=0.9)
    if name == "fedadagrad":
        return st.FedAdagrad(initial_parameters=start, eta=0.1, tau=1e-3)
    cls = {"fedadam": st.FedAdam, "fedyogi": st.FedYogi}[name]
    return cls(initial_parameters=start, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)


def flower_fit_results(updates: np.ndarray) -> list[tuple[Any, Any]]:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    ok = Status(code=Code.OK, message="")
    return [(None, FitRes(status=ok, parameters=ndarrays_to_parameters([updates[i]]),
                          num_examples=100 + i, metrics={})) for i in range(len(updates))]


def flower_main(spec: str) -> None:
    """Subprocess entry: time Flower's functions on the cases in ``spec`` (JSON)."""
    import flwr

    cases = json.loads(spec)
    out: dict[str, Any] = {"version": flwr.__version__, "times": []}
    for k, p, names, repeat in cases:
        global_model, updates = make_inputs(k, p)
        results = [([updates[i]], 100 + i) for i in range(k)]
        funcs = flower_cases(k)
        for name in names:
            if name in funcs:
                out["times"].append([name, k, p, _time_call(repeat, funcs[name], results)])
        del results
        fit_results = flower_fit_results(updates) if FLOWER_STRATEGIES & set(names) else []
        for name in sorted(FLOWER_STRATEGIES & set(names)):
            strategy = flower_strategy(name, global_model)
            rounds = iter(range(1, 10**6))  # a strategy counts rounds (bias correction)

            def fit(r: Any, s: Any = strategy, n: Any = rounds) -> Any:
                return s.aggregate_fit(next(n), r, [])

            out["times"].append([name, k, p, _time_call(repeat, fit, fit_results)])
        del updates, fit_results
        gc.collect()
    print("RESULT " + json.dumps(out), flush=True)


def _time_call(repeat: int, fn: Callable[[Any], Any], arg: Any) -> float:
    fn(arg)  # untimed warm-up call, as for foedus
    return best_of(repeat, lambda: fn(arg), cold=True)


def run_flower(python: str, cases: list[tuple[int, int, list[str], int]]) -> dict[str, Any]:
    proc = subprocess.run(
        [python, __file__, "--flower-worker", json.dumps(cases)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": ""},
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"Flower run failed:\n{proc.stderr[-3000:]}")


# ---- the table ------------------------------------------------------------------------------
NAMES = ["fedavg", "fedavg-numpy", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "median",
         "trimmed-mean", "krum", "multi-krum", "geomedian", "bulyan"]


def plan(quick: bool) -> list[tuple[int, int]]:
    if quick:
        return [(10, 1_000_000)]
    return [(10, 1_000_000), (100, 1_000_000), (10, 10_000_000), (100, 10_000_000)]


def names_for(k: int, p: int) -> list[str]:
    if k * p > 100 * 1_000_000 * 5:  # the largest case: 4 GB of updates
        return [n for n in NAMES if n not in COSTLY] + ["krum", "geomedian"]
    return NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only K=10, P=1e6")
    parser.add_argument("--flower-python", help="interpreter with flwr installed")
    parser.add_argument("--out", help="write the Markdown table here")
    parser.add_argument("--flower-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_worker:
        flower_main(args.flower_worker)
        return

    rows: list[dict[str, Any]] = []
    refs: dict[tuple[int, int], dict[str, float]] = {}
    for k, p in plan(args.quick):
        global_model, updates = make_inputs(k, p)
        refs[(k, p)] = reference_times(updates, args.repeat)
        for name in names_for(k, p):
            # the largest case: one steady-state round after the warm-up (4 GB of updates)
            repeat = 1 if (k >= 100 and p >= 10_000_000) else args.repeat
            timed = time_foedus(name, global_model, updates, repeat)
            rows.append({"name": name, "k": k, "p": p, **timed})
            print(f"{name:13s} K={k:4d} P={p:>9,d}  {timed['s']:8.4f} s  "
                  f"(cached {timed['cached_s']:.4f} s, result {timed['result_s']:.4f} s)  "
                  f"{100 * refs[(k, p)]['read'] / timed['s']:4.0f}% of read  "
                  f"peak {timed['peak'] / 1e6:8.1f} MB", flush=True)
        del global_model, updates
        gc.collect()

    flower: dict[tuple[str, int, int], float] = {}
    flower_version = None
    if args.flower_python:
        cases = [(k, p, [n for n in names_for(k, p) if n in flower_cases_names()],
                  1 if k * p >= 1_000_000_000 else args.repeat) for k, p in plan(args.quick)]
        # Flower's Krum and Bulyan loop over client pairs in Python (Bulyan runs Krum n - 2f
        # times): with 100 clients that alone takes far longer than the rest of this run
        cases = [(k, p, [n for n in ns if not (n in COSTLY and k >= 100)], r)
                 for k, p, ns, r in cases]
        got = run_flower(args.flower_python, cases)
        flower_version = got["version"]
        flower = {(n, k, p): s for n, k, p, s in got["times"]}
        for (n, k, p), s in flower.items():
            print(f"flower {n:13s} K={k:4d} P={p:>9,d}  {s:8.4f} s", flush=True)

    table = render(rows, refs, flower, flower_version)
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table)


def flower_cases_names() -> set[str]:
    return {"fedavg", "median", "trimmed-mean", "krum", "multi-krum", "bulyan",
            *FLOWER_STRATEGIES}


def render(rows: list[dict[str, Any]], refs: dict[tuple[int, int], dict[str, float]],
           flower: dict[tuple[str, int, int], float], flower_version: str | None) -> str:
    lines = [
        "# Aggregation benchmark",
        "",
        f"Generated by `bench/aggregate.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
        + (f", Flower {flower_version}" if flower_version else "")
        + f"; 1-minute load average {LOAD_AT_START:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end (other work on the machine skews the figures: "
        "compare rows of one run, not runs).",
        "`fedavg` uses the compiled fold (numba installed), `fedavg-numpy` the numpy fold. "
        "One round = reset + K accepts (with validation) + result; steady state: one untimed "
        "warm-up round first (Flower: one untimed warm-up call), then the best of the repeats. "
        "**Caches emptied before every timed run** (a 2x-L3 buffer is read, untimed), for the "
        "references, foedus and Flower alike, so the updates come from memory: this machine's "
        f"{last_level_cache_bytes() >> 20} MiB L3 would otherwise keep the smaller cases "
        "between repeats. GB/s = K*P*4 bytes / round time. References on the same bytes: "
        "**read** (read every update once on all cores: the machine's memory bandwidth, the "
        "floor under any aggregator, which must look at every value), **read1** (the same on "
        "one core), **add** (`acc += update` for every update, the faster of one and all "
        "cores) and **cached read** (the read repeated with the updates left in cache). "
        "The `cached` columns time the round likewise with the updates left in cache by the "
        "round before. Peak MB: what the aggregator allocates during a steady-state round "
        "(tracemalloc), beyond the updates it is handed; in brackets as a multiple of the "
        "model's size.",
        "",
        "| K | P | read, all cores: s (GB/s) | read, one core: s (GB/s) | add s (GB/s) | "
        "cached read s (GB/s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for (k, p), ref in refs.items():
        size = k * p * 4 / 1e9
        lines.append(f"| {k} | {p:,} | " + " | ".join(
            f"{ref[key]:.4f} ({size / ref[key]:.1f})"
            for key in ("read", "read1", "add", "cached")) + " |")
    lines += [
        "",
        "| aggregator | K | P | round s | in result() s | GB/s | % of read | % of add | "
        "cached round s | % of cached read | peak MB (x model) | Flower s | "
        "speed-up vs Flower |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        k, p = r["k"], r["p"]
        size = k * p * 4 / 1e9
        ref = refs[(k, p)]
        fl = flower.get((VARIANTS.get(r["name"], (r["name"],))[0], k, p))
        fl_cells = f"{fl:.4f} | {fl / r['s']:.1f}x" if fl is not None else "- | -"
        lines.append(
            f"| {r['name']} | {k} | {p:,} | {r['s']:.4f} | {r['result_s']:.4f} | "
            f"{size / r['s']:.2f} | {100 * ref['read'] / r['s']:.0f}% | "
            f"{100 * ref['add'] / r['s']:.0f}% | {r['cached_s']:.4f} | "
            f"{100 * ref['cached'] / r['cached_s']:.0f}% | "
            f"{r['peak'] / 1e6:.0f} ({r['peak'] / (p * 4):.1f}) | {fl_cells} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
