"""Prometheus metrics: a ``/metrics`` endpoint on the server and on each client.

:class:`ServerMonitor` is a pod on ``server.events`` (or a round listener: ``attach(server)``);
:class:`ClientMonitor` is a pod in a client's graph that watches the model the client receives and
the update it sends (wire ``model_in.out -> monitor.model`` and ``client.update ->
monitor.update`` beside the existing wires). Both read the byte counters of the links in their
own graph at scrape time, so bytes are exact and cost nothing between scrapes.

Every series carries the label ``fl_job`` (not ``job``: Prometheus reserves ``job`` for the scrape
job and would rename ours to ``exported_job``); link counters say which side they count with
``fl_role`` (not ``role``, a common target label in scrape configs, which would rename ours).
Series exist at zero from the start, so ``rate()`` sees the first round. Each monitor owns a
private ``CollectorRegistry`` (several monitors can share a process, e.g. in tests or a
simulation) and serves it with ``prometheus_client``'s HTTP server on ``serve(port)``.
Every metric name is listed in :data:`SERVER_METRICS` / :data:`CLIENT_METRICS`; the Grafana
dashboard under ``deploy/`` may only query these (a test checks it).

A server monitor attached to a :class:`ServerPod` also exports what the server sees of each
client (``foedus_client_*_seen`` series: updates received, latency from broadcast to arrival,
the metrics each client reported), so the dashboard's client panels show data for any job, also
when the clients run elsewhere without an endpoint of their own.

The endpoint dies with its process, so :meth:`_Monitor.close` lingers (``linger_s``) until
Prometheus has scraped it once more after the job's last round.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from foedus.core.errors import ConfigError, require
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.mlops.events import graph_links, record_from_event, wire_bytes
from foedus.roles.server import RoundRecord, ServerPod

#: round latency buckets (seconds): from sub-second simulations to hour-long cross-silo rounds
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
#: how long ``close`` waits at most for a final scrape: two of the shipped 5 s scrape intervals
DEFAULT_LINGER_S = 10.0
#: bounds on the per-client series a server exports (client ids and metric names come from
#: the network: a misbehaving sender must not grow the registry without limit)
MAX_SEEN_CLIENTS = 1000
MAX_SEEN_METRICS = 32

_LINK_METRICS = (
    "foedus_bytes_received_total", "foedus_bytes_sent_total",
    "foedus_messages_received_total", "foedus_messages_sent_total",
)
SERVER_METRICS: tuple[str, ...] = (
    "foedus_round", "foedus_rounds_total", "foedus_round_duration_seconds",
    "foedus_updates_accepted_total", "foedus_updates_rejected_total",
    "foedus_client_failures_total", "foedus_clients_connected", "foedus_clients_missing",
    "foedus_model_metric", "foedus_client_metric_mean", "foedus_privacy_epsilon",
    "foedus_client_updates_seen_total", "foedus_client_latency_seen_seconds",
    "foedus_client_metric_seen", "foedus_client_round_seen",
    *_LINK_METRICS,
)
CLIENT_METRICS: tuple[str, ...] = (
    "foedus_client_round", "foedus_client_round_duration_seconds", "foedus_client_updates_total",
    "foedus_client_local_metric", "foedus_client_privacy_epsilon", *_LINK_METRICS,
)


class _Monitor(Pod):
    """Shared parts: a private registry, link byte counters, and the HTTP endpoint."""

    def __init__(self, name: str, *, job_id: str, role: str, actor: str,
                 links: list[Pod] | None) -> None:
        super().__init__(name)
        client = require("prometheus_client", "prometheus")
        self.job_id = job_id
        self.role = role
        self.actor = actor
        self.links = links
        self.registry: Any = client.CollectorRegistry()
        self.registry.register(_LinkCollector(self))
        self._server: Any = None
        self._thread: Any = None
        self.port: int | None = None
        self._graph_links: list[Pod] = []
        #: scrapes served so far, and how many had been served when the last round was seen
        self.scrapes = 0
        self._scrapes_at_update = 0
        self._scraped = threading.Condition()

    def updated(self) -> None:
        """Note that new values exist (a round ended): ``close`` waits for them to be read."""
        with self._scraped:
            self._scrapes_at_update = self.scrapes

    def scraped(self) -> None:
        """Called at every scrape (by the registry's collector)."""
        with self._scraped:
            self.scrapes += 1
            self._scraped.notify_all()

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port); returns the port.

        The endpoint outlives the graph (so the last round can still be scraped after the job
        ends); whoever called ``serve`` calls :meth:`close`."""
        if self._server is not None:
            raise ConfigError(f"{self.name}: metrics endpoint already serving on {self.port}")
        client = require("prometheus_client", "prometheus")
        try:
            self._server, self._thread = client.start_http_server(port, addr=host,
                                                                  registry=self.registry)
        except OSError as exc:  # a port in use, an address not on this host: one line, exit 2
            raise ConfigError(
                f"mlops.prometheus: cannot serve /metrics on {host}:{port}: {exc.strerror or exc}"
                "; pick another port (0: any free one) or host") from exc
        self.port = int(self._server.server_port)
        return self.port

    def close(self, linger_s: float = 0.0) -> bool:
        """Stop the HTTP endpoint (safe to call twice); returns whether the last values were
        scraped.

        With ``linger_s`` > 0 it first keeps serving until one scrape has read the values of
        the last round (or ``linger_s`` passed): the endpoint dies with the process, and a job
        shorter than a scrape interval would otherwise never show its last rounds."""
        with self._scraped:
            if self._server is not None and linger_s > 0:
                self._scraped.wait_for(lambda: self.scrapes > self._scrapes_at_update,
                                       timeout=linger_s)
            seen = self.scrapes > self._scrapes_at_update
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        return seen

    def exposition(self) -> str:
        """The current metrics in the Prometheus text format (what a scrape returns)."""
        client = require("prometheus_client", "prometheus")
        return str(client.generate_latest(self.registry).decode())

    async def start(self) -> None:
        # remember the graph's links: the runtime detaches from pods when the graph stops, and
        # the endpoint must keep reporting the final counts after that
        if self.links is None:
            self._graph_links = graph_links(self)

    def current_links(self) -> list[Pod]:
        return self.links if self.links is not None else self._graph_links

    def record_bytes(self) -> tuple[int, int] | None:
        """Bytes (in, out) from round records, for monitors that count them there."""
        return None


class _LinkCollector:
    """Reads the monitored graph's link counters at scrape time."""

    def __init__(self, monitor: _Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Any]:
        core = require("prometheus_client.core", "prometheus")
        m = self.monitor
        m.scraped()
        wb = wire_bytes(m.current_links())
        b_in, b_out = m.record_bytes() or (wb.bytes_in, wb.bytes_out)
        labels = ["fl_job", "fl_role", "actor"]
        values = [m.job_id, m.role, m.actor]
        for name, doc, value in (
            ("foedus_bytes_received", "Bytes received from the network by links", b_in),
            ("foedus_bytes_sent", "Bytes published to the network by links", b_out),
            ("foedus_messages_received", "Messages received by links", wb.messages_in),
            ("foedus_messages_sent", "Messages published by links", wb.messages_out),
        ):
            family = core.CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, float(value))
            yield family


