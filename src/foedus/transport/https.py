"""The HTTPS transport: the foedus server hosts an :class:`HttpsHub` (aiohttp), clients use httpx.

The API is small and plain HTTP/1.1, so any HTTP client (or ``curl``) can take part::

    GET    /v1/info                              {"max_payload": N, "lease_s": S}
    PUT    /v1/publish?topic=T[&key=K][&retain=1]  body = the payload (chunked upload)
                                                  -> {"offset": N}; 403 refused, 413 too large
    POST   /v1/subscriptions   {"topic": T, "group": G|null}  -> {"id": SID}
    GET    /v1/subscriptions/SID/next?wait=S[&ack=N]  long poll: 200 + payload (header
                                                  X-Foedus-Offset), 204 nothing within S seconds
    POST   /v1/subscriptions/SID/keepalive       renew the lease while the client is busy
    DELETE /v1/subscriptions/SID[?ack=N]         close (acknowledging N first)

``ack=N`` tells the hub the client has consumed every payload up to offset N, which is what makes
group positions durable. A subscription nobody polls or renews for ``lease_s`` seconds is closed
by the hub, so a crashed client does not pin memory; a live client renews it from a background
task, so hours of local training between polls are fine.

Uploads are streamed in 1 MiB chunks (``Transfer-Encoding: chunked``) and read incrementally by
the hub, which refuses anything over ``max_payload`` as soon as it knows; the client reads the
limit from ``/v1/info`` first, so an oversized payload fails locally with a clear error instead of
after an upload.

Floods: what one peer (certificate name, else IP address) holds is bounded by the hub's
:class:`~foedus.transport.hub.limits.PeerLimits`: open connections (refused as the TLS
handshake completes), subscriptions (429), uploads in progress (429), an upload that stalls
(cut after ``upload_idle_s``), a connection that sends no complete request within
``request_timeout`` (slow-loris: closed), request lines and headers (aiohttp's 8 KiB bounds:
400). Each refusal is counted in ``hub.stats`` as ``refused_<reason>``.

TLS: :class:`~foedus.transport.tls.TLSConfig` on both ends. With ``require_client_cert`` the TLS
handshake refuses clients without a certificate signed by the CA, and the hub passes the
publisher's certificate common name to its ``authorize`` hook
(:func:`foedus.transport.hub.require_sender_identity`). Subscriptions are bound to the identity
that opened them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlsplit

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
    Cursor,
    PayloadTooLarge,
    Publication,
    Refused,
)
from foedus.transport.retry import retry_with_backoff
from foedus.transport.tls import TLSConfig, peer_identity

#: the extra this module's plugins need (`pip install foedus[https]`), for `foedus plugins`
REQUIRES_EXTRA = "https"

log = logging.getLogger("foedus.https")

_OFFSET = "X-Foedus-Offset"
_MAX_WAIT = 60.0
#: the longest pause between a client's attempts to reach a hub that is not listening yet
HANDSHAKE_RETRY_S = 0.25


class _Connection(asyncio.Protocol):
    """One TCP connection to the hub: counts it against its peer's ``max_connections`` as the
    TLS handshake completes (refusing it at once over the bound) and passes everything else to
    aiohttp's own protocol. :meth:`HttpsHub._sweep` closes it when it holds a partial request,
    or no request at all, for longer than ``request_timeout`` (slow-loris)."""

    def __init__(self, owner: HttpsHub, inner: Any) -> None:
        self.owner = owner
        self.inner = inner
        self.peer: str | None = None
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests being handled right now
        self.pending = True  # bytes of a request not yet dispatched, or no request yet
        self.since = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peername = transport.get_extra_info("peername")
        peer = peer_of(peer_identity(transport.get_extra_info("ssl_object")),
                       peername[0] if peername else None)
        try:
            self.owner.hub.peers.acquire(peer, "connections")
        except LimitExceeded:
            transport.abort()
            return
        self.peer, self.transport = peer, transport
        self.owner._connections[transport] = self
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is None:
            return  # refused: aiohttp never saw it
        self.owner.hub.peers.release(self.peer, "connections")
        self.owner._connections.pop(self.transport, None)  # type: ignore[arg-type]
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.pending = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


@dataclass
class _Lease:
    cursor: Cursor
    identity: str | None
    seen: float
    polling: bool = False


class HttpsHub(HubAdapter):
    """A :class:`~foedus.transport.hub.Hub` served over HTTPS; start it in the server process.

    ``port=0`` picks a free port (read :attr:`port` / :attr:`url` after :meth:`start`).
    ``tls`` is the server's TLSConfig; plaintext HTTP needs ``insecure=True`` explicitly. The
    other keywords are :class:`~foedus.transport.hub.HubAdapter`'s; ``lease_s`` is how long a
    subscription nobody polls or renews survives.
    """

    plaintext = "plain HTTP"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: TLSConfig | None = None,
                 *, lease_s: float = 60.0, **kw: Any) -> None:
        super().__init__(host, port, tls, **kw)
        if lease_s <= 0:
            raise ConfigError(f"lease_s must be positive, got {lease_s}")
        self.lease_s = lease_s
        self._leases: dict[str, _Lease] = {}
        self._runner: Any = None
        self._listener: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Transport, _Connection] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> Self:
        web = require("aiohttp.web", "https")
        async def track(request: Any, handler: Any) -> Any:
            return await self._track(request, handler)

        app = web.Application(middlewares=[web.middleware(track)])
        app.router.add_get("/v1/info", self._info)
        app.router.add_put("/v1/publish", self._publish)
        app.router.add_post("/v1/subscriptions", self._open)
        app.router.add_get("/v1/subscriptions/{sid}/next", self._next)
        app.router.add_post("/v1/subscriptions/{sid}/keepalive", self._keepalive)
        app.router.add_delete("/v1/subscriptions/{sid}", self._close)
        ssl_context = None if self.tls is None else self.tls.server_context()
        limits = self.hub.limits
        # keepalive: an idle connection goes (aiohttp's default is an hour). aiohttp's timer also
        # runs from a connection's start, so it is twice request_timeout: a connection that never
        # completes a request is the sweeper's to close and count as slow (not an uncounted race)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0,
                               keepalive_timeout=2 * limits.request_timeout)
        await runner.setup()
        server = runner.server
        loop = asyncio.get_running_loop()
        try:  # aiohttp's own protocol, behind the per-peer connection count
            self._listener = await loop.create_server(
                lambda: _Connection(self, server()), self.host, self.port, ssl=ssl_context,
                ssl_handshake_timeout=limits.request_timeout if ssl_context else None)
        except OSError as exc:
            await runner.cleanup()
            raise TransportError(f"HTTPS hub cannot listen on {self.host}:{self.port}: {exc}") \
                from exc
        self.port = int(self._listener.sockets[0].getsockname()[1])
        self._runner = runner
        self._reaper = asyncio.create_task(self._reap())
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("HTTPS hub listening on %s", self.url)
        return self

    async def stop(self, drain: float = 5.0) -> None:
        """Stop serving. Connected subscribers may first finish and leave, for up to
        :attr:`linger` seconds (an edge still relays the job's "stop" through the hub; the
        reaper meanwhile still ends the leases of clients that vanished), and then get up to
        ``drain`` seconds to receive what was published (a server's last "stop" message must
        reach its clients)."""
        if self._runner is not None:
            if self.linger > 0:
                await self.hub.linger(self.linger)
            if self._reaper is not None:
                self._reaper.cancel()
            if self._sweeper is not None:
                self._sweeper.cancel()
            await self.hub.drain(drain)
            self.hub.close()  # ends pending long polls at once
            self._leases.clear()
            if self._listener is not None:
                self._listener.close()
            await self._runner.cleanup()
            for transport in list(self._connections):  # any aiohttp did not close
                transport.abort()
            self._runner = self._listener = None

    # ---- handlers -----------------------------------------------------------------------------
    @staticmethod
    def identity(request: Any) -> str | None:
        """The common name of the client's verified certificate (mutual TLS), else None."""
        transport = request.transport
        return None if transport is None else peer_identity(transport.get_extra_info("ssl_object"))

    @staticmethod
    def peer(request: Any) -> str:
        """Whose limits a request counts against: its certificate name, else its address."""
        return peer_of(HttpsHub.identity(request), request.remote)

    async def _track(self, request: Any, handler: Any) -> Any:
        """Middleware: the connection is inside a request (not slow, not idle) until it ends."""
        conn = self._connections.get(request.transport)
        if conn is None:
            return await handler(request)
        conn.busy += 1
        conn.pending = False
        try:
            return await handler(request)
        finally:
            conn.busy -= 1
            conn.since = asyncio.get_running_loop().time()

    async def _sweep(self) -> None:
        """Close connections that hold a partial request, or never sent one, for longer than
        ``request_timeout``: a slow-loris client holds a connection by sending a header byte
        now and then, and aiohttp waits for a whole request without a deadline."""
        timeout = self.hub.limits.request_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = loop.time()
            for transport, conn in list(self._connections.items()):
                if not conn.busy and conn.pending and now - conn.since > timeout:
                    self.hub.stats["refused_slow_request"] += 1
                    self.hub.peers.note("slow_request", f"peer {conn.peer!r} sent no complete "
                                                        f"request within {timeout}s")
                    transport.abort()

    @staticmethod
    def _fail(status: int, reason: str) -> Any:
        web = require("aiohttp.web", "https")
        return web.json_response({"error": reason}, status=status)

    async def _info(self, request: Any) -> Any:
        web = require("aiohttp.web", "https")
        return web.json_response({"max_payload": self.hub.max_payload, "lease_s": self.lease_s})

    async def _publish(self, request: Any) -> Any:
        web = require("aiohttp.web", "https")
        topic = request.query.get("topic", "")
        if not topic:
            return self._fail(400, "query parameter 'topic' is required")
        peer = self.peer(request)
        try:
            self.hub.peers.acquire(peer, "publishes")
        except LimitExceeded as exc:
            return self._fail(429, str(exc))
        try:
            if request.content_length is not None:
                self.hub.check_size(request.content_length)
            chunks = await self._upload(request, peer)
            offset = self.hub.publish(Publication(
                topic, b"".join(chunks), request.query.get("key"),
                request.query.get("retain") == "1", self.identity(request),
            ))
        except PayloadTooLarge as exc:
            return self._fail(413, str(exc))
        except Refused as exc:
            return self._fail(403, str(exc))
        except LimitExceeded as exc:
            return self._fail(408 if exc.reason == "slow_upload" else 429, str(exc))
        except TransportError as exc:
            return self._fail(409, str(exc))
        except ConnectionError:  # the uploader went away mid-body: nobody to answer, no trace
            self.hub.stats["uploads_abandoned"] += 1
            return self._fail(400, "connection lost during the upload")
        finally:
            self.hub.peers.release(peer, "publishes")
        return web.json_response({"offset": offset})

    async def _upload(self, request: Any, peer: str) -> list[bytes]:
        """The request body, refused as soon as it exceeds ``max_payload`` or sends nothing for
        ``upload_idle_s`` (an upload trickling in must not hold its buffer for ever)."""
        idle = self.hub.limits.upload_idle_s
        chunks: list[bytes] = []
        received = 0
        while True:
            try:
                chunk = await asyncio.wait_for(request.content.readany(), idle)
            except TimeoutError:
                self.hub.peers.refuse("slow_upload", f"peer {peer!r} sent nothing for {idle}s "
                                                     f"after {received} bytes")
            if not chunk:
                return chunks
            received += len(chunk)
            self.hub.check_size(received)
            chunks.append(chunk)

    async def _open(self, request: Any) -> Any:
        web = require("aiohttp.web", "https")
        try:
            body = await request.json()
            topic, group = body["topic"], body.get("group")
            if not isinstance(topic, str) or not (group is None or isinstance(group, str)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return self._fail(400, 'expected JSON {"topic": "...", "group": "..." or null}')
        try:
            cursor = self.hub.open(topic, group, self.peer(request))
        except LimitExceeded as exc:
            return self._fail(429, str(exc))
        except TransportError as exc:
            return self._fail(409, str(exc))
        sid = secrets.token_urlsafe(18)
        log.info("HTTPS hub: %s subscribed to %r", self.peer(request), topic)
        loop = asyncio.get_running_loop()
        self._leases[sid] = _Lease(cursor, self.identity(request), loop.time())
        return web.json_response({"id": sid})

    def _lease(self, request: Any) -> _Lease | Any:
        lease = self._leases.get(request.match_info["sid"])
        if lease is None:
            return self._fail(404, "unknown or expired subscription")
        if lease.identity != self.identity(request):
            return self._fail(403, "subscription belongs to another client identity")
        lease.seen = asyncio.get_running_loop().time()
        return lease

    def _ack(self, request: Any, lease: _Lease) -> Any:
        ack = request.query.get("ack")
        if ack is not None:
            if not ack.isdigit():
                return self._fail(400, "ack must be a payload offset")
            lease.cursor.commit(int(ack))
        return None

    async def _next(self, request: Any) -> Any:
        web = require("aiohttp.web", "https")
        lease = self._lease(request)
        if not isinstance(lease, _Lease):
            return lease
        if (bad := self._ack(request, lease)) is not None:
            return bad
        if lease.polling:
            return self._fail(409, "a poll on this subscription is already in progress")
        try:
            wait = min(float(request.query.get("wait", "20")), _MAX_WAIT)
        except ValueError:
            return self._fail(400, "wait must be a number of seconds")
        lease.polling = True
        try:
            item = await lease.cursor.next(timeout=max(wait, 0.0))
        except TransportClosed:  # closed by the hub (stopping, lease expired): re-subscribe
            self._leases.pop(request.match_info["sid"], None)
            return self._fail(404, "subscription closed by the hub")
        except TransportError as exc:
            return self._fail(410, str(exc))
        finally:
            lease.polling = False
            lease.seen = asyncio.get_running_loop().time()
        if item is None:
            return web.Response(status=204)
        offset, payload = item
        return web.Response(body=payload, headers={_OFFSET: str(offset)},
                            content_type="application/octet-stream")

    async def _keepalive(self, request: Any) -> Any:
        web = require("aiohttp.web", "https")
        lease = self._lease(request)
        return lease if not isinstance(lease, _Lease) else web.Response(status=204)

    async def _close(self, request: Any) -> Any:
        web = require("aiohttp.web", "https")
        lease = self._lease(request)
        if not isinstance(lease, _Lease):
            return lease
        bad = self._ack(request, lease)
        lease.cursor.close()
        self._leases.pop(request.match_info["sid"], None)
        return bad if bad is not None else web.Response(status=204)

    async def _reap(self) -> None:
        """Close subscriptions whose client stopped polling and renewing (crashed or gone)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.lease_s / 4)
            now = loop.time()
            for sid, lease in list(self._leases.items()):
                if not lease.polling and now - lease.seen > self.lease_s:
                    log.info("HTTPS hub: subscription to %r expired", lease.cursor.topic_name)
                    lease.cursor.close()
                    del self._leases[sid]



def _in_chain(exc: BaseException, kind: type[BaseException], text: tuple[str, ...]) -> bool:
    """Whether ``exc`` or anything it was raised from is a ``kind``, or says one of ``text``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind) or any(t in str(seen).lower() for t in text):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _not_listening(exc: BaseException) -> bool:
    """True when the hub's address refused the TCP connection: nothing listens there yet
    (a client started before its server), worth retrying. Not a reset: the hub refusing the
    client's certificate resets a connection whose TLS handshake the client saw complete."""
    return _in_chain(exc, ConnectionRefusedError, ("connection refused", "errno 111"))


