"""Federation: from ``foedus submit`` to the end of round 1, and the coordinator's cost at scale.

Two measurements, each against a real ``foedus coordinator`` process on loopback (SQLite, the
default database), with the files :class:`foedus.federation.demo.LocalFederation` writes
(certificates, ``coordinator.yaml``, ``site-N.yaml``):

1. **Submit to round 1** on an idle federation: three ``foedus site`` processes (heartbeat
   every ``--heartbeat`` seconds, 2 by default as in ``site.yaml``), a job of three clients on
   the bundled digits over the ``https`` transport (its hub in the server's process). Each
   repeat runs the installed ``foedus submit JOB.yaml`` and stops the clock when the job's
   server appends round 1's record to its records file (polled every 5 ms: the round's real
   end, not the coordinator's next reading of it); the next repeat starts when the job has
   ended and its actors have exited. Measured as a federation that has been up a while:
   once the coordinator's and the sites' warm processes (:mod:`foedus.federation.zygote`)
   have said they are ready. One warm-up job first (bytecode and file caches), then
   ``--repeats`` timed ones; median and best. The events the coordinator records give the
   breakdown: ``submit`` (the command's run), ``accepted`` (the last site's acceptance: the
   offer reaches a site through its held heartbeat), ``server`` (the coordinator opening the
   gate of the server process it started at submit); the server process's log (UTC times to
   the millisecond) gives two more: ``listening`` (its hub listens) and ``connected`` (every
   client has subscribed on it). ``--submit-only`` measures this alone and prints the runs
   as JSON; the number of actors the sites forked from their warm processes is printed at
   the end.
2. **Scale**: ``--sites`` (100) simulated sites, each an HTTPS client with its own certificate
   in this process, heartbeat every 2 s (the default); ``--jobs`` (20) jobs queued, offered to
   sites that never answer (so each heartbeat of an offered site carries the job file back).
   Over ``--window`` seconds: the coordinator process's CPU (user + system, from
   ``/proc/PID/stat``, as a share of one core), its resident memory (VmRSS, and VmHWM: the
   peak), and the heartbeat round trip seen by the sites (median and 99th percentile).

Run: ``.venv/bin/python bench/federation.py [--repeats 5] [--heartbeat 2] [--sites 100]
[--jobs 20] [--window 30] [--write docs/benchmarks-federation.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import json
import math
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from foedus.certs import create_deployment_certs
from foedus.federation.demo import ADMIN_TOKEN, LocalFederation
from foedus.federation.zygote import READY_LINE

sys.path.insert(0, str(Path(__file__).resolve().parent))

from polling import wait_for

FOEDUS = [sys.executable, "-m", "foedus.cli"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def api(fed: LocalFederation) -> httpx.Client:
    return httpx.Client(base_url=fed.url, timeout=30.0,
                        verify=ssl.create_default_context(cafile=str(fed.root / "certs" /
                                                                     "ca.pem")),
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


@contextmanager
def processes(fed: LocalFederation, sites: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """The coordinator and ``sites`` as processes; all stopped (SIGTERM, by pid) at the end.
    Yields the coordinator's process."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        log = (fed.root / "coordinator.log").open("ab")
        started.append(subprocess.Popen(
            [*FOEDUS, "coordinator", "--config", str(fed.root / "coordinator.yaml")],
            stdout=log, stderr=subprocess.STDOUT))
        coordinator = started[0]

        def healthy() -> bool:
            try:
                with api(fed) as client:
                    return client.get("/v1/health").status_code == 200
            except httpx.TransportError:
                return False
        wait_for(healthy, 60, "the coordinator")
        for name in sites:
            log = (fed.root / f"{name}.log").open("ab")
            started.append(subprocess.Popen(
                [*FOEDUS, "site", "--config", str(fed.root / f"{name}.yaml")],
                stdout=log, stderr=subprocess.STDOUT))

        def online() -> bool:
            with api(fed) as client:
                found: list[dict[str, Any]] = client.get("/v1/sites").json()["sites"]
            return sum(bool(s["online"]) for s in found) >= len(sites)
        wait_for(online, 60, "the sites online")

        def warm() -> bool:  # a federation that has been up a while: its warm processes ready
            logs = [fed.root / "coordinator" / "zygote.log",
                    *(fed.root / name / "zygote.log" for name in sites)]
            return all(log.exists() and READY_LINE in log.read_text() for log in logs)
        wait_for(warm, 120, "the warm processes ready")
        yield coordinator
    finally:
        # the coordinator leaves job processes running when it stops (a restarted one adopts
        # them): the benchmark's queued jobs' waiting servers are stopped here, by pid
        servers = [pid for pid, _ in descendants_of(started[0].pid)] if started else []
        for proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pid in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # its own session: the server and any child


