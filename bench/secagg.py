"""Secure-sum cost per round: client and server seconds, and bytes, by clients and dropouts.

Run: ``.venv/bin/python bench/secagg.py [--params 100000] [--clients 10 50]``. One in-memory
session per row (no network), 32-bit ring; "client s" is the mean over clients of the time a
client spends in its four steps, "server s" the server's total. Bytes count what one client
sends (keys, encrypted shares, masked vector, unmasking shares) and the plain vector it hides.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from foedus.privacy.secagg import SecAggClient, SecAggConfig, SecAggServer


def session(n: int, size: int, dropout_fraction: float) -> dict[str, float]:
    cfg = SecAggConfig.tolerating(n, max(1, (n - 1) // 3), size, value_range=1.0)
    rng = np.random.default_rng(0)
    xs = {u: rng.uniform(-1, 1, size) for u in range(1, n + 1)}
    dropped = set(range(1, int(n * dropout_fraction) + 1))
    client_s: dict[int, float] = dict.fromkeys(xs, 0.0)
    server_s = 0.0
    sent = 0

    def timed(u: int, fn, *args):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        out = fn(*args)
        client_s[u] += time.perf_counter() - began
        return out

    clients = {u: SecAggClient(cfg, u) for u in xs}
    server = SecAggServer(cfg)
    adverts = [timed(u, c.advertise) for u, c in clients.items()]
    t = time.perf_counter()
    roster = server.collect_keys(adverts)
    server_s += time.perf_counter() - t
    shares = [timed(u, c.share_keys, roster) for u, c in clients.items()]
    sent += 64 + sum(len(ct) for ct in shares[-1].ciphertexts.values())
    t = time.perf_counter()
    routed = server.route_shares(shares)
    server_s += time.perf_counter() - t
    masked = [timed(u, clients[u].masked_input, xs[u], routed[u]) for u in routed
              if u not in dropped]
    sent += masked[-1].masked.nbytes
    t = time.perf_counter()
    request = server.collect_masked(masked)
    server_s += time.perf_counter() - t
    responses = [timed(u, clients[u].unmask, request) for u in request.survivors]
    sent += sum(len(s) for s in [*responses[-1].s_shares.values(),
                                 *responses[-1].b_shares.values()])
    t = time.perf_counter()
    total = server.finish(responses)
    server_s += time.perf_counter() - t
    expected = sum(v for u, v in xs.items() if u not in dropped)
    assert np.abs(total - expected).max() < n / 2**16
    active = [client_s[u] for u in xs if u not in dropped]
    return {"client_s": sum(active) / len(active), "server_s": server_s,
            "client_bytes": float(sent), "plain_bytes": float(size * 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.2])
    args = parser.parse_args()
    print("| clients | dropped | params | client s (mean) | server s | bytes sent per client "
          "| plain vector bytes |")
    print("|---|---|---|---|---|---|---|")
    for n in args.clients:
        for fraction in args.dropouts:
            r = session(n, args.params, fraction)
            print(f"| {n} | {int(n * fraction)} | {args.params:,} | {r['client_s']:.3f} | "
                  f"{r['server_s']:.3f} | {int(r['client_bytes']):,} | "
                  f"{int(r['plain_bytes']):,} |")


if __name__ == "__main__":
    main()
