"""Submit to the end of round 1 on an idle federation: foedus beside Flower's deployment engine.

    .venv/bin/python bench/vs_flower_federation/run.py [--repeats 5] [--rounds 5] [--skip foedus]

Both sides run the same job, one after the other, on loopback: scikit-learn's digits split IID
into three shares (foedus's own job builder writes them, seed 3, for both), the logistic-loss
``SGDClassifier`` foedus's ``sklearn-sgd`` is, one local epoch, FedAvg.

* **foedus**: ``bench/federation.py --submit-only --repeats N`` (a ``foedus coordinator``, three
  ``foedus site`` processes, the job over HTTPS with mutual TLS; the clock runs from launching
  ``foedus submit`` to the server appending round 1's record), its JSON read back.
* **Flower 1.42** (``bench/vs_flower/.venv-flower``, built by ``bench/vs_flower/setup.sh``): a
  ``flower-superlink --insecure`` on one free loopback port (in 1.42 the Fleet, Control and
  ServerAppIo APIs are one HTTP server on ``--host``/``--port``; the SuperLink's own SuperExec
  starts each run's ``flwr-serverapp``), three ``flower-supernode --insecure`` (each with its own
  loopback ``--port`` for its ClientApp runtime API and its node config: ``partition-id``,
  ``data-path``), and the Flower App in ``app/`` (a ServerApp and a ClientApp). The SuperLink
  connection ``flwr run`` uses is written into a temporary ``FLWR_HOME/config.toml`` (1.42 reads
  connections from there; a ``[tool.flwr.federations]`` table in the app's pyproject is only
  migrated into it). The clock runs from launching ``flwr run app bench`` to the ServerApp
  appending round 1's end (its central evaluation, in the process that ends the round) to a
  file polled every 5 ms; the next run starts when the ServerApp has written ``done`` and every
  ``flwr-serverapp``/``flwr-clientapp`` process has exited. Runtime dependency installation is
  off (the venv has the app's dependencies), telemetry is off.

One warm-up run each, then ``--repeats`` timed runs; median and best, and the load average
before and after each side. Every process started is stopped at the end (also on failure),
by pid, with the processes they started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from polling import wait_for  # noqa: E402  (the benchmarks' module, by path)

FLOWER_BIN = ROOT / "bench" / "vs_flower" / ".venv-flower" / "bin"
APP = HERE / "app"
CLIENTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_data(path: Path) -> None:
    """The job's shares, test split and initial weights, from foedus's own job builder."""
    import numpy as np

    from foedus.config.parts import build_parts
    from foedus.config.spec import JobSpec
    from foedus.plugins import load_plugins

    load_plugins()
    parts = build_parts(JobSpec.from_dict({
        "job_id": "digits-demo", "seed": 3, "rounds": 1,
        "data": {"dataset": "digits", "partition": "iid"},
        "clients": {"count": CLIENTS, "epochs": 1}, "model": {"type": "sklearn-sgd"}}))
    sizes = np.array([len(s) for s in parts.shares], dtype=np.int64)
    initial = parts.initial_params()
    np.savez(path, x=np.concatenate([s.x for s in parts.shares]),
             y=np.concatenate([s.y for s in parts.shares]),
             offsets=np.concatenate([[0], np.cumsum(sizes)]),
             x_test=parts.test.x, y_test=parts.test.y,
             classes=np.unique(np.concatenate([parts.test.y, *[s.y for s in parts.shares]])),
             init_coef=np.asarray(initial["coef"]), init_intercept=np.asarray(initial["intercept"]))


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def listening_ports(pids: list[int]) -> list[str]:
    """The TCP addresses the given processes listen on (to check: loopback only)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                host, port = fields[1].split(":")
                if len(host) == 8:
                    addr = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    addr = host
                found.append(f"{addr}:{int(port, 16)}")
    return sorted(found)


