"""Authorization hooks a hub runs on every publish (see :attr:`Hub.authorize`)."""

from __future__ import annotations

from collections.abc import Mapping

from foedus.core.errors import CodecError
from foedus.transport.hub.store import Authorizer, Publication, Refused


def require_sender_identity(aliases: Mapping[str, str] | None = None) -> Authorizer:
    """An ``authorize`` hook: the message's ``sender`` must be the certificate's identity.

    The payload is decoded with the foedus codec (bytes that do not decode are refused too), so a
    client holding ``client-003``'s certificate cannot publish an update signed ``client-007``.
    ``aliases`` maps a certificate name to the sender name it may use, e.g.
    ``{"foedus server": "server"}`` for the server pod's own connection.
    """
    from foedus.codec import decode

    names = dict(aliases or {})

    def authorize(pub: Publication) -> None:
        if pub.identity is None:
            raise Refused("no client certificate: this hub requires mutual TLS identities")
        try:
            sender = decode(pub.payload).header.sender
        except CodecError as exc:
            raise Refused(f"payload is not a foedus message: {exc}") from exc
        allowed = names.get(pub.identity, pub.identity)
        if sender != allowed:
            raise Refused(
                f"sender {sender!r} does not match the certificate identity {pub.identity!r}"
            )

    return authorize
