"""What one peer may hold on a hub at once, so an outsider cannot crowd out the job's actors.

gRPC and HTTPS have no broker in front of them: the foedus server process *is* the broker, so
every connection, subscription and upload an outsider opens costs the server memory, file
descriptors and event-loop time. :class:`PeerLimits` bounds what one peer holds (a peer is the
common name of its verified client certificate under mutual TLS, else its IP address) and a few
hub-wide totals; :class:`PeerTable` counts holdings and refuses the one over a bound *before*
any work is done for it, with :class:`LimitExceeded` naming the reason. Every refusal is
counted in the hub's ``stats`` as ``refused_<reason>`` and logged at most a few lines a second.

The reasons:

``connections``
    open connections of one peer (HTTPS; gRPC multiplexes streams over few connections and
    bounds streams per connection in grpc core instead)
``subscriptions``
    open subscriptions of one peer
``publishes``
    uploads of one peer in progress at once
``topics``
    distinct topics on the hub (a topic nobody uses any more is forgotten)
``groups``
    durable groups on one topic (a group outlives its consumer, by design)
``slow_request``
    a connection that sent no complete request within ``request_timeout`` (slow-loris)
``slow_upload``
    an upload that sent nothing for ``upload_idle_s``
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from foedus.core.errors import ConfigError, TransportError

log = logging.getLogger("foedus.hub")

REASONS = ("connections", "subscriptions", "publishes", "topics", "groups", "slow_request",
           "slow_upload")


class LimitExceeded(TransportError):
    """A peer asked for more than :class:`PeerLimits` allows; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class PeerLimits:
    """Bounds on what one peer may hold on a hub, and a few hub-wide ones.

    The defaults leave room for the largest jobs foedus runs on one hub (thousands of clients,
    each holding two subscriptions and one upload at a time, several per host when they share
    an address without client certificates) while an outsider's flood stops at a small
    fraction of the server's memory. With mutual TLS every participant is its own peer, and
    tighter per-peer limits are safe.
    """

    max_connections: int = 256  # per peer (HTTPS)
    max_subscriptions: int = 256  # per peer
    max_publishes: int = 64  # uploads in progress, per peer
    max_topics: int = 4096  # on the hub
    max_groups: int = 64  # durable groups per topic
    request_timeout: float = 30.0  # seconds for a new connection's first request (HTTPS)
    upload_idle_s: float = 60.0  # seconds an upload may send nothing

    @classmethod
    def from_mapping(cls, value: PeerLimits | Mapping[str, Any] | None) -> PeerLimits | None:
        """``limits:`` of a job file's hub transport: a mapping of the fields to change."""
        if value is None or isinstance(value, PeerLimits):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"hub limits: expected a mapping of {', '.join(cls.names())}, "
                              f"got {value!r:.60}")
        unknown = sorted(set(value) - set(cls.names()))
        if unknown:
            raise ConfigError(f"hub limits: got {unknown[0]!r:.40}; allowed: "
                              f"{', '.join(cls.names())}")
        return cls(**value)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"hub limits: {f.name} must be a positive number, got "
                                  f"{value!r}")


class PeerTable:
    """How much each peer holds right now, per kind; refuses what would exceed the limits."""

    def __init__(self, limits: PeerLimits, stats: Counter[str]) -> None:
        self.limits = limits
        self.stats = stats
        self._held: Counter[tuple[str, str]] = Counter()
        self._logged = 0.0
        self._quiet = 0

    def acquire(self, peer: str, kind: str) -> None:
        """Count one more ``kind`` (``connections``, ``subscriptions``, ``publishes``) for
        ``peer``; raises :class:`LimitExceeded` (counted) when it would exceed the limit."""
        bound = int(getattr(self.limits, f"max_{kind}"))
        if self._held[peer, kind] >= bound:
            self.refuse(kind, f"peer {peer!r} already holds {bound} {kind} (the limit)")
        self._held[peer, kind] += 1

    def release(self, peer: str, kind: str) -> None:
        key = (peer, kind)
        if self._held[key] <= 1:
            self._held.pop(key, None)
        else:
            self._held[key] -= 1

    def held(self, peer: str, kind: str) -> int:
        return self._held[peer, kind]

    def refuse(self, reason: str, detail: str) -> None:
        """Count a refusal under ``reason``, log it (rate-limited) and raise it."""
        self.stats[f"refused_{reason}"] += 1
        self.note(reason, detail)
        raise LimitExceeded(reason, detail)

    def note(self, reason: str, detail: str) -> None:
        """Log one line about a refusal, at most ten a second (a flood must not flood the log:
        the counters hold the totals)."""
        now = time.monotonic()
        if now - self._logged >= 0.1:
            suffix = f" ({self._quiet} more not logged)" if self._quiet else ""
            log.warning("hub: refused (%s): %.200s%s", reason, detail, suffix)
            self._logged, self._quiet = now, 0
        else:
            self._quiet += 1


def peer_of(identity: str | None, address: str | None) -> str:
    """The key a peer's holdings are counted under: its certificate name, else its IP."""
    if identity:
        return f"cn:{identity}"
    return f"ip:{address or 'unknown'}"
