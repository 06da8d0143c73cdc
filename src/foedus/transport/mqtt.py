"""The MQTT transport (``transport: {type: mqtt}``), on paho-mqtt 2.x speaking MQTT 5.

How the Transport contract maps onto MQTT:

* **Delivery**: every MQTT message is published and subscribed at QoS 1 (at least once);
  ``publish`` returns once the broker has acknowledged every piece (PUBACK).
* **Large payloads**: a broker caps the size of one MQTT packet (mosquitto's ``max_packet_size``,
  announced in CONNACK). A payload is cut into chunks that fit, each prefixed with the chunk
  header of :mod:`foedus.transport.chunks` (shared with Kafka: payload id, index, count, offset,
  total length, and on the last chunk the SHA-256 of the whole payload). The subscriber
  reassembles them with that module's :class:`~foedus.transport.chunks.Reassembler`: a partial
  payload holds only the chunks that arrived (a header announcing 1 GiB costs its sender what it
  sent, not us a GiB), partial payloads are bounded in bytes (``max_buffer``; ``max_payload``
  per sender identity) and in number (``max_partials``), the oldest evicted beyond that;
  partials whose sender went silent are dropped after ``partial_timeout`` seconds. The bytes held
  in partial and not-yet-consumed payloads are bounded by ``max_buffer`` (beyond it,
  acknowledgements are withheld so the broker stops sending: backpressure).
* **Hostile input**: a chunk or payload that cannot be used is counted in the subscription's
  ``rejected`` under a reason, logged in one line, acknowledged (so the broker does not
  redeliver it) and skipped; an unexpected error while handling one message is counted as
  ``reader-error`` the same way, never ends the subscription.
* **retain=True**: a payload's chunks go to retained MQTT topics ``<prefix>/r/<topic>/<i>``, so a
  subscriber arriving later receives the current value first (the current global model). Ordinary
  payloads go to ``<prefix>/d/<topic>``. A subscription listens to both.
* **group=...**: the subscription gets its own MQTT session with a client id derived from
  (prefix, topic, group) *and a secret*, ``clean_start=False`` and a session expiry, so the broker
  queues what is published while the group is away and delivers it when the group reconnects.
  Whoever connects with a session's client id takes that session (and its queued payloads)
  over, so the id must not be computable from public names: it is an HMAC of those names under
  ``session_secret``, else under a random secret kept in ``session_dir`` (created once, mode
  0600), else under this side's TLS private key; only without any of them is it derived from
  public names alone (with a warning). A payload is
  acknowledged to the broker only once the iterator advances past it (or the subscription is
  closed), so payloads received but not consumed before a crash are delivered again. One live
  member per group: a second connection with the same group takes the session over.
* **Threads**: paho runs its network loop in a thread; every callback is handed to the asyncio
  loop with ``loop.call_soon_threadsafe`` and all state is touched only on the loop.
* **TLS / mutual TLS**: ``tls={ca, cert, key}`` (:class:`foedus.transport.tls.TLSConfig`); the
  broker verifies client certificates when configured to (mosquitto ``require_certificate``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import uuid
from collections import deque
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from foedus.core.errors import ConfigError, TransportClosed, TransportError, require
from foedus.transport.base import Subscription, Transport, check_flags, transports
from foedus.transport.chunks import HEADER, ChunkHeader, Partial, Reassembler, framed, split
from foedus.transport.tls import TLSConfig

#: the extra this module's plugins need (`pip install foedus[mqtt]`), for `foedus plugins`
REQUIRES_EXTRA = "mqtt"

log = logging.getLogger(__name__)

MQTT_MAX_PACKET = 268_435_455  # the protocol's limit (remaining length of 4 bytes)
#: mosquitto.conf settings under which a broker killed at any moment (SIGKILL, power loss)
#: comes back with every message it acknowledged: persistence on, and the persistence file
#: written after every change instead of every 30 minutes (the default ``autosave_interval``
#: is 1800 s, and a killed broker lost a round's queued updates). The shipped
#: ``deploy/mosquitto/mosquitto.conf`` carries them; see docs/transports-mqtt.md for the cost.
DURABLE_BROKER_SETTINGS = (
    "persistence true",
    "autosave_on_changes true",
    "autosave_interval 1",
)
#: the MQTT 5 user property naming a payload's publisher (the ``key`` it was published with)
SENDER_PROPERTY = "foedus-sender"
#: a sender name is cut to this many bytes in the property
MAX_SENDER_BYTES = 256

def _property_name(sender: str) -> str:
    """A sender name as the :data:`SENDER_PROPERTY` carries it: at most
    :data:`MAX_SENDER_BYTES` bytes of UTF-8."""
    return sender.encode()[:MAX_SENDER_BYTES].decode("utf-8", "ignore")


def certificate_identity(cert_path: Any) -> str:
    """The CN of this side's own certificate: the name the broker knows it by."""
    x509 = require("cryptography.x509", "tls")
    from cryptography.x509.oid import NameOID

    try:
        with open(cert_path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {str(cert_path)!r}: {exc}") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ConfigError(f"certificate {str(cert_path)!r} has no common name (CN)")
    cn = str(names[0].value)
    if not cn or any(c in cn for c in "+#/\x00"):
        raise ConfigError(f"certificate CN {cn!r} cannot be an MQTT topic level")
    return cn


def _check_topic(topic: str) -> str:
    if not isinstance(topic, str) or not topic:
        raise TransportError(f"topic must be a non-empty string, got {topic!r}")
    if any(c in topic for c in "+#\x00"):
        raise TransportError(f"topic {topic!r} contains an MQTT wildcard or NUL ('+', '#')")
    return topic


# --------------------------------------------------------------------------------------------
# one paho connection, bridged into asyncio


class _Connection:
    """A paho client whose callbacks run on the asyncio loop.

    ``generation`` counts CONNACKs: an acknowledgement is only sent on the connection generation
    that received the message (packet ids are per connection; after a reconnect the broker
    redelivers unacknowledged messages with new ones).
    """

    def __init__(
        self, owner: MqttTransport, client_id: str, *, persistent: bool, session_expiry: int,
        on_message: Any = None, subscriptions: list[tuple[str, int]] | None = None,
    ) -> None:
        self.owner = owner
        self.client_id = client_id
        self.persistent = persistent
        self.session_expiry = session_expiry
        self.loop = asyncio.get_running_loop()
        self.generation = 0
        self.max_packet = MQTT_MAX_PACKET
        self._on_message = on_message
        self._subscriptions = subscriptions or []  # (filter, retain handling)
        self._connack: asyncio.Future[None] | None = None
        self._pending_pub: dict[int, asyncio.Future[None]] = {}
        self._pending_sub: dict[int, asyncio.Future[None]] = {}
        self.closed = False
        self.client = self._make_client()

    def _make_client(self) -> Any:
        mqtt = require("paho.mqtt.client", "mqtt")
        o = self.owner
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
            protocol=mqtt.MQTTv5, manual_ack=self._on_message is not None,
        )
        if o.tls is not None:
            client.tls_set_context(o.tls.client_context())
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        client.reconnect_delay_set(min_delay=1, max_delay=o.reconnect_max_delay)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(o.publish_window)
        call = self.loop.call_soon_threadsafe

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            if not rc.is_failure:
                self.generation += 1  # in paho's thread, before any message of this connection
            call(self._connected, flags.session_present, rc, props)

        client.on_connect = on_connect
        client.on_connect_fail = lambda c, u: call(self._failed, "connection failed")
        client.on_disconnect = lambda c, u, flags, rc, props: call(self._disconnected, rc)
        client.on_publish = lambda c, u, mid, rc, props: call(self._published, mid, rc)
        client.on_subscribe = lambda c, u, mid, rcs, props: call(self._subscribed, mid, rcs)
        if self._on_message is not None:
            handler = self._on_message
            # paho's thread reads the generation the message arrived on
            client.on_message = lambda c, u, msg: call(handler, self.generation, msg)
        return client

    async def open(self) -> None:
        """Connect and wait for CONNACK (and SUBACKs); raise TransportError on refusal."""
        props_mod = require("paho.mqtt.properties", "mqtt")
        packettypes = require("paho.mqtt.packettypes", "mqtt")
        props = props_mod.Properties(packettypes.PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        if self._on_message is not None:
            props.ReceiveMaximum = self.owner.receive_window
        o = self.owner
        self._connack = self.loop.create_future()
        where = f"MQTT broker {o.host}:{o.port}" + (" (TLS)" if o.tls else "")
        try:
            await asyncio.wait_for(asyncio.to_thread(
                self.client.connect, o.host, o.port, o.keepalive,
                # a group resumes its session; other subscriptions have a fresh random client id,
                # so clean_start=False only matters on a reconnect (then they resume too); mosquitto
                # persists such sessions across its restarts, unlike clean_start=True ones
                clean_start=not self.session_expiry,
                properties=props,
            ), o.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"cannot connect to {where}: {exc or type(exc).__name__}") from exc
        self.client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), o.connect_timeout)
        except BaseException as exc:
            await self._stop()
            if isinstance(exc, TimeoutError):
                raise TransportError(
                    f"{where} did not accept the connection within {o.connect_timeout}s"
                    " (TLS refused, wrong port, or broker overloaded)"
                ) from exc
            if isinstance(exc, TransportError):
                raise TransportError(f"{where} refused the connection: {exc}") from exc
            raise

    def _connected(self, session_present: bool, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._fail_connack(TransportError(f"CONNACK {rc}"))
            return
        size = getattr(props, "MaximumPacketSize", None)
        if size:
            self.max_packet = int(size)
        first = self._connack is not None and not self._connack.done()
        log.debug("CONNACK %s session_present=%s first=%s", self.client_id, session_present, first)
        if self._subscriptions and (first or not session_present):
            # first connect, or the broker lost our session (restart without persistence, or a
            # clean session): (re)establish the subscriptions
            self._resubscribe()
        elif first:
            self._connack_ok()
        elif self._subscriptions:
            log.info("MQTT session %s resumed after reconnect", self.client_id)

    def _resubscribe(self) -> None:
        options_mod = require("paho.mqtt.subscribeoptions", "mqtt")
        subs = [(f, options_mod.SubscribeOptions(qos=1, retainHandling=rh))
                for f, rh in self._subscriptions]
        if not subs:
            self._connack_ok()
            return
        rc, mid = self.client.subscribe(subs)
        if rc != 0 or mid is None:
            self._fail_connack(TransportError(f"SUBSCRIBE could not be sent (rc {rc})"))
            return
        fut = self.loop.create_future()
        self._pending_sub[mid] = fut
        fut.add_done_callback(lambda f: self._connack_ok() if not f.exception()
                              else self._fail_connack(f.exception()))

    def _connack_ok(self) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(None)

    def _fail_connack(self, exc: BaseException | None) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(exc or TransportError("connection failed"))

    def _failed(self, why: str) -> None:
        self._fail_connack(TransportError(why))

    def _disconnected(self, rc: Any) -> None:
        if not self.closed:
            self._fail_connack(TransportError(
                f"the broker closed the connection before accepting it ({rc}); on a TLS"
                " listener this means a missing or untrusted client certificate"
            ))
            log.info("MQTT connection %s lost (%s); paho reconnects", self.client_id, rc)

    def _published(self, mid: int, rc: Any) -> None:
        fut = self._pending_pub.pop(mid, None)
        if fut is None or fut.done():
            return
        if rc.is_failure:
            fut.set_exception(TransportError(f"broker refused a publish: {rc}"))
        else:
            fut.set_result(None)

    def _subscribed(self, mid: int, rcs: list[Any]) -> None:
        fut = self._pending_sub.pop(mid, None)
        if fut is None or fut.done():
            return
        bad = [str(rc) for rc in rcs if rc.is_failure]
        if bad:
            fut.set_exception(TransportError(f"broker refused the subscription: {bad}"))
        else:
            fut.set_result(None)

    def publish(self, topic: str, payload: bytes, retain: bool,
                properties: Any = None) -> asyncio.Future[None]:
        """Queue one MQTT message; the future resolves on PUBACK. Called on the loop, so the
        PUBACK (forwarded with call_soon_threadsafe) cannot be handled before registration."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        fut: asyncio.Future[None] = self.loop.create_future()
        if info.rc not in (0, 4):  # 4 = not connected: paho queues and sends on reconnect
            fut.set_exception(TransportError(f"publish to {topic!r} failed: rc {info.rc}"))
        else:
            self._pending_pub[info.mid] = fut
        return fut

    def ack(self, generation: int, mid: int) -> None:
        """Acknowledge a QoS 1 message. A QoS 0 message (packet id 0: foedus never sends one,
        an outsider may) is not acknowledged: a PUBACK for packet id 0 is a protocol error
        for which the broker drops the connection, so each such message used to knock the
        reader off the broker."""
        if mid and generation == self.generation and not self.closed:
            self.client.ack(mid, 1)

    async def _stop(self) -> None:
        self.closed = True
        await asyncio.to_thread(self.client.loop_stop)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        props = None
        if not self.persistent and self.session_expiry:
            # a clean goodbye ends a non-group session at once instead of after its expiry
            props_mod = require("paho.mqtt.properties", "mqtt")
            packettypes = require("paho.mqtt.packettypes", "mqtt")
            props = props_mod.Properties(packettypes.PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        await asyncio.to_thread(self.client.loop_stop)
        for fut in [*self._pending_pub.values(), *self._pending_sub.values()]:
            if not fut.done():
                fut.set_exception(TransportClosed("the MQTT connection was closed"))


# --------------------------------------------------------------------------------------------
# reassembly


class _MqttSubscription(Subscription):
    """One MQTT connection subscribed to a topic's live and retained filters."""

    def __init__(self, owner: MqttTransport, topic: str, group: str | None) -> None:
        self.owner = owner
        self.topic = topic
        self.group = group
        # complete payloads (payload, ack of the final chunk, publisher identity); None: the end
        self._queue: deque[tuple[bytes, tuple[int, int], str] | None] = deque()
        self._queued = 0  # bytes in the queue
        self._waiter: asyncio.Future[None] | None = None
        self._handed: tuple[int, int] | None = None  # ack of the payload handed out last
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        self.rejected: dict[str, int] = {}
        #: the publishers admitted; None: everyone (see :meth:`MqttTransport.admit_senders`)
        self.senders: frozenset[str] | None = owner.admitted.get(topic)
        #: partial payloads; a partial's tag is the list of acknowledgements withheld for it
        self.reassembly = Reassembler(
            max_payload=owner.max_payload, budget=owner.max_buffer,
            sender_budget=owner.max_payload, max_partials=owner.max_partials,
            remember_ids=1024, rejected=self.rejected, on_drop=self._release,
            what=f"MQTT topic {topic!r}",
        )
        p = owner.topic_prefix
        rh = 1 if group else 0  # a resumed group session does not replay retained values
        if owner.verify_sender:  # only identity topics, which the broker's ACL protects
            filters = [(f"{p}/d/{topic}/from/+", rh), (f"{p}/r/{topic}/from/+/+", rh)]
        else:
            filters = [(f"{p}/d/{topic}", rh), (f"{p}/r/{topic}/+", rh)]
        if group is not None:
            client_id = owner.session_client_id(topic, group)
        else:
            client_id = f"foedus-s-{uuid.uuid4().hex[:20]}"
        self.conn = _Connection(
            owner, client_id, persistent=group is not None,
            session_expiry=owner.session_expiry if group is not None else owner.resume_window,
            on_message=self._on_message, subscriptions=filters,
        )

    @property
    def _buffered(self) -> int:
        """Bytes held in partial and queued payloads (what ``max_buffer`` bounds)."""
        return self.reassembly.held + self._queued

    # -- receiving (on the loop) --------------------------------------------------------------

    def _reject(self, reason: str, detail: str, ack: tuple[int, int]) -> None:
        """Count, log (at most ten lines a second, like the reassembler's refusals: a flood of
        hostile messages must not become a flood of log lines) and acknowledge a refusal."""
        self.reassembly.refuse(reason, f"a payload: {detail}")
        self.conn.ack(*ack)

    def _release(self, part: Partial, reason: str) -> None:
        """A partial payload was dropped: acknowledge what was withheld for it."""
        held: list[tuple[int, int]] = part.tag
        for ack in held:
            self.conn.ack(*ack)
        held.clear()

    def _on_message(self, generation: int, msg: Any) -> None:
        ack = (generation, msg.mid)
        if self._closed:
            return  # not acknowledged: a grouped session gets it again next time
        try:
            self._take(ack, msg)
        except Exception as exc:  # whatever one message does, the reader goes on
            self._reject("reader-error", f"{type(exc).__name__}: {exc}", ack)

    def _claimed_sender(self, msg: Any) -> str:
        """Who published ``msg``: the identity topic's name with ``verify_sender``, else the
        :data:`SENDER_PROPERTY` user property ("" without one)."""
        if self.owner.verify_sender:
            who = self._publisher_identity(msg.topic)
            return self.owner.sender_aliases.get(who, who)
        for name, value in getattr(msg.properties, "UserProperty", None) or ():
            if name == SENDER_PROPERTY and isinstance(value, str):
                return value
        return ""

    def _take(self, ack: tuple[int, int], msg: Any) -> None:
        data: bytes = msg.payload
        if not data:
            self.conn.ack(*ack)  # an empty retained message only clears a stale chunk
            return
        if self.senders is not None:
            sender = self._claimed_sender(msg)
            if sender not in self.senders:
                self.reassembly.refuse("unknown_sender", f"a chunk from {sender[:64]!r}, not "
                                                         "a participant")
                self.conn.ack(*ack)
                return
        if len(data) < HEADER.size:
            self._reject("malformed", f"{len(data)} bytes is shorter than the chunk header", ack)
            return
        try:
            h = ChunkHeader.unpack(data[:HEADER.size], len(data) - HEADER.size)
        except ValueError as exc:
            self._reject("malformed", str(exc), ack)
            return
        who = self._publisher_identity(msg.topic)
        withheld: list[tuple[int, int]] = []
        outcome = self.reassembly.add_now(who, h, data[HEADER.size:], withheld)
        part = outcome.partial
        if outcome.status == "pending" and part is not None:
            self._schedule_sweep()
            if self._buffered > self.owner.max_buffer:
                part.tag.append(ack)  # backpressure: the broker stops at the receive window
                self._relieve()
            else:
                self.conn.ack(*ack)
            return
        if outcome.status == "complete" and part is not None and outcome.payload is not None:
            self._release(part, "complete")
            self._queue.append((outcome.payload, ack, who))
            self._queued += len(outcome.payload)
            self._wake()
            return
        self.conn.ack(*ack)  # a duplicate, or refused (counted by the reassembler)

    def _publisher_identity(self, mqtt_topic: str) -> str:
        """With ``verify_sender`` the level after ``from`` names the publisher; the broker's
        ACL (``pattern write <prefix>/d/+/from/%u``) guarantees it is the certificate's CN."""
        if not self.owner.verify_sender:
            return ""
        levels = mqtt_topic[len(self.owner.topic_prefix) + 1:].split("/")
        # d/<topic>/from/<id>  or  r/<topic>/from/<id>/<index>
        return levels[3] if len(levels) >= 4 and levels[2] == "from" else ""

    def _relieve(self) -> None:
        """Over budget and nothing to consume: drop the oldest partial rather than deadlock."""
        if self._queue or not len(self.reassembly):
            return
        self.reassembly.drop(self.reassembly.partials()[0], "buffer-full",
                             f"max_buffer={self.owner.max_buffer} reached with nothing consumable")

    def _schedule_sweep(self) -> None:
        if self._sweeper is None and not self._closed:
            delay = max(0.05, self.owner.partial_timeout / 4)
            self._sweeper = self.conn.loop.call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """Drop partial payloads whose sender has been silent for ``partial_timeout``."""
        self._sweeper = None
        self.reassembly.sweep(self.owner.partial_timeout)
        if len(self.reassembly):
            self._schedule_sweep()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the Subscription API -----------------------------------------------------------------

    async def __anext__(self) -> bytes:
        while True:
            if self._handed is not None:
                self.conn.ack(*self._handed)
                self._handed = None
            while not self._queue:
                if self._closed:
                    raise StopAsyncIteration
                self._waiter = self.conn.loop.create_future()
                await self._waiter
            item = self._queue.popleft()
            if item is None:
                self._queue.append(None)  # stay ended
                raise StopAsyncIteration
            payload, ack, who = item
            self._queued -= len(payload)
            if self.owner.verify_sender:
                problem = self.owner.sender_problem(payload, who)
                if problem is not None:
                    self._reject("impersonation", problem, ack)
                    continue
            self._handed = ack
            return payload

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._handed is not None:
            self.conn.ack(*self._handed)  # consumed; what is still queued is redelivered
            self._handed = None
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._queue.clear()
        self._queued = 0
        self.reassembly.clear()
        self._queue.append(None)
        self._wake()
        await self.conn.close()
        self.owner._subs.discard(self)


# --------------------------------------------------------------------------------------------
# the transport


@transports.register("mqtt")
class MqttTransport(Transport):
    """Topics on an MQTT 5 broker. See the module docstring for the mapping.

    ``chunk_size`` caps the data bytes per MQTT message; the broker's announced maximum packet
    size lowers it further. Set it below mosquitto's ``message_size_limit`` if that is used
    (that limit is not announced to clients).
    """

    name = "mqtt"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        tls: TLSConfig | Mapping[str, Any] | None = None,
        username: str | None = None,
        password: str | None = None,
        topic_prefix: str = "foedus",
        chunk_size: int = 4 * 1024 * 1024,
        max_payload: int = 1024**3,
        max_buffer: int = 2 * 1024**3,
        max_partials: int = 1024,
        partial_timeout: float = 120.0,
        session_expiry: int = 3600,
        resume_window: int = 300,
        keepalive: int = 60,
        connect_timeout: float = 10.0,
        publish_timeout: float = 300.0,
        publish_window: int = 16,
        receive_window: int = 32,
        reconnect_max_delay: int = 10,
        verify_sender: bool = False,
        sender_aliases: Mapping[str, str] | None = None,
        session_secret: str | None = None,
        session_dir: str | None = None,
    ) -> None:
        require("paho.mqtt.client", "mqtt")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"port must be 1..65535, got {port!r}")
        if not topic_prefix or any(c in topic_prefix for c in "+#\x00"):
            raise ConfigError(f"topic_prefix {topic_prefix!r} must be non-empty, without + or #")
        for label, value, low in [
            ("chunk_size", chunk_size, 1024), ("max_payload", max_payload, 1),
            ("max_partials", max_partials, 1), ("session_expiry", session_expiry, 1),
            ("resume_window", resume_window, 0),
            ("keepalive", keepalive, 5),
            ("publish_window", publish_window, 1), ("receive_window", receive_window, 1),
            ("reconnect_max_delay", reconnect_max_delay, 1),
        ]:
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{label} must be an integer >= {low}, got {value!r}")
        if max_buffer < max_payload:
            raise ConfigError(
                f"max_buffer ({max_buffer}) must be at least max_payload ({max_payload})"
            )
        for label, fvalue in [("partial_timeout", partial_timeout),
                              ("connect_timeout", connect_timeout),
                              ("publish_timeout", publish_timeout)]:
            if fvalue <= 0:
                raise ConfigError(f"{label} must be positive, got {fvalue!r}")
        self.host = host
        self.port = port
        self.tls = TLSConfig.from_mapping(tls)
        if self.tls is not None:
            self.tls.check_files()  # a missing certificate is a config error, now
        self.username = username
        self.password = password
        self.topic_prefix = topic_prefix.rstrip("/")
        self.chunk_size = chunk_size
        self.max_payload = max_payload
        self.max_buffer = max_buffer
        self.max_partials = max_partials
        self.partial_timeout = partial_timeout
        self.session_expiry = session_expiry
        self.resume_window = resume_window
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.publish_window = publish_window
        self.receive_window = receive_window
        self.reconnect_max_delay = reconnect_max_delay
        check_flags(verify_sender=verify_sender)  # bool("no") would be True
        self.verify_sender = verify_sender
        self.sender_aliases = dict(sender_aliases or {})
        self.identity: str | None = None
        if self.verify_sender:
            if self.tls is None or self.tls.cert is None:
                raise ConfigError(
                    "verify_sender needs mutual TLS: tls={ca, cert, key} with this participant's"
                    " certificate (the broker maps it to the username its ACL checks)"
                )
            self.identity = certificate_identity(self.tls.cert)
        if session_secret is not None and (not isinstance(session_secret, str)
                                           or len(session_secret) < 16):
            raise ConfigError("session_secret must be a string of at least 16 characters")
        if session_dir is not None and (not isinstance(session_dir, str) or not session_dir):
            raise ConfigError(f"session_dir must be a directory path, got {session_dir!r}")
        self._session_key = self._session_key_of(session_secret, session_dir)
        self._pub: _Connection | None = None
        self._pub_lock: asyncio.Lock | None = None
        self._subs: set[_MqttSubscription] = set()
        self._retained_counts: dict[str, int] = {}
        self._closed = False
        #: per topic, the publishers its new subscriptions admit (see :meth:`admit_senders`)
        self.admitted: dict[str, frozenset[str]] = {}

    def admit_senders(self, topic: str, senders: Collection[str] | None) -> bool:
        """Subscriptions to ``topic`` made from now on drop chunks whose publisher is not one
        of ``senders`` before anything else is done with them (no header parsed, nothing
        reassembled or decoded; acknowledged so the broker does not send them again), counted
        as ``unknown_sender`` and logged at most ten lines a second. The publisher is the
        certificate identity of the topic with ``verify_sender`` (mapped through
        ``sender_aliases``; the broker's ACL vouches for it), else the publisher's claim in the
        :data:`SENDER_PROPERTY` user property: that stops a non-participant's flood cheaply,
        not a forger using a participant's name."""
        if senders is None:
            self.admitted.pop(topic, None)
        else:  # as the property carries them (a name is cut to MAX_SENDER_BYTES)
            self.admitted[topic] = frozenset(_property_name(name) for name in senders)
        return True

    #: file in ``session_dir`` holding the random secret behind durable session ids
    SESSION_SECRET_FILE = "mqtt-session.secret"

    def _session_key_of(self, secret: str | None, directory: str | None) -> bytes | None:
        """The key durable session ids are derived under (see the module docstring)."""
        if secret is not None:
            return hashlib.sha256(b"foedus-mqtt-session|" + secret.encode()).digest()
        if directory is not None:
            path = Path(directory) / self.SESSION_SECRET_FILE
            try:
                Path(directory).mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    stored = path.read_text().strip()
                else:
                    stored = secrets.token_hex(32)
                    with os.fdopen(fd, "w") as fh:
                        fh.write(stored + "\n")
            except OSError as exc:
                raise ConfigError(f"session_dir: cannot keep a secret in {str(path)!r}: {exc}"
                                  ) from exc
            if len(stored) < 32:
                raise ConfigError(f"session_dir: {str(path)!r} does not hold a session secret")
            return hashlib.sha256(b"foedus-mqtt-session|" + stored.encode()).digest()
        if self.tls is not None and self.tls.key is not None:
            try:
                material = Path(self.tls.key).read_bytes()
            except OSError as exc:
                raise ConfigError(f"tls.key: cannot read {str(self.tls.key)!r}: {exc}") from exc
            return hashlib.sha256(b"foedus-mqtt-session-from-key|" + material).digest()
        return None

    def session_client_id(self, topic: str, group: str) -> str:
        """The MQTT client id of ``group``'s durable session on ``topic``: the same on every
        restart of this actor, and unguessable for anyone without its secret."""
        name = f"{self.topic_prefix}|{topic}|{group}".encode()
        if self._session_key is None:
            log.warning("MQTT group %r on %r: its session id is derived from public names, so "
                        "anyone on the broker can take the session over; set session_secret "
                        "or session_dir (or use a TLS client key)", group, topic)
            return "foedus-g-" + hashlib.sha256(name).hexdigest()[:24]
        return "foedus-k-" + hmac.new(self._session_key, name, hashlib.sha256).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"MqttTransport({self.host}:{self.port}, tls={self.tls is not None})"

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed("the MQTT transport is closed")

    def _check_topic(self, topic: str) -> None:
        _check_topic(topic)
        if self.verify_sender and "/" in topic:
            raise TransportError(
                f"topic {topic!r}: with verify_sender a topic is one level (no '/')"
            )

    def sender_problem(self, payload: bytes, identity: str) -> str | None:
        """Why a payload published under ``identity`` may not be accepted, or None.

        The payload must decode as a foedus message whose sender is the identity (or the name
        ``sender_aliases`` allows that certificate to use). Total: whatever the payload, the
        answer is a reason or None, never an exception (a reader must survive any payload)."""
        from foedus.codec import decode

        if not identity:
            return "published outside the identity topics"
        try:
            sender = decode(payload, max_size=max(len(payload), 1)).header.sender
        except Exception as exc:  # CodecError, or a decoder bug: either way, not accepted
            return f"payload from {identity!r} is not a foedus message: {exc}"
        allowed = self.sender_aliases.get(identity, identity)
        if sender != allowed:
            return f"sender {sender!r} does not match the certificate identity {identity!r}"
        return None

    async def _publisher(self) -> _Connection:
        if self._pub_lock is None:
            self._pub_lock = asyncio.Lock()
        async with self._pub_lock:
            self._check_open()
            if self._pub is None:
                conn = _Connection(self, f"foedus-p-{uuid.uuid4().hex[:20]}", persistent=False,
                                   session_expiry=0)
                await conn.open()
                self._pub = conn
            return self._pub

    def data_bytes_per_chunk(self, conn: _Connection, mqtt_topic: str) -> int:
        """Chunk data size that keeps each PUBLISH packet under the broker's maximum: fixed
        header (5) + topic (2 + len) + packet id (2) + properties (1) + our header + margin."""
        overhead = 5 + 2 + len(mqtt_topic.encode()) + 2 + 1 + HEADER.size + 64
        size = min(self.chunk_size, conn.max_packet - overhead)
        if size < 1024:
            raise TransportError(
                f"the broker's maximum packet size {conn.max_packet} is too small to carry chunks"
            )
        return size

    async def publish(
        self, topic: str, payload: bytes, *, key: str | None = None, retain: bool = False
    ) -> None:
        self._check_open()
        self._check_topic(topic)
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TransportError(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) > self.max_payload:
            raise TransportError(
                f"payload of {len(payload)} bytes exceeds max_payload={self.max_payload}"
            )
        conn = await self._publisher()
        base = f"{self.topic_prefix}/{'r' if retain else 'd'}/{topic}"
        if self.verify_sender:
            base += f"/from/{self.identity}"
        props = self._sender_property(key)
        size = self.data_bytes_per_chunk(conn, base + "/0000000") - (
            0 if key is None else len(_property_name(key)) + len(SENDER_PROPERTY) + 8)
        if not isinstance(payload, bytes):
            payload = bytes(payload)  # the chunks are views: the caller may not change them
        chunks = split(payload, size, retained=retain)
        window: deque[asyncio.Future[None]] = deque()
        try:
            async with asyncio.timeout(self.publish_timeout):
                async for h, data in framed(chunks):  # hashed while earlier chunks travel
                    self._check_open()
                    mqtt_topic = f"{base}/{h.index}" if retain else base
                    window.append(conn.publish(mqtt_topic, h.pack() + data, retain, props))
                    if len(window) >= self.publish_window:
                        await window.popleft()
                while window:
                    await window.popleft()
                if retain:  # clear retained chunks a longer previous value left behind
                    old = self._retained_counts.get(topic, 0)
                    for i in range(len(chunks), old):
                        await conn.publish(f"{base}/{i}", b"", True)
                    self._retained_counts[topic] = len(chunks)
        except TimeoutError as exc:
            raise TransportError(
                f"the broker did not acknowledge a {len(payload)}-byte payload on {topic!r}"
                f" within {self.publish_timeout}s"
            ) from exc
        finally:
            for fut in window:
                fut.cancel()

    @staticmethod
    def _sender_property(key: str | None) -> Any:
        """The PUBLISH properties naming the publisher (``key``, the sender) as the MQTT 5 user
        property :data:`SENDER_PROPERTY`, so a reader can drop a non-participant's chunks
        before it reassembles or decodes them; None without a key."""
        if key is None:
            return None
        props_mod = require("paho.mqtt.properties", "mqtt")
        packettypes = require("paho.mqtt.packettypes", "mqtt")
        props = props_mod.Properties(packettypes.PacketTypes.PUBLISH)
        props.UserProperty = [(SENDER_PROPERTY, _property_name(key))]
        return props

    async def clear_retained(self, topic: str, *, timeout: float = 5.0) -> int:
        """Delete ``topic``'s retained value from the broker (every chunk, also under
        ``from/<identity>`` levels); returns how many retained MQTT messages were cleared.

        The retained chunks are found by subscribing to them; a marker published on a private
        topic after the subscription says the broker has sent every retained message (it sends
        them before anything published later on the same connection)."""
        self._check_open()
        self._check_topic(topic)
        p = self.topic_prefix
        marker = f"{p}/x/clear-{uuid.uuid4().hex}"
        found: set[str] = set()
        done = asyncio.get_running_loop().create_future()
        conn: _Connection

        def on_message(generation: int, msg: Any) -> None:
            conn.ack(generation, msg.mid)
            if msg.topic == marker:
                if not done.done():
                    done.set_result(None)
            elif msg.retain and msg.payload:
                found.add(msg.topic)

        conn = _Connection(self, f"foedus-c-{uuid.uuid4().hex[:20]}", persistent=False,
                           session_expiry=0, on_message=on_message,
                           subscriptions=[(f"{p}/r/{topic}/#", 0), (marker, 0)])
        await conn.open()
        try:
            await conn.publish(marker, b"end", False)
            await asyncio.wait_for(done, timeout)
            for mqtt_topic in sorted(found):
                await conn.publish(mqtt_topic, b"", True)
        except TimeoutError as exc:
            raise TransportError(f"clearing {topic!r}: the broker sent no marker within "
                                 f"{timeout}s") from exc
        finally:
            await conn.close()
        self._retained_counts.pop(topic, None)
        return len(found)

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription:
        self._check_open()
        self._check_topic(topic)
        if group is not None and (not isinstance(group, str) or not group):
            raise TransportError(f"group must be a non-empty string, got {group!r}")
        sub = _MqttSubscription(self, topic, group)
        await sub.conn.open()
        self._subs.add(sub)
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.close()
        if self._pub is not None:
            await self._pub.close()
            self._pub = None

