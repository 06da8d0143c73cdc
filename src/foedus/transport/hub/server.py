"""The server side that the gRPC and HTTPS hub adapters share: a :class:`Hub` behind a protocol.

:class:`HubAdapter` holds the TLS-or-``insecure`` rule, the hub it serves and ``async with``;
each protocol module adds only its listener and handlers.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Self

from foedus.core.errors import ConfigError
from foedus.transport.hub.limits import PeerLimits
from foedus.transport.hub.store import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_TOPIC_BYTES,
    Authorizer,
    Hub,
)
from foedus.transport.tls import TLSConfig


class HubAdapter(abc.ABC):
    """A :class:`Hub` served over a protocol; start it in the server process.

    ``port=0`` picks a free port (read ``port`` after :meth:`start`). ``tls`` is the server's
    TLSConfig (cert, key, CA for client certificates, ``require_client_cert``); plaintext needs
    ``insecure=True`` explicitly. ``hub`` serves an existing hub, else a new one is made with
    ``max_payload``, ``max_topic_bytes`` and the ``authorize`` hook. ``linger``: how many
    seconds :meth:`stop` first waits for connected subscribers to leave by themselves (see
    :meth:`Hub.linger`); 0 for a hub stopped on purpose while clients stay (a restart).
    ``limits``: what one peer may hold (:class:`~foedus.transport.hub.limits.PeerLimits`; the
    defaults when None), for a new hub.
    """

    #: what the protocol without TLS is called in the error that asks for ``insecure=True``
    plaintext: ClassVar[str] = "plaintext"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: TLSConfig | None = None, *,
        hub: Hub | None = None, authorize: Authorizer | None = None, insecure: bool = False,
        max_payload: int = DEFAULT_MAX_PAYLOAD, max_topic_bytes: int = DEFAULT_MAX_TOPIC_BYTES,
        linger: float = 0.0, limits: PeerLimits | None = None,
    ) -> None:
        if tls is None and not insecure:
            raise ConfigError(f"{type(self).__name__} needs tls=TLSConfig(...) "
                              f"(or insecure=True for {self.plaintext})")
        self.host = host
        self.port = port
        if not linger >= 0:
            raise ConfigError(f"linger must be at least 0 seconds, got {linger!r}")
        self.tls = tls
        self.linger = float(linger)
        self.hub = hub or Hub(
            max_payload=max_payload, max_topic_bytes=max_topic_bytes, authorize=authorize,
            limits=limits,
        )

    @abc.abstractmethod
    async def start(self) -> Self:
        """Listen on ``host:port`` and serve the hub."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop serving, after waiting up to :attr:`linger` seconds for subscribers to leave
        (:meth:`Hub.linger`) and letting the remaining ones drain (:meth:`Hub.drain`)."""

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