class ServerMonitor(_Monitor):
    """Server metrics from round events. Pod: wire ``server.events -> monitor.events``.

    Attached to a server (``attach``: listener mode, what ``mlops:`` does) it counts bytes from
    the round records (``RoundRecord.bytes_in/bytes_out``, measured on the server's links by
    the runner), messages from the server graph's links, and what it sees of each client.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("events"),)

    def __init__(
        self, *, job_id: str, expected_clients: int | None = None,
        links: list[Pod] | None = None, name: str = "prometheus",
    ) -> None:
        super().__init__(name, job_id=job_id, role="server", actor="server", links=links)
        c = require("prometheus_client", "prometheus")
        self.expected_clients = expected_clients
        r, job = self.registry, ["fl_job"]
        self.round = c.Gauge("foedus_round", "Last completed round", job, registry=r)
        self.rounds = c.Counter("foedus_rounds", "Rounds completed, by status",
                                ["fl_job", "status"], registry=r)
        self.duration = c.Histogram("foedus_round_duration_seconds", "Wall time of a round",
                                    job, buckets=ROUND_BUCKETS, registry=r)
        self.accepted = c.Counter("foedus_updates_accepted", "Client updates aggregated", job,
                                  registry=r)
        self.rejected = c.Counter("foedus_updates_rejected", "Client updates refused, by reason",
                                  ["fl_job", "reason"], registry=r)
        self.failures = c.Counter("foedus_client_failures",
                                  "Clients that reported a failure instead of an update", job,
                                  registry=r)
        self.connected = c.Gauge("foedus_clients_connected",
                                 "Clients that answered in the last round", job, registry=r)
        self.missing = c.Gauge("foedus_clients_missing",
                               "Expected clients that did not answer in the last round", job,
                               registry=r)
        self.model_metric = c.Gauge("foedus_model_metric",
                                    "Server-side evaluation of the global model",
                                    ["fl_job", "name"], registry=r)
        self.client_mean = c.Gauge("foedus_client_metric_mean",
                                   "Clients' metrics, weighted by examples", ["fl_job", "name"],
                                   registry=r)
        self.epsilon = c.Gauge("foedus_privacy_epsilon",
                               "Privacy budget spent (epsilon), when the job reports one", job,
                               registry=r)
        self.seen_updates = c.Counter(
            "foedus_client_updates_seen", "Answers the server received from each client, by "
            "status (update, error), before admission", ["fl_job", "client", "status"],
            registry=r)
        self.seen_latency = c.Histogram(
            "foedus_client_latency_seen_seconds",
            "From the server's broadcast to a client's answer arriving at the server",
            ["fl_job", "client"], buckets=ROUND_BUCKETS, registry=r)
        self.seen_metric = c.Gauge("foedus_client_metric_seen",
                                   "Metrics a client reported with its last answer",
                                   ["fl_job", "client", "name"], registry=r)
        self.seen_round = c.Gauge("foedus_client_round_seen",
                                  "Last round a client answered, as the server saw it",
                                  ["fl_job", "client"], registry=r)
        for metric in (self.round, self.duration, self.accepted, self.failures, self.connected,
                       self.missing):
            metric.labels(job_id)
        self.rounds.labels(job_id, "ok")
        self.rejected.labels(job_id, "none")  # a series exists before the first rejection
        self._bytes: list[int] | None = None  # from records: set by attach / listener
        self._watched: ServerPod | None = None
        self._broadcast_at: dict[int, float] = {}
        self._clients: dict[str, set[str]] = {}  # client -> metric names exported
        self._roster: frozenset[str] | None = None

    def record_bytes(self) -> tuple[int, int] | None:
        return None if self._bytes is None else (self._bytes[0], self._bytes[1])

    def observe(self, record: RoundRecord) -> None:
        """Update the metrics from one round's record."""
        if self._bytes is not None:
            self._bytes[0] += record.bytes_in
            self._bytes[1] += record.bytes_out
        if self._watched is not None and self.links is None and not self._graph_links:
            self._graph_links = graph_links(self._watched)  # its messages, at scrape time
        self._broadcast_at.pop(record.round, None)
        self._observe(record)
        self.updated()

    def _observe(self, record: RoundRecord) -> None:
        job = self.job_id
        self.round.labels(job).set(record.round)
        self.rounds.labels(job, record.status).inc()
        self.duration.labels(job).observe(record.duration_s)
        self.accepted.labels(job).inc(record.accepted)
        for reason, count in record.rejected.items():
            self.rejected.labels(job, reason).inc(count)
        self.failures.labels(job).inc(len(record.failed_clients))
        answered = record.accepted + len(record.failed_clients)
        if self.expected_clients is not None:
            answered = max(answered, self.expected_clients - record.missing_clients)
        self.connected.labels(job).set(answered)
        self.missing.labels(job).set(record.missing_clients)
        for key, value in record.metrics.items():
            self.model_metric.labels(job, key).set(value)
        for key, value in record.client_metrics.items():
            self.client_mean.labels(job, key).set(value)
        eps = [v for k, v in (*record.metrics.items(), *record.client_metrics.items())
               if k.endswith("epsilon")]
        if eps:
            self.epsilon.labels(job).set(max(eps))

    def on_events(self, msg: Message) -> None:
        self.observe(record_from_event(msg))

    def listener(self) -> Callable[[RoundRecord], None]:
        """A round listener for ``run_job(on_round=...)``: bytes come from the records."""
        if self._bytes is None and self.links is None:
            self._bytes = [0, 0]
        return self.observe

    def attach(self, server: ServerPod) -> None:
        """Observe ``server``: its rounds (a listener), and each answer it receives (its
        ``update`` handler is wrapped) and each broadcast (a ``broadcast_meta`` hook that adds
        nothing), for the per-client ``*_seen`` series."""
        if self.expected_clients is None:
            self.expected_clients = server.expected_clients
        self._watched = server
        if server.participants is not None:
            self._roster = frozenset(server.participants)
        server.round_listeners.append(self.listener())
        server.broadcast_meta.append(self._broadcasting)
        handle = server.handler("update")

        async def on_update(msg: Message) -> None:
            self.see(msg)
            result = handle(msg)
            if inspect.isawaitable(result):
                await result

        server.set_handler("update", on_update)

    def _broadcasting(self, rnd: int) -> dict[str, Any]:
        self._broadcast_at[rnd] = time.perf_counter()
        return {}

    def see(self, msg: Message) -> None:
        """Count one answer a client sent the server (before admission decides on it)."""
        client = msg.sender
        if self._roster is not None and client not in self._roster:
            return  # not a participant: counted by admission, not given series here
        names = self._clients.get(client)
        if names is None:
            if len(self._clients) >= MAX_SEEN_CLIENTS:
                return
            names = self._clients[client] = set()
        lab = (self.job_id, client)
        failed = msg.kind is Kind.ERROR or msg.error is not None
        self.seen_updates.labels(*lab, "error" if failed else "update").inc()
        began = self._broadcast_at.get(msg.round)
        if began is not None:
            self.seen_latency.labels(*lab).observe(time.perf_counter() - began)
        if msg.round > 0:
            self.seen_round.labels(*lab).set(msg.round)
        for key, value in msg.metrics.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                continue
            if key not in names and len(names) >= MAX_SEEN_METRICS:
                continue
            names.add(key)
            self.seen_metric.labels(*lab, key).set(float(value))


