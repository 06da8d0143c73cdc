"""Which process hosts the hub, and the hubs this process hosts (``serve:`` in a job file).

gRPC and HTTPS have no broker: the server process *is* the broker. :class:`Hosting` reads the
``serve``/``serve_as``/``actor`` transport parameters and says whether a transport starts the hub
and whether it uses it in-process; :class:`HostedHubs` starts a hosted hub when the first
transport of the process needs it and stops it when the last one closes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from foedus.core.errors import ConfigError
from foedus.transport.hub.auth import require_sender_identity
from foedus.transport.hub.limits import PeerLimits
from foedus.transport.hub.store import Authorizer, Hub
from foedus.transport.tls import TLSConfig

#: how long a hosted hub waits, at the end of its process's job, for the other actors to leave
DEFAULT_LINGER_S = 30.0


class HostedServer(Protocol):
    """What :class:`HostedHubs` starts: a protocol adapter around a :class:`Hub`."""

    hub: Hub
    port: int  # the port it listens on (the one it bound, when asked for port 0)

    async def stop(self) -> None: ...


class HostedHubs:
    """Hubs hosted by this process for transports created with ``serve=...``, per address.

    A transport that may host the hub at an address registers a *starter* when it is created;
    every transport of the process that uses the address (hosting or not) is counted. The hub is
    started the first time any of them needs it and stopped when the last of them closes. So in a
    one-process job the clients, opened before the server, still find the server's hub, while in a
    client-only process nothing is registered and transports simply connect. One instance per
    protocol module.
    """

    def __init__(self) -> None:
        self._servers: dict[str, HostedServer] = {}
        self._starters: dict[str, Callable[[], Awaitable[HostedServer]]] = {}
        self._refs: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}

    def acquire(
        self, address: str, start: Callable[[], Awaitable[HostedServer]] | None = None
    ) -> None:
        """Count a transport that uses ``address``; ``start`` is given by one that may host."""
        self._refs[address] += 1
        if start is not None:
            self._starters.setdefault(address, start)

    def hosts(self, address: str) -> bool:
        """True when a transport of this process hosts (or will host) the hub at ``address``."""
        return address in self._starters

    async def ensure(self, address: str) -> HostedServer | None:
        """The hub this process hosts at ``address``, started now if needed; None if another
        process hosts it."""
        start = self._starters.get(address)
        if start is None:
            return None
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            if address not in self._servers:
                self._servers[address] = await start()
            return self._servers[address]

    async def release(self, address: str) -> None:
        """Uncount a transport; the last one out stops the hub."""
        self._refs[address] -= 1
        if self._refs[address] <= 0:
            del self._refs[address]
            self._starters.pop(address, None)
            self._locks.pop(address, None)
            server = self._servers.pop(address, None)
            if server is not None:
                await server.stop()


@dataclass(frozen=True)
class Hosting:
    """How a gRPC or HTTPS transport relates to the hub at its address.

    * no ``serve``: a plain client; the hub runs elsewhere.
    * ``serve`` alone: every transport of the process may host the hub (the first one used
      starts it) and all of them connect to it over the network - the single-process mode.
    * ``serve`` with ``serve_as: NAME`` and ``actor: "{actor}"``: only the transport opened for
      actor ``NAME`` hosts the hub, and it talks to its hub in-process; every other actor is a
      client. One job file then serves ``foedus server`` and ``foedus client`` alike: the runner
      fills ``{actor}`` with ``server`` or ``client-000``... per process.

    ``verify_sender`` (with ``sender_aliases``) makes the hosted hub refuse a publish whose
    message sender is not the publisher's certificate CN (:func:`require_sender_identity`).

    ``linger_s``: when the hosting process closes its transports (its actors are done), the
    hub waits up to this long for the other processes' actors to finish and unsubscribe before
    it closes. The leader ends first, but the job is not over for everyone: edges relay its
    "stop" to their clients through this hub. See :meth:`foedus.transport.hub.Hub.linger`.

    ``limits``: what one peer may hold on the hosted hub (:class:`PeerLimits`; the defaults
    when None).
    """

    serve: TLSConfig | None = None
    serve_as: str | None = None
    actor: str | None = None
    verify_sender: bool = False
    sender_aliases: Mapping[str, str] | None = None
    linger_s: float = DEFAULT_LINGER_S
    limits: PeerLimits | None = None

    @classmethod
    def from_params(
        cls, serve: TLSConfig | Mapping[str, Any] | None, serve_as: str | None,
        actor: str | None, verify_sender: bool, sender_aliases: Mapping[str, str] | None,
        linger_s: float = DEFAULT_LINGER_S,
        limits: PeerLimits | Mapping[str, Any] | None = None,
    ) -> Hosting:
        if isinstance(linger_s, bool) or not isinstance(linger_s, int | float) \
                or not linger_s >= 0:
            raise ConfigError(f"linger_s must be a number of seconds >= 0, got {linger_s!r}")
        tls = TLSConfig.from_mapping(serve)
        peer_limits = PeerLimits.from_mapping(limits)
        if tls is None and (serve_as is not None or verify_sender or sender_aliases
                            or peer_limits is not None):
            raise ConfigError(
                "serve_as, verify_sender, sender_aliases and limits configure a hosted hub: "
                "they need"
                " serve: {ca, cert, key, require_client_cert} (the hub's TLS settings)"
            )
        if serve_as is not None:
            if not isinstance(serve_as, str) or not serve_as:
                raise ConfigError(f"serve_as must be an actor name such as 'server', got "
                                  f"{serve_as!r}")
            if not isinstance(actor, str) or not actor or "{actor}" in actor:
                raise ConfigError(
                    "serve_as needs actor: \"{actor}\" in the transport params (the job runner "
                    "fills in each actor's id), or the actor's id when built by hand; "
                    f"got actor={actor!r}"
                )
        if verify_sender and tls is not None and not tls.require_client_cert:
            raise ConfigError("verify_sender needs serve.require_client_cert: true (identities "
                              "come from client certificates)")
        if sender_aliases is not None and not isinstance(sender_aliases, Mapping):
            raise ConfigError("sender_aliases must map certificate names to sender names")
        return cls(tls, serve_as, actor, bool(verify_sender),
                   dict(sender_aliases) if sender_aliases else None, float(linger_s),
                   peer_limits)

    @property
    def may_host(self) -> bool:
        """This transport starts the hub (when first needed) in its own process."""
        return self.serve is not None and (self.serve_as is None or self.actor == self.serve_as)

    @property
    def in_process(self) -> bool:
        """This transport *is* the hosting actor and uses the hub without a connection."""
        return self.serve_as is not None and self.may_host

    def authorizer(self) -> Authorizer | None:
        return require_sender_identity(self.sender_aliases) if self.verify_sender else None