# ---- 1. submit to round 1 ------------------------------------------------------------------

def hub_times(server_log: Path, clients: int) -> tuple[float, float]:
    """(when the job's hub listened, when its last client subscribed), as epoch seconds, from
    the server process's log lines (``2026-12-02T22:55:33.123Z foedus.https: ...``); NaN for
    what the log does not say."""
    listening = connected = float("nan")
    peers: set[str] = set()
    for line in server_log.read_text(errors="replace").splitlines():
        stamp, _, text = line.partition("Z ")
        try:
            at = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) \
                + int(stamp[20:23]) / 1000
        except ValueError:
            continue
        if "HTTPS hub listening on" in text and math.isnan(listening):
            listening = at
        elif "subscribed to" in text and "HTTPS hub: " in text:
            peers.add(text.split("HTTPS hub: ", 1)[1].split(" subscribed", 1)[0])
            if len(peers) >= clients and math.isnan(connected):
                connected = at
    return listening, connected


def one_job(fed: LocalFederation, job: Path) -> dict[str, float]:
    env = {**os.environ, "FOEDUS_COORDINATOR": fed.url, "FOEDUS_TOKEN": ADMIN_TOKEN,
           "FOEDUS_CA": str(fed.root / "certs" / "ca.pem")}
    wall0, t0 = time.time(), time.monotonic()
    done = subprocess.run([*FOEDUS, "submit", str(job)], env=env, capture_output=True,
                          text=True, check=True)
    submitted = time.monotonic() - t0
    job_id = done.stdout.strip()
    records = fed.root / "coordinator" / "jobs" / job_id / "records.jsonl"
    wait_for(lambda: records.exists() and records.stat().st_size > 0, 120, "round 1",
             every=0.005)
    first_round = time.monotonic() - t0

    def ended() -> dict[str, Any] | None:
        with api(fed) as client:
            found: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        settled = all(a["state"] in ("done", "failed", "stopped") for a in found["assignments"])
        return found if found["state"] in ("finished", "failed") and settled else None
    found = wait_for(ended, 180, f"job {job_id} to end")
    if found["state"] != "finished":
        raise RuntimeError(f"job {job_id} {found['state']}: {found['reason']}")
    events = found["events"]
    accepted = max(e["at"] for e in events if e["text"].endswith(": accepted")) - wall0
    server = next(e["at"] for e in events if "started here" in e["text"]) - wall0
    listening, connected = hub_times(records.with_name("server.log"),
                                     len(found["assignments"]))
    return {"submit": submitted, "accepted": accepted, "server": server,
            "listening": listening - wall0, "connected": connected - wall0,
            "round1": first_round}


def submit_to_round1(repeats: int, heartbeat: float) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="foedus-bench-fed-") as tmp:
        fed = LocalFederation.create(Path(tmp), 3, heartbeat_s=heartbeat)
        job = fed.job(rounds=1)
        with processes(fed, fed.sites):
            one_job(fed, job)  # warm-up
            runs = []
            for i in range(repeats):
                runs.append(one_job(fed, job))
                print(f"  submit to round 1, run {i + 1}: "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in runs[-1].items()),
                      file=sys.stderr, flush=True)
        # an actor forked from its site's warm process (foedus.federation.zygote) leaves an
        # exit file; a cold-started one does not
        warm = sum(len(list((fed.root / name / "jobs").glob("*/*.exit"))) for name in fed.sites)
        print(f"  actors forked from a site's warm process: {warm} of "
              f"{3 * (repeats + 1)}", file=sys.stderr)
        return runs


# ---- 2. the coordinator with many sites and queued jobs -------------------------------------