class ClientMonitor(_Monitor):
    """One client's metrics. Pod: wire ``model_in.out -> monitor.model`` and
    ``client.update -> monitor.update`` (or the last client filter's output, to see the update as
    it is sent)."""

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("model"), Wire("update"))

    def __init__(
        self, *, job_id: str, client_id: str, links: list[Pod] | None = None,
        name: str = "prometheus",
    ) -> None:
        super().__init__(name, job_id=job_id, role="client", actor=client_id, links=links)
        c = require("prometheus_client", "prometheus")
        self.client_id = client_id
        r, lab = self.registry, ["fl_job", "client"]
        self.round = c.Gauge("foedus_client_round", "Last round this client answered", lab,
                             registry=r)
        self.duration = c.Histogram(
            "foedus_client_round_duration_seconds",
            "From receiving the global model to sending the update", lab,
            buckets=ROUND_BUCKETS, registry=r,
        )
        self.updates = c.Counter("foedus_client_updates", "Updates sent, by status (ok, error)",
                                 ["fl_job", "client", "status"], registry=r)
        self.local = c.Gauge("foedus_client_local_metric", "Local training/evaluation metrics",
                             ["fl_job", "client", "name"], registry=r)
        self.epsilon = c.Gauge("foedus_client_privacy_epsilon",
                               "Privacy budget spent by this client (epsilon)", lab, registry=r)
        self._received: dict[int, float] = {}
        for metric in (self.round, self.duration):
            metric.labels(job_id, client_id)
        self.updates.labels(job_id, client_id, "ok")

    def on_model(self, msg: Message) -> None:
        if msg.kind is Kind.MODEL:
            self._received[msg.round] = time.perf_counter()

    def on_update(self, msg: Message) -> None:
        lab = (self.job_id, self.client_id)
        began = self._received.pop(msg.round, None)
        if began is not None:
            self.duration.labels(*lab).observe(time.perf_counter() - began)
        failed = msg.kind is Kind.ERROR or msg.error is not None
        self.updates.labels(*lab, "error" if failed else "ok").inc()
        self.round.labels(*lab).set(msg.round)
        for key, value in msg.metrics.items():
            self.local.labels(*lab, key).set(value)
            if key.endswith("epsilon"):
                self.epsilon.labels(*lab).set(value)
        self.updated()