@contextmanager
def flower_federation(tmp: Path, data: Path, log: Path) -> Iterator[dict[str, str]]:
    """A SuperLink and three SuperNodes; yields the environment for ``flwr``. Everything
    started (with the SuperExec and app processes they start) is stopped at the end."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           "PATH": f"{FLOWER_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VIRTUAL_ENV", None)
    started: list[subprocess.Popen[bytes]] = []
    seen: set[int] = set()

    def launch(name: str, cmd: list[str]) -> None:
        home = tmp / f"home-{name}"
        home.mkdir()
        out = (log / f"{name}.log").open("ab")
        started.append(subprocess.Popen(cmd, env={**env, "FLWR_HOME": str(home)},
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True))

    try:
        link = free_port()
        launch("superlink", [
            str(FLOWER_BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
            "--port", str(link), "--isolation", "subprocess",
            "--disable-runtime-dependency-installation"])

        def healthy() -> bool:
            if started[0].poll() is not None:
                raise RuntimeError(f"flower-superlink exited: see {log}/superlink.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{link}/health", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False
        wait_for(healthy, 60, "the SuperLink")
        for i in range(CLIENTS):
            launch(f"supernode-{i}", [
                str(FLOWER_BIN / "flower-supernode"), "--insecure",
                "--superlink", f"127.0.0.1:{link}", "--host", "127.0.0.1",
                "--port", str(free_port()), "--isolation", "subprocess",
                "--node-config", f'partition-id={i} num-partitions={CLIENTS} '
                                 f'data-path="{data}"'])
        cli_home = tmp / "home-cli"
        cli_home.mkdir()
        (cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n'
            f'[superlink.bench]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
        cli_env = {**env, "FLWR_HOME": str(cli_home)}

        def online() -> bool:
            for proc in started:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args!r} exited: see the logs in {log}")
            done = subprocess.run([str(FLOWER_BIN / "flwr"), "supernode", "ls", "bench",
                                   "--format", "json"], env=cli_env, capture_output=True,
                                  text=True)
            try:
                nodes: list[dict[str, Any]] = json.loads(done.stdout).get("nodes", [])
            except json.JSONDecodeError:
                return False
            return sum(str(n.get("status")) == "online" for n in nodes) >= CLIENTS
        wait_for(online, 120, "three SuperNodes online", every=0.5)
        yield cli_env
    finally:
        for proc in started:
            seen.update(descendants(proc.pid))
        for proc in reversed(started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for pid in seen:  # SuperExec and app processes in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def flower_run(env: dict[str, str], stamps: Path, data: Path, rounds: int) -> dict[str, float]:
    """One ``flwr run``; seconds from its launch to: the command's return, the ServerApp's
    start, the first and the last ClientApp's first train call, round 1's end."""
    stamps.unlink(missing_ok=True)

    def lines() -> list[list[str]]:
        return [line.split() for line in stamps.read_text().splitlines()] \
            if stamps.exists() else []

    wall0, t0 = time.time(), time.monotonic()
    done = subprocess.run(
        [str(FLOWER_BIN / "flwr"), "run", str(APP), "bench", "--format", "json",
         "--run-config", f'data-path="{data}" stamp-path="{stamps}" num-server-rounds={rounds}'],
        env=env, capture_output=True, text=True)
    submitted = time.monotonic() - t0
    try:  # `flwr run --format json` exits 0 also when it failed: its JSON says so
        started = json.loads(done.stdout).get("success") is True
    except json.JSONDecodeError:
        started = False
    if done.returncode != 0 or not started:
        raise RuntimeError(f"flwr run failed ({done.returncode}): {done.stdout}{done.stderr}")
    wait_for(lambda: any(f[0] == "1" for f in lines()), 180, "round 1", every=0.005)
    first = time.monotonic() - t0
    wait_for(lambda: any(f[0] == "done" for f in lines()), 300, "the run's end")
    me = os.getpid()
    wait_for(lambda: not any(("flwr-serverapp" in cmdline(p) or "flwr-clientapp" in cmdline(p))
                             for p in descendants(me)), 120, "the app processes to exit")
    found = lines()
    at = {f[0]: float(f[1]) - wall0 for f in reversed(found)}  # first stamp of each kind
    trains = sorted(float(f[1]) - wall0 for f in found if f[0].startswith("train-"))
    return {"submit": submitted, "serverapp": at["main"], "first_train": trains[0],
            "last_train": trains[CLIENTS - 1], "round1": first,
            "accuracy": float(next(f[2] for f in reversed(found) if f[0] == str(rounds)))}


def flower_side(repeats: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="foedus-vs-flower-fed-") as name:
        tmp = Path(name)
        data = tmp / "digits.npz"
        write_data(data)
        logs = tmp / "logs"
        logs.mkdir()
        load_before = os.getloadavg()[0]
        try:
            with flower_federation(tmp, data, logs) as env:
                ports = listening_ports([os.getpid(), *descendants(os.getpid())])
                print(f"  Flower processes listen on {', '.join(ports)}", file=sys.stderr)
                if any(not p.startswith("127.0.0.1:") for p in ports):
                    raise RuntimeError(f"a Flower process listens beyond loopback: {ports}")
                warm = flower_run(env, tmp / "stamps.txt", data, rounds)
                print(f"  flower warm-up: round 1 {warm['round1']:.2f}s", file=sys.stderr)
                runs = []
                for i in range(repeats):
                    runs.append(flower_run(env, tmp / "stamps.txt", data, rounds))
                    r = runs[-1]
                    print(f"  flower run {i + 1}: flwr run returned {r['submit']:.2f}s, "
                          f"ServerApp started {r['serverapp']:.2f}s, ClientApps trained "
                          f"from {r['first_train']:.2f}s to {r['last_train']:.2f}s, round 1 "
                          f"{r['round1']:.2f}s, accuracy after {rounds} rounds "
                          f"{r['accuracy']:.4f}", file=sys.stderr, flush=True)
        except Exception:
            for f in sorted(logs.iterdir()):
                print(f"---- {f.name} (last 40 lines)\n" + "\n".join(
                    f.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
            raise
        return {"load_before": load_before, "load_after": os.getloadavg()[0], "runs": runs,
                "ports": ports}


def foedus_side(repeats: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "federation.py"),
                           "--submit-only", "--repeats", str(repeats)],
                          capture_output=True, text=True, check=True)
    sys.stderr.write(done.stderr)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def summary(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{statistics.median(values):.2f} / {min(values):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="Flower run's rounds")
    parser.add_argument("--skip", default="", help="foedus or flower")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    if "flower" not in args.skip and not (FLOWER_BIN / "flwr").exists():
        sys.exit(f"{FLOWER_BIN}/flwr is missing: run `bash bench/vs_flower/setup.sh` first")
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if "foedus" not in args.skip:
        result["foedus"] = foedus_side(args.repeats)
    if "flower" not in args.skip:
        result["flower"] = flower_side(args.repeats, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"started {result['date']}; seconds, median / best of {args.repeats} after a warm-up")
    print("| framework | submit command returned | round 1 ended | load average before, after |")
    print("|---|---|---|---|")
    for side in ("foedus", "flower"):
        if side in result:
            r = result[side]
            print(f"| {side} | {summary(r['runs'], 'submit')} | {summary(r['runs'], 'round1')} "
                  f"| {r['load_before']:.1f}, {r['load_after']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
