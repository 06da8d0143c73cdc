"""The pub/sub hub that the foedus server hosts for client-server protocols (gRPC, HTTPS).

Kafka and MQTT have a broker; gRPC and HTTPS do not, so the server process *is* the broker: it
runs a :class:`Hub` behind a protocol adapter (:class:`foedus.transport.grpc.GrpcHub`,
:class:`foedus.transport.https.HttpsHub`) and every actor, the server's own pods included,
connects as a client. What both protocols share lives here once, one job per module, so they
behave identically and each protocol module holds only its wire format:

* :mod:`~foedus.transport.hub.store`: the broker's state (topic logs, retained values, durable
  group cursors, the memory bound) and what a publish is (:class:`Publication`).
* :mod:`~foedus.transport.hub.limits`: what one peer may hold at once (:class:`PeerLimits`),
  counted and refused early (:class:`LimitExceeded`), so an outsider cannot crowd out the job.
* :mod:`~foedus.transport.hub.auth`: authorization hooks such as
  :func:`require_sender_identity` (mutual TLS identity must match the message's sender).
* :mod:`~foedus.transport.hub.server`: :class:`HubAdapter`, the server side of a protocol.
* :mod:`~foedus.transport.hub.hosting`: which process hosts the hub (:class:`Hosting`) and the
  hubs this process hosts (:class:`HostedHubs`).
* :mod:`~foedus.transport.hub.client`: :class:`HubClient`, the client side of a protocol, with
  :class:`HubSubscription` (in-process) and :class:`ReconnectingSubscription` (over the network).

Every name is re-exported here, so ``from foedus.transport.hub import X`` keeps working.
"""

from foedus.transport.hub.auth import require_sender_identity
from foedus.transport.hub.client import (
    HubClient,
    HubServer,
    HubSubscription,
    ReconnectingSubscription,
    check_positive,
)
from foedus.transport.hub.hosting import HostedHubs, HostedServer, Hosting
from foedus.transport.hub.limits import LimitExceeded, PeerLimits
from foedus.transport.hub.server import HubAdapter
from foedus.transport.hub.store import (
    CHUNK_SIZE,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_TOPIC_BYTES,
    Authorizer,
    Cursor,
    Hub,
    PayloadTooLarge,
    Publication,
    Refused,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_TOPIC_BYTES",
    "Authorizer",
    "Cursor",
    "HostedHubs",
    "HostedServer",
    "Hosting",
    "Hub",
    "HubAdapter",
    "HubClient",
    "HubServer",
    "HubSubscription",
    "LimitExceeded",
    "PayloadTooLarge",
    "PeerLimits",
    "Publication",
    "ReconnectingSubscription",
    "Refused",
    "check_positive",
    "require_sender_identity",
]