def _refused_connection(exc: BaseException) -> bool:
    """True when nothing listens at the hub's address yet (or any more): worth retrying, unlike
    a TLS refusal, which fails at once with its own error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError | ConnectionResetError):
            return True
        if "connection refused" in str(seen).lower() or "errno 111" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _HttpsSubscription(ReconnectingSubscription):
    """A long-polling subscription that re-opens itself when the hub forgets it (restart, lease
    expiry) or stops answering (see the base class)."""

    def __init__(self, owner: HttpsTransport, sid: str, topic: str, group: str | None,
                 renew_every: float) -> None:
        super().__init__(owner, topic, group)
        self._https_owner = owner
        self.sid = sid
        self._renewer = asyncio.create_task(self._renew(renew_every))

    async def _renew(self, every: float) -> None:
        httpx = require("httpx", "https")
        while True:
            await asyncio.sleep(every)
            try:
                await self._https_owner._client.post(f"/v1/subscriptions/{self.sid}/keepalive")
            except httpx.HTTPError as exc:  # the next poll reports a lasting problem
                log.warning("HTTPS subscription %r: lease renewal failed: %s", self.topic, exc)

    async def __anext__(self) -> bytes:
        httpx = require("httpx", "https")
        while True:
            if self._closed:
                raise StopAsyncIteration
            params: dict[str, Any] = {"wait": self._https_owner.poll_s}
            if self._unacked is not None:
                params["ack"] = self._unacked
            try:
                r = await self._https_owner._client.get(
                    f"/v1/subscriptions/{self.sid}/next", params=params
                )
            except httpx.HTTPError as exc:
                if self._closed:
                    raise StopAsyncIteration from None
                if not isinstance(exc, httpx.TransportError):
                    raise TransportError(f"HTTPS subscription to {self.topic!r} failed: "
                                         f"{type(exc).__name__}: {exc}") from exc
                await self._reopen(f"{type(exc).__name__}: {exc}")
                continue
            if r.status_code == 204:
                self._unacked = None  # the acknowledgement went through
                continue
            if r.status_code == 200:
                self._unacked = int(r.headers[_OFFSET])
                content: bytes = r.content
                return content
            if self._closed:
                raise StopAsyncIteration
            if r.status_code in (404, 503):  # the hub forgot us (restart, lease) or is stopping
                await self._reopen(f"{r.status_code}")
                continue
            raise _error(r, f"subscription to {self.topic!r}")

    async def _resubscribe(self) -> None:
        self.sid = await self._https_owner._open(self.topic, self.group)

    async def _end(self) -> None:
        self._renewer.cancel()
        params = {} if self._unacked is None else {"ack": self._unacked}
        with contextlib.suppress(Exception):  # best effort; the hub's lease expires otherwise
            await self._https_owner._client.delete(f"/v1/subscriptions/{self.sid}",
                                                   params=params)


def _error(response: Any, what: str) -> TransportError:
    try:
        reason = response.json()["error"]
    except Exception:
        reason = response.text[:200]
    return TransportError(f"HTTPS {what} failed: {response.status_code}: {reason}")


@transports.register("https")
class HttpsTransport(HubClient):
    """A client of an :class:`HttpsHub` at ``url`` (``https://HOST:PORT``).

    ``tls``: the client's TLSConfig or a job-file mapping (``ca``, plus ``cert``/``key`` for
    mutual TLS). ``serve``: a TLS mapping for the *hub*, making this process host it at the url's
    host and port; with ``serve_as: server`` and ``actor: "{actor}"`` only the server actor
    hosts and the others connect (see :class:`foedus.transport.hub.Hosting`). ``verify_sender``
    and ``sender_aliases`` set the hosted hub's identity check. ``poll_s`` is the long-poll
    wait; ``connect_timeout`` bounds the wait for the hub to come up (a client started before
    the server waits for it); ``reconnect_timeout`` how long a broken subscription or a publish
    to an unreachable hub keeps retrying. ``limits`` (hosting only): what one peer may hold on
    the hub (a mapping of :class:`~foedus.transport.hub.limits.PeerLimits` fields). ``linger_s``
    (hosting only): how long the hosted hub, when this process's actors are done, waits for the
    other actors to finish and leave (edges still relay the job's "stop" through it) before it
    closes.
    """

    name = "https"
    label = "HTTPS"
    hosted = HostedHubs()  # one per protocol: the hubs its transports host in this process
    hub_class = HttpsHub
    log = log

    def __init__(
        self, url: str = "https://127.0.0.1:8443", *,
        tls: TLSConfig | Mapping[str, Any] | None = None, insecure: bool = False,
        serve: TLSConfig | Mapping[str, Any] | None = None, serve_as: str | None = None,
        actor: str | None = None, verify_sender: bool = False,
        sender_aliases: Mapping[str, str] | None = None, connect_timeout: float = 30.0,
        reconnect_timeout: float = 60.0, linger_s: float = DEFAULT_LINGER_S, poll_s: float = 20.0,
        limits: Mapping[str, Any] | None = None,
    ) -> None:
        require("httpx", "https")
        try:
            parts = urlsplit(url)
            port = parts.port
        except (TypeError, AttributeError, ValueError):  # not a string; port not 0-65535
            port = None
        if port is None or parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"https url must look like https://HOST:PORT (port 0-65535), "
                              f"got {url!r}")
        check_flags(insecure=insecure, verify_sender=verify_sender)
        hosting = Hosting.from_params(serve, serve_as, actor, verify_sender, sender_aliases,
                                      linger_s, limits)
        self.tls = TLSConfig.from_mapping(tls)
        if parts.scheme == "https" and self.tls is None and not hosting.in_process:
            raise ConfigError("https transport needs tls: {ca: ...}")
        if parts.scheme == "http" and not insecure:
            raise ConfigError("plain http:// needs insecure: true")
        if not 0 < poll_s <= _MAX_WAIT:
            raise ConfigError(f"poll_s must be in (0, {_MAX_WAIT}], got {poll_s}")
        check_positive(connect_timeout=connect_timeout, reconnect_timeout=reconnect_timeout)
        self.url = url.rstrip("/")
        self.poll_s = poll_s
        self._client: Any = None
        self._info: dict[str, Any] | None = None
        super().__init__(self.url, parts.hostname, port, hosting,
                         connect_timeout=connect_timeout, reconnect_timeout=reconnect_timeout)

    async def _connect(self) -> Any:
        httpx = require("httpx", "https")
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self._target(),
                verify=self.tls.client_context() if self.tls is not None else False,
                timeout=httpx.Timeout(self.connect_timeout, read=self.poll_s + 30.0),
                trust_env=False,
            )
        if self._info is None:
            self._info = await self._handshake()
        return self._client

    def _target(self) -> str:
        """Where requests go: the url, with the bound port if it says port 0."""
        if self._dial_port == self._port:
            return self.url
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition(":")[0]
        return parts._replace(netloc=f"{host}:{self._dial_port}").geturl()

    def _max_payload(self) -> int:
        assert self._info is not None
        return int(self._info["max_payload"])

    async def _handshake(self) -> dict[str, Any]:
        """Read ``/v1/info``, waiting up to ``connect_timeout`` for a hub that is not up yet."""
        httpx = require("httpx", "https")

        def give_up(exc: BaseException) -> TransportError:
            if _in_chain(exc, ConnectionResetError, ("connection reset",)):
                return TransportError(
                    f"cannot reach the HTTPS hub at {self.url}: it closed the connection after "
                    "the TLS handshake: it refuses this client's certificate (none given, or "
                    "not signed by the hub's CA), or this peer already holds its "
                    "max_connections")
            return TransportError(
                f"cannot reach the HTTPS hub at {self.url}: {type(exc).__name__}: {exc}"
                " (hub down, or TLS refused: wrong CA or missing/invalid client certificate)"
            )

        # a refused connection costs the hub nothing: retried at least every quarter second,
        # a client started before its server's hub listens joins within that of its start
        r = await retry_with_backoff(lambda: self._client.get("/v1/info"),
                                     retry_on=httpx.HTTPError, should_retry=_not_listening,
                                     timeout=self.connect_timeout, give_up=give_up,
                                     max_delay=HANDSHAKE_RETRY_S)
        if r.status_code != 200:
            raise _error(r, "handshake")
        info: dict[str, Any] = r.json()
        return info

    async def _publish_remote(
        self, conn: Any, topic: str, view: memoryview, key: str | None, retain: bool
    ) -> None:
        httpx = require("httpx", "https")
        params: dict[str, Any] = {"topic": topic}
        if key is not None:
            params["key"] = key
        if retain:
            params["retain"] = 1

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, view.nbytes, CHUNK_SIZE):
                yield bytes(view[start:start + CHUNK_SIZE])

        def give_up(exc: BaseException) -> TransportError:
            return TransportError(f"HTTPS publish to {topic!r} failed: "
                                  f"{type(exc).__name__}: {exc}")

        def on_retry(exc: BaseException) -> None:
            log.warning("HTTPS publish to %r: hub unreachable, retrying", topic)

        r = await retry_with_backoff(
            lambda: conn.put("/v1/publish", params=params, content=body()),
            retry_on=httpx.HTTPError, should_retry=_refused_connection,
            timeout=self.reconnect_timeout, give_up=give_up, on_retry=on_retry,
        )
        if r.status_code != 200:
            raise _error(r, f"publish to {topic!r}")

    async def _open(self, topic: str, group: str | None) -> str:
        """Open a subscription on the hub; returns its id."""
        httpx = require("httpx", "https")
        client = await self._ready()
        try:
            r = await client.post("/v1/subscriptions", json={"topic": topic, "group": group})
        except httpx.HTTPError as exc:
            raise TransportError(f"HTTPS subscribe to {topic!r} failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if r.status_code != 200:
            raise _error(r, f"subscribe to {topic!r}")
        sid: str = r.json()["id"]
        return sid

    async def _subscribe_remote(self, topic: str, group: str | None) -> Subscription:
        assert self._info is not None
        return _HttpsSubscription(self, await self._open(topic, group), topic, group,
                                  renew_every=float(self._info["lease_s"]) / 3)

    async def _disconnect(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
