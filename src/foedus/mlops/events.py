"""What the MLOps pods read: server round events and the byte counters of links.

The server emits one ``Kind.METRICS`` message per round on its ``events`` wire, with the round's
:class:`RoundRecord` as ``meta``. Integrations turn it back into a record here, so they work the
same whether they sit on the wire (a pod) or are called as a round listener.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from foedus.core.errors import ConfigError
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod
from foedus.roles.server import RoundRecord
from foedus.transport.link import Downlink, Uplink

_RECORD_FIELDS = frozenset(f.name for f in fields(RoundRecord))


def record_from_event(msg: Message) -> RoundRecord:
    """Rebuild the :class:`RoundRecord` a server sent on its ``events`` wire."""
    if msg.kind is not Kind.METRICS:
        raise ConfigError(f"expected a metrics event from the server, got {msg.kind.value}")
    raw: dict[str, Any] = {k: v for k, v in msg.meta.items() if k in _RECORD_FIELDS}
    if "round" not in raw:
        raise ConfigError("metrics event has no round record in its meta")
    raw["rejected"] = dict(raw.get("rejected", {}))
    raw["failed_clients"] = list(raw.get("failed_clients", []))
    raw["metrics"] = dict(raw.get("metrics", {}))
    raw["client_metrics"] = dict(raw.get("client_metrics", {}))
    return RoundRecord(**raw)


@dataclass(frozen=True)
class WireBytes:
    """Bytes and messages that crossed the network through a set of links, so far."""

    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0


def links_of(pods: Iterable[Pod]) -> list[Pod]:
    """The uplinks and downlinks among ``pods`` (e.g. ``graph.pods.values()``)."""
    return [p for p in pods if isinstance(p, Uplink | Downlink)]


def wire_bytes(links: Iterable[Pod]) -> WireBytes:
    """Sum the counters of the given links; other pods are ignored."""
    b_in = b_out = m_in = m_out = 0
    for link in links:
        if isinstance(link, Downlink):
            b_in += link.bytes_in
            m_in += link.messages_in
        elif isinstance(link, Uplink):
            b_out += link.bytes_out
            m_out += link.messages_out
    return WireBytes(b_in, b_out, m_in, m_out)


def graph_links(pod: Pod) -> list[Pod]:
    """The links of the graph ``pod`` runs in (empty when it is not running).

    MLOps pods live in the same graph as the server (or client) they watch, so they can read the
    byte counters of that actor's links without anyone passing them in.
    """
    runtime = pod._runtime
    return [] if runtime is None else links_of(runtime.graph.pods.values())
