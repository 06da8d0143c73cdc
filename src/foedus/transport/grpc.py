"""The gRPC transport: the foedus server hosts a :class:`GrpcHub`, every actor connects to it.

The service is defined with grpcio's generic handlers and raw ``bytes`` messages, so there is no
protoc step and no protobuf runtime to keep in step with generated code:

``/foedus.Hub/Info`` (unary)
    The hub's ``max_payload`` as 8 bytes, read once per client, so an oversized publish fails
    locally with a clear error before any byte is uploaded (the hub enforces it as well).
``/foedus.Hub/Publish`` (client stream -> one reply)
    Metadata ``foedus-topic-bin``, ``foedus-key-bin``, ``foedus-retain``, ``foedus-size``; the
    request stream is the payload in chunks of at most :data:`~foedus.transport.hub.CHUNK_SIZE`
    (1 MiB); the reply is the payload's 8-byte offset. Payloads of any size (up to the hub's
    ``max_payload``) travel without raising gRPC's 4 MiB message limit, on either end.
``/foedus.Hub/Subscribe`` (bidirectional stream)
    Metadata ``foedus-topic-bin`` and optionally ``foedus-group-bin``. The hub answers with a
    READY frame once the subscription exists, then frames ``flags | offset | total | data``; the
    client writes back the 8-byte offset of each payload it has consumed (durable groups).

Keepalive: clients ping every 30 s of silence and the hub accepts pings down to every 10 s and
never penalises them, so a subscription stays up through hours of local training (the
``too_many_pings`` GOAWAY is the classic failure when the two ends disagree).

Floods: what one peer (certificate name, else IP address) holds is bounded by the hub's
:class:`~foedus.transport.hub.limits.PeerLimits`: subscriptions and uploads in progress
(``RESOURCE_EXHAUSTED``), an upload that stalls (``DEADLINE_EXCEEDED`` after
``upload_idle_s``); grpc core bounds the rest: streams per connection
(:data:`MAX_STREAMS_PER_CONNECTION`), metadata (16 KiB), the TLS handshake
(``request_timeout``) and connections with no call (closed after :data:`MAX_IDLE_MS`).

TLS: :class:`~foedus.transport.tls.TLSConfig` on both ends. With ``require_client_cert`` the hub
refuses clients without a certificate signed by the CA, and passes each publisher's certificate
common name to the hub's ``authorize`` hook (see
:func:`foedus.transport.hub.require_sender_identity`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any, Self

from foedus.core.errors import ConfigError, TransportClosed, TransportError, require
from foedus.transport.base import Subscription, check_flags, transports
from foedus.transport.hub.client import (
    HubClient,
    ReconnectingSubscription,
    check_positive,
)
from foedus.transport.hub.hosting import DEFAULT_LINGER_S, HostedHubs, Hosting
from foedus.transport.hub.limits import LimitExceeded, peer_of
from foedus.transport.hub.server import HubAdapter
from foedus.transport.hub.store import (
    CHUNK_SIZE,
    PayloadTooLarge,
    Publication,
    Refused,
)
from foedus.transport.retry import retry_with_backoff
from foedus.transport.tls import TLSConfig

#: the extra this module's plugins need (`pip install foedus[grpc]`), for `foedus plugins`
REQUIRES_EXTRA = "grpc"

log = logging.getLogger("foedus.grpc")

_SERVICE = "foedus.Hub"
_INFO = f"/{_SERVICE}/Info"
_PUBLISH = f"/{_SERVICE}/Publish"
_SUBSCRIBE = f"/{_SERVICE}/Subscribe"
_FRAME = struct.Struct(">BQQ")  # flags, offset, total payload length
_ACK = struct.Struct(">Q")
_READY, _LAST = 1, 2

#: for how long every connection attempt must end with the hub closing it right after the TLS
#: handshake before a client takes it as a refusal of its certificate: longer than the
#: channel's longest reconnect backoff (1 s), so it is never one attempt that saw a hub going
#: down (see ``GrpcTransport._info``)
CLOSED_AFTER_HANDSHAKE_S = 1.5

#: streams (subscriptions, uploads) one connection may have open at once
MAX_STREAMS_PER_CONNECTION = 256
#: a connection with no call at all for this long is closed (actors always hold a subscription)
MAX_IDLE_MS = 300_000

#: the hub accepts client pings this often and never sends GOAWAY for "too many pings"; the
#: flood bounds grpc core enforces before a handler runs
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.max_metadata_size", 16 * 1024),
    ("grpc.max_connection_idle_ms", MAX_IDLE_MS),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.max_pings_without_data", 0),
)


def client_options(keepalive_s: float) -> list[tuple[str, int]]:
    """Channel options: ping the hub after ``keepalive_s`` of silence, also between calls."""
    return [
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # a client started before the hub, or after a hub restart, connects within ~1 s
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def _pem(tls: TLSConfig) -> tuple[bytes, bytes | None, bytes | None]:
    tls.check_files()
    cert = None if tls.cert is None else tls.cert.read_bytes()
    key = None if tls.key is None else tls.key.read_bytes()
    return tls.ca.read_bytes(), cert, key


def _split_address(address: str) -> tuple[str, int]:
    if not isinstance(address, str):
        raise ConfigError(f"grpc address must be HOST:PORT, got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"grpc address must be HOST:PORT (port 0-65535), got {address!r}")
    return host.strip("[]"), int(port)


class GrpcHub(HubAdapter):
    """A :class:`~foedus.transport.hub.Hub` served over gRPC; start it in the server process.

    ``port=0`` picks a free port (read :attr:`port` after :meth:`start`). ``tls`` is the
    server's TLSConfig (cert, key, CA for client certificates, ``require_client_cert``);
    plaintext needs ``insecure=True`` explicitly.
    """

    _server: Any = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> Self:
        grpc = require("grpc", "grpc")
        handshake_ms = int(self.hub.limits.request_timeout * 1000)
        server = grpc.aio.server(options=[*SERVER_OPTIONS,
                                          ("grpc.server_handshake_timeout_ms", handshake_ms)])
        handler = grpc.method_handlers_generic_handler(_SERVICE, {
            "Info": grpc.unary_unary_rpc_method_handler(self._info),
            "Publish": grpc.stream_unary_rpc_method_handler(self._publish),
            "Subscribe": grpc.stream_stream_rpc_method_handler(self._subscribe),
        })
        server.add_generic_rpc_handlers((handler,))
        bind = f"{self.host}:{self.port}"
        try:
            if self.tls is None:
                port = server.add_insecure_port(bind)
            else:
                ca, cert, key = _pem(self.tls)
                if cert is None or key is None:
                    raise ConfigError("GrpcHub tls needs the server's cert and key")
                # grpcio takes any bytes here and fails to bind later, saying only that: the
                # files are checked as the HTTPS hub loads them (one ConfigError naming them)
                self.tls.server_context()
                creds = grpc.ssl_server_credentials(
                    [(key, cert)], root_certificates=ca,
                    require_client_auth=self.tls.require_client_cert,
                )
                port = server.add_secure_port(bind, creds)
        except RuntimeError as exc:  # grpcio's "Failed to bind to address ..."
            port = 0
            why = str(exc).split(";")[0]
        else:
            why = "no port"
        if not port:
            raise TransportError(f"gRPC hub cannot listen on {bind} ({why}): the port is in "
                                 "use, or the host is not an address of this machine")
        self.port = port
        await server.start()
        self._server = server
        log.info("gRPC hub listening on %s (%s)", self.address,
                 "plaintext" if self.tls is None else "TLS")
        return self

    async def stop(self, grace: float = 1.0, drain: float = 5.0) -> None:
        """Stop serving. Connected subscribers may first finish and leave, for up to
        :attr:`linger` seconds (an edge still relays the job's "stop" through the hub), and then
        get up to ``drain`` seconds to receive what was published (a server's last "stop"
        message must reach its clients)."""
        if self._server is not None:
            if self.linger > 0:
                await self.hub.linger(self.linger)
            await self.hub.drain(drain)
            self.hub.close()
            await self._server.stop(grace)
            self._server = None

    # ---- handlers -----------------------------------------------------------------------------
    @staticmethod
    def _metadata(context: Any) -> dict[str, Any]:
        return {k: v for k, v in (context.invocation_metadata() or ())}

    @staticmethod
    def identity(context: Any) -> str | None:
        """The common name of the client's verified certificate (mutual TLS), else None."""
        names = context.auth_context().get("x509_common_name") or []
        return names[0].decode() if names else None

    @classmethod
    def peer(cls, context: Any) -> str:
        """Whose limits a call counts against: its certificate name, else its IP address
        (gRPC reports ``ipv4:ADDR:PORT`` or ``ipv6:[ADDR]:PORT``)."""
        address = str(context.peer() or "")
        address = address.split(":", 1)[1] if ":" in address else address
        return peer_of(cls.identity(context), address.rsplit(":", 1)[0].strip("[]"))

    async def _info(self, request: bytes, context: Any) -> bytes:
        return _ACK.pack(self.hub.max_payload)

    async def _publish(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        grpc = require("grpc", "grpc")
        md = self._metadata(context)
        try:
            topic = bytes(md["foedus-topic-bin"]).decode()
            size = int(md["foedus-size"])
            key = bytes(md["foedus-key-bin"]).decode() if "foedus-key-bin" in md else None
        except (KeyError, ValueError, UnicodeDecodeError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad publish metadata")
        try:
            self.hub.check_size(size)
        except PayloadTooLarge as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        peer = self.peer(context)
        try:
            self.hub.peers.acquire(peer, "publishes")
        except LimitExceeded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            chunks = await self._upload(requests, size, peer, context)
        finally:
            self.hub.peers.release(peer, "publishes")
        pub = Publication(topic, b"".join(chunks), key, md.get("foedus-retain") == "1",
                          self.identity(context))
        try:
            offset = self.hub.publish(pub)
        except Refused as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except TransportError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return _ACK.pack(offset)

    async def _upload(self, requests: AsyncIterator[bytes], size: int, peer: str,
                      context: Any) -> list[bytes]:
        """The payload's chunks; an upload longer than announced, truncated, or sending nothing
        for ``upload_idle_s`` ends the call (a trickling upload must not hold its buffer)."""
        grpc = require("grpc", "grpc")
        idle = self.hub.limits.upload_idle_s
        chunks: list[bytes] = []
        received = 0
        while True:
            try:
                chunk = await asyncio.wait_for(anext(requests), idle)
            except StopAsyncIteration:
                break
            except TimeoutError:
                try:
                    self.hub.peers.refuse("slow_upload", f"peer {peer!r} sent nothing for "
                                                         f"{idle}s after {received} bytes")
                except LimitExceeded as exc:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
            received += len(chunk)
            if received > size:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"payload longer than the announced {size} bytes")
            chunks.append(chunk)
        if received != size:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"payload truncated: {received} of {size} bytes")
        return chunks

    async def _subscribe(self, requests: AsyncIterator[bytes], context: Any) -> None:
        grpc = require("grpc", "grpc")
        md = self._metadata(context)
        try:
            topic = bytes(md["foedus-topic-bin"]).decode()
            group = bytes(md["foedus-group-bin"]).decode() if "foedus-group-bin" in md else None
            cursor = self.hub.open(topic, group, self.peer(context))
        except (KeyError, UnicodeDecodeError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad subscribe metadata")
        except LimitExceeded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except TransportError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

        async def read_acks() -> None:
            while True:
                ack = await context.read()
                if ack is grpc.aio.EOF:  # the client half-closed: it is done
                    cursor.close()
                    return
                cursor.commit(_ACK.unpack(ack)[0])

        reader = asyncio.create_task(read_acks())
        try:
            await context.write(_FRAME.pack(_READY, 0, 0))
            while True:
                try:
                    offset, payload = await cursor.next()  # type: ignore[misc]
                except TransportClosed:
                    return
                except TransportError as exc:
                    await context.abort(grpc.StatusCode.DATA_LOSS, str(exc))
                view = memoryview(payload)
                total = len(payload)
                start = 0
                while True:
                    end = min(start + CHUNK_SIZE, total)
                    flags = _LAST if end == total else 0
                    await context.write(_FRAME.pack(flags, offset, total) + view[start:end])
                    if flags:
                        break
                    start = end
        finally:
            reader.cancel()
            cursor.close()


#: gRPC status codes after which a subscription re-opens (the hub went away or is restarting)
_RETRY_CODES = frozenset({"UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL", "ABORTED"})


class _GrpcSubscription(ReconnectingSubscription):
    """A Subscribe stream that re-opens itself when the stream breaks (see the base class)."""

    def __init__(self, owner: GrpcTransport, call: Any, topic: str, group: str | None) -> None:
        super().__init__(owner, topic, group)
        self._grpc_owner = owner
        self._call = call

    async def __anext__(self) -> bytes:
        grpc = require("grpc", "grpc")
        while True:
            if self._closed:
                raise StopAsyncIteration
            try:
                return await self._read()
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, _StreamEnded) as exc:
                if self._closed:
                    raise StopAsyncIteration from None
                code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "EOF"
                if code != "EOF" and code not in _RETRY_CODES:
                    raise _error(exc, f"subscription to {self.topic!r}") from exc
                await self._reopen(code)
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise

    async def _read(self) -> bytes:
        grpc = require("grpc", "grpc")
        if self._unacked is not None and self.group is not None:
            await self._call.write(_ACK.pack(self._unacked))
            self._unacked = None
        parts: list[memoryview] = []
        while True:
            frame = await self._call.read()
            if frame is grpc.aio.EOF:
                raise _StreamEnded
            flags, offset, total = _FRAME.unpack_from(frame)
            parts.append(memoryview(frame)[_FRAME.size:])
            if flags & _LAST:
                payload = b"".join(parts)
                if len(payload) != total:
                    raise TransportError(
                        f"gRPC hub sent {len(payload)} bytes for a {total}-byte payload"
                    )
                self._unacked = offset
                return payload

    async def _reopen(self, why: str) -> None:
        self._call.cancel()
        await super()._reopen(why)

    async def _resubscribe(self) -> None:
        self._call = await self._grpc_owner._open_stream(self.topic, self.group)

    async def _end(self) -> None:
        try:
            if self._unacked is not None and self.group is not None:
                await self._call.write(_ACK.pack(self._unacked))
            await self._call.done_writing()
            # let the hub see the acknowledgement and end the call before we tear it down
            await asyncio.wait_for(self._call.code(), 2.0)
        except Exception:
            pass
        finally:
            self._call.cancel()


class _StreamEnded(Exception):
    """The hub ended a Subscribe stream without an error (it is shutting down)."""


def _error(exc: Any, what: str) -> TransportError:
    code = exc.code()
    name = getattr(code, "name", str(code))
    return TransportError(f"gRPC {what} failed: {name}: {exc.details()}")


@transports.register("grpc")
class GrpcTransport(HubClient):
    """A client of a :class:`GrpcHub` at ``address`` (``HOST:PORT``).

    ``tls``: the client's TLSConfig or a job-file mapping (``ca``, plus ``cert``/``key`` for
    mutual TLS). ``serve``: a TLS mapping for the *hub*, making this process host it at
    ``address``; with ``serve_as: server`` and ``actor: "{actor}"`` only the server actor hosts
    and the others connect (see :class:`foedus.transport.hub.Hosting`). ``verify_sender`` and
    ``sender_aliases`` set the hosted hub's identity check.
    ``connect_timeout`` bounds the wait for a reachable, TLS-accepting hub (a client started
    before the server waits for it); ``reconnect_timeout`` how long a broken subscription or a
    publish to an unreachable hub keeps retrying. ``limits`` (hosting only): what one peer may
    hold on the hub (a mapping of :class:`~foedus.transport.hub.limits.PeerLimits` fields).
    ``linger_s`` (hosting only): how long the hosted hub, when this process's actors are done,
    waits for the other actors to finish and leave (edges still relay the job's "stop" through
    it) before it closes.
    """

    name = "grpc"
    label = "gRPC"
    hosted = HostedHubs()  # one per protocol: the hubs its transports host in this process
    hub_class = GrpcHub
    log = log

    def __init__(
        self, address: str = "127.0.0.1:50051", *,
        tls: TLSConfig | Mapping[str, Any] | None = None, insecure: bool = False,
        serve: TLSConfig | Mapping[str, Any] | None = None, serve_as: str | None = None,
        actor: str | None = None, verify_sender: bool = False,
        sender_aliases: Mapping[str, str] | None = None, connect_timeout: float = 30.0,
        reconnect_timeout: float = 60.0, linger_s: float = DEFAULT_LINGER_S,
        keepalive_s: float = 30.0,
        limits: Mapping[str, Any] | None = None,
    ) -> None:
        require("grpc", "grpc")
        host, port = _split_address(address)
        check_flags(insecure=insecure, verify_sender=verify_sender)
        hosting = Hosting.from_params(serve, serve_as, actor, verify_sender, sender_aliases,
                                      linger_s, limits)
        self.tls = TLSConfig.from_mapping(tls)
        if self.tls is None and not insecure and not hosting.in_process:
            raise ConfigError("grpc transport needs tls: {ca: ...} (or insecure: true)")
        check_positive(connect_timeout=connect_timeout, reconnect_timeout=reconnect_timeout,
                       keepalive_s=keepalive_s)
        self.address = address
        self.insecure = insecure
        self.keepalive_s = keepalive_s
        self._channel: Any = None
        self._hub_max_payload: int | None = None
        super().__init__(address, host, port, hosting, connect_timeout=connect_timeout,
                         reconnect_timeout=reconnect_timeout)

    def _target(self) -> str:
        """Where the channel dials: the address, with the bound port if it says port 0."""
        if self._dial_port == self._port:
            return self.address
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._dial_port}"

    async def _connect(self) -> Any:
        grpc = require("grpc", "grpc")
        if self._channel is None:
            options = client_options(self.keepalive_s)
            target = self._target()
            if self.tls is None:
                self._channel = grpc.aio.insecure_channel(target, options=options)
            else:
                ca, cert, key = _pem(self.tls)
                # grpcio takes a CA that is not PEM, or a mismatched pair, and never connects:
                # loaded as Python's ssl loads them, they are one ConfigError naming the files
                self.tls.client_context()
                creds = grpc.ssl_channel_credentials(
                    root_certificates=ca, private_key=key, certificate_chain=cert
                )
                self._channel = grpc.aio.secure_channel(target, creds, options=options)
        if self._channel.get_state(try_to_connect=True) != grpc.ChannelConnectivity.READY \
                or self._hub_max_payload is None:
            reply = await self._info()
            self._hub_max_payload = int(_ACK.unpack(reply)[0])
        return self._channel

    async def _info(self) -> bytes:
        """Call Info until the hub answers, for up to ``connect_timeout``.

        Each call fails at once while the channel cannot connect, with the attempt's reason
        (``wait_for_ready=False``); waiting for the channel instead told nothing, and gRPC
        retries a failed TLS handshake as if it were transient, so a refused client waited its
        whole ``connect_timeout``. A refused TCP connection (the hub is not up yet) is retried;
        a failed handshake is final; a connection the hub closes right after the handshake
        (a refused client certificate under TLS 1.3) is final once every attempt for
        :data:`CLOSED_AFTER_HANDSHAKE_S` ended so (a hub going down closes one too)."""
        grpc = require("grpc", "grpc")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        closed_since: float | None = None
        info = self._channel.unary_unary(_INFO)
        while True:
            left = deadline - loop.time()
            try:
                reply: bytes = await info(b"", timeout=max(left, 0.001), wait_for_ready=False)
                return reply
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise _error(exc, "handshake") from exc
                why = " ".join(str(exc.details() or "").split())
            low = why.lower()
            if "handshake failed" in low:
                raise TransportError(
                    f"cannot reach the gRPC hub at {self.address}: the TLS handshake failed "
                    f"({why[-160:]}): the hub's certificate is not signed by tls.ca, or the hub "
                    "does not speak TLS")
            if "socket closed" not in low:
                closed_since = None
            elif closed_since is None:
                closed_since = loop.time()
            if closed_since is not None and loop.time() - closed_since >= \
                    CLOSED_AFTER_HANDSHAKE_S:
                raise TransportError(
                    f"cannot reach the gRPC hub at {self.address}: it closed the connection "
                    "after the TLS handshake: it refuses this client's certificate (none "
                    "given, or not signed by the hub's CA), or it does not speak TLS")
            if loop.time() >= deadline:
                raise TransportError(
                    f"cannot reach the gRPC hub at {self.address} within {self.connect_timeout}s"
                    f" ({why or 'no answer'})")
            # the channel's own reconnect backoff (0.2-1 s) paces the real attempts
            await asyncio.sleep(min(0.1, max(deadline - loop.time(), 0)))

    def _max_payload(self) -> int:
        assert self._hub_max_payload is not None
        return self._hub_max_payload

    async def _publish_remote(
        self, conn: Any, topic: str, view: memoryview, key: str | None, retain: bool
    ) -> None:
        metadata = [("foedus-topic-bin", topic.encode()), ("foedus-size", str(view.nbytes)),
                    ("foedus-retain", "1" if retain else "0")]
        if key is not None:
            metadata.append(("foedus-key-bin", key.encode()))
        attempts = 0

        async def attempt() -> None:  # after a failure, wait for the channel to be ready again
            nonlocal attempts
            attempts += 1
            channel = conn if attempts == 1 else await self._ready()
            await self._publish_once(channel, view, metadata, topic)

        def give_up(exc: BaseException) -> TransportError:
            return TransportError(f"gRPC publish to {topic!r}: hub unavailable for "
                                  f"{self.reconnect_timeout}s: {exc}")

        def on_retry(exc: BaseException) -> None:
            log.warning("gRPC publish to %r: hub unavailable, retrying", topic)

        # the hub is (re)starting: retry, at least once
        await retry_with_backoff(attempt, retry_on=_Unavailable, timeout=self.reconnect_timeout,
                                 give_up=give_up, on_retry=on_retry)

    async def _publish_once(
        self, channel: Any, view: memoryview, metadata: list[tuple[str, Any]], topic: str
    ) -> None:
        grpc = require("grpc", "grpc")
        call = channel.stream_unary(_PUBLISH)(metadata=metadata)
        try:
            try:
                for start in range(0, view.nbytes, CHUNK_SIZE):
                    await call.write(bytes(view[start:start + CHUNK_SIZE]))
                await call.done_writing()
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                pass  # the hub ended the call early (a refusal): its status says why, below
            await call
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise _Unavailable(exc.details()) from exc
            raise _error(exc, f"publish to {topic!r}") from exc

    async def _open_stream(self, topic: str, group: str | None) -> Any:
        """Open a Subscribe stream and wait for the hub's READY frame."""
        grpc = require("grpc", "grpc")
        channel = await self._ready()
        metadata = [("foedus-topic-bin", topic.encode())]
        if group is not None:
            metadata.append(("foedus-group-bin", group.encode()))
        call = channel.stream_stream(_SUBSCRIBE)(metadata=metadata)
        try:
            frame = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, f"subscribe to {topic!r}") from exc
        except BaseException:  # cancelled (a re-subscribe out of time): leave no stream open
            call.cancel()
            raise
        if frame is grpc.aio.EOF or not _FRAME.unpack_from(frame)[0] & _READY:
            call.cancel()
            raise TransportError(f"gRPC hub did not confirm the subscription to {topic!r}")
        return call

    async def _subscribe_remote(self, topic: str, group: str | None) -> Subscription:
        return _GrpcSubscription(self, await self._open_stream(topic, group), topic, group)

    async def _disconnect(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class _Unavailable(Exception):
    """The hub could not be reached for one publish attempt."""