async def heartbeat_sites(fed: LocalFederation, names: list[str], beat_s: float,
                          stop: asyncio.Event, latencies: list[float]) -> None:
    """Each simulated site heartbeats every ``beat_s`` seconds (offsets spread evenly) until
    ``stop``; it reports no actor and never answers an offer."""
    certs = fed.root / "certs"

    async def site(i: int, name: str) -> None:
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        context.load_cert_chain(str(certs / "clients" / f"{name}.pem"),
                                str(certs / "clients" / f"{name}.key"))
        async with httpx.AsyncClient(base_url=fed.url, verify=context, timeout=30) as client:
            await asyncio.sleep(beat_s * i / len(names))  # spread the beats, as real sites are
            while not stop.is_set():
                began = time.monotonic()
                r = await client.post("/v1/site/heartbeat", json={
                    "version": "bench", "offers": {"catalog": ["digits"]}, "actors": []})
                r.raise_for_status()
                latencies.append(time.monotonic() - began)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(),
                                           max(0.0, beat_s - (time.monotonic() - began)))

    await asyncio.gather(*(site(i, n) for i, n in enumerate(names)))


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, VmRSS kB, VmHWM kB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def pss_kb(pid: int) -> int:
    """A process's proportional set size (kB): its private memory plus its share of pages
    it shares, so processes forked from one warm process are not each counted in full."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise KeyError("Pss")


def descendants_of(ancestor: int) -> list[tuple[int, int]]:
    """(pid, PSS kB) of every descendant of ``ancestor`` (the coordinator's: its warm
    process, and the jobs' server processes, cold children of the coordinator or forked by
    the warm process, pre-started and gated while their jobs are queued)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], {ancestor}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        for pid in frontier:
            with contextlib.suppress(OSError, ValueError, KeyError):
                found.append((pid, pss_kb(pid)))  # gone meanwhile: skipped
    return found


def scale(sites: int, jobs: int, window: float) -> dict[str, float]:
    beat_s = 2.0
    with tempfile.TemporaryDirectory(prefix="foedus-bench-scale-") as tmp:
        fed = LocalFederation.create(Path(tmp), 2)
        names = [f"sim-{i:03d}" for i in range(sites)]
        create_deployment_certs(fed.root / "certs", names)
        config = yaml.safe_load((fed.root / "coordinator.yaml").read_text())
        config["queue_timeout"] = 24 * 3600  # the jobs stay queued through the window
        (fed.root / "coordinator.yaml").write_text(yaml.safe_dump(config))
        job = fed.job(rounds=5)
        with processes(fed, []) as coordinator:
            idle_cpu, idle_rss, _ = proc_stats(coordinator.pid)
            latencies: list[float] = []

            async def run() -> None:
                stop = asyncio.Event()
                load = asyncio.create_task(heartbeat_sites(fed, names, beat_s, stop, latencies))
                verify = ssl.create_default_context(cafile=str(fed.root / "certs" / "ca.pem"))
                async with httpx.AsyncClient(
                        base_url=fed.url, verify=verify, timeout=60,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
                    while True:  # every simulated site registered (a condition, polled)
                        found = (await client.get("/v1/sites")).json()["sites"]
                        if sum(s["online"] for s in found) >= sites:
                            break
                        await asyncio.sleep(0.2)
                    for i in range(jobs):  # 2 sites each, spread over all of them
                        pair = [names[(2 * i) % sites], names[(2 * i + 1) % sites]]
                        r = await client.post("/v1/jobs", json={"job_yaml": job.read_text(),
                                                                "sites": pair})
                        r.raise_for_status()
                await asyncio.sleep(2 * beat_s)  # every site has seen its offers once
                start["cpu"], _, _ = proc_stats(coordinator.pid)
                start["beats"] = len(latencies)
                start["at"] = time.monotonic()
                await asyncio.sleep(window)  # the measured window
                stop.set()
                await load

            start: dict[str, float] = {}
            asyncio.run(run())
            cpu1, rss, hwm = proc_stats(coordinator.pid)
            measured = time.monotonic() - start["at"]
            children = [pss for _, pss in descendants_of(coordinator.pid)]
            with api(fed) as client:
                queued = sum(j["state"] == "queued" for j in client.get("/v1/jobs").json()["jobs"])
        beats = sorted(latencies[int(start["beats"]):])
        return {"cpu_share": (cpu1 - start["cpu"]) / measured, "rss_mb": rss / 1024,
                "hwm_mb": hwm / 1024, "idle_rss_mb": idle_rss / 1024,
                "idle_cpu_s": idle_cpu, "beats_per_s": len(beats) / measured,
                "beat_p50_ms": 1000 * beats[len(beats) // 2],
                "beat_p99_ms": 1000 * beats[int(len(beats) * 0.99)], "queued": queued,
                "window_s": measured, "waiting": len(children),
                "cpu_ms_per_beat": 1000 * (cpu1 - start["cpu"]) / max(1, len(beats)),
                "waiting_pss_mb": sum(children) / 1024}


def report(runs: list[dict[str, float]], load: dict[str, float], args: argparse.Namespace,
           load_before: float) -> str:
    def med(key: str) -> str:
        return f"{statistics.median(r[key] for r in runs):.2f}"

    def best(key: str) -> str:
        return f"{min(r[key] for r in runs):.2f}"

    lines = [
        "# Federation benchmark",
        "",
        f"`.venv/bin/python bench/federation.py --repeats {args.repeats} --heartbeat "
        f"{args.heartbeat:g} --sites {args.sites} --jobs {args.jobs} --window {args.window:g}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores; other "
        "sessions' work on the machine inflates every wall-clock figure).",
        "",
        f"## Submit to the end of round 1 (3 sites, heartbeat {args.heartbeat:g} s, "
        f"{args.repeats} runs after a warm-up)",
        "",
        "Seconds from launching `foedus submit` (median / best):",
        "",
        "| `foedus submit` returned | last site accepted | server gate opened | "
        "hub listening | clients connected | round 1 ended |",
        "|---|---|---|---|---|---|",
        f"| {med('submit')} / {best('submit')} | {med('accepted')} / {best('accepted')} | "
        f"{med('server')} / {best('server')} | {med('listening')} / {best('listening')} | "
        f"{med('connected')} / {best('connected')} | {med('round1')} / {best('round1')} |",
        "",
        f"## The coordinator with {args.sites} sites heartbeating every 2 s and "
        f"{args.jobs} queued jobs",
        "",
        "| coordinator CPU (share of one core) | CPU per heartbeat (ms) | RSS (MB) | "
        "peak RSS (MB) | RSS before the "
        "sites (MB) | heartbeats/s | heartbeat p50 / p99 (ms) | jobs still queued | "
        "its warm process and pre-started server processes (PSS, MB) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {load['cpu_share']:.1%} | {load['cpu_ms_per_beat']:.2f} | {load['rss_mb']:.0f} | "
        f"{load['hwm_mb']:.0f} | "
        f"{load['idle_rss_mb']:.0f} | {load['beats_per_s']:.1f} | "
        f"{load['beat_p50_ms']:.1f} / {load['beat_p99_ms']:.1f} | {load['queued']} | "
        f"{load['waiting']} ({load['waiting_pss_mb']:.0f}) |",
        "",
        f"Measured over {load['window_s']:.0f} s after every site had registered and every "
        "job was queued; the simulated sites run in the benchmark's own process, on the same "
        "2 cores, so on a busy machine they send fewer heartbeats than 50 a second and wait "
        "longer for the answers: the coordinator's CPU per heartbeat is the figure that does "
        "not depend on them.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heartbeat", type=float, default=2.0,
                        help="the sites' heartbeat_s in the submit-to-round-1 runs")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--write", help="write the report to this file (default: print)")
    parser.add_argument("--submit-only", action="store_true",
                        help="measure only submit to round 1 (print its runs as JSON)")
    parser.add_argument("--runs-from", metavar="JSON", help=argparse.SUPPRESS)  # a rerun of 2.
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    if args.runs_from:
        runs = json.loads(Path(args.runs_from).read_text())
    else:
        runs = submit_to_round1(args.repeats, args.heartbeat)
        Path(tempfile.gettempdir(), "foedus-bench-federation-runs.json").write_text(
            json.dumps(runs))
    if args.submit_only:
        print(json.dumps({"load_before": load_before, "load_after": os.getloadavg()[0],
                          "median": {k: statistics.median(r[k] for r in runs) for k in runs[0]},
                          "runs": runs}, indent=1))
        return 0
    load = scale(args.sites, args.jobs, args.window)
    text = report(runs, load, args, load_before)
    if args.write:
        Path(args.write).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
