"""Prometheus metrics: a ``/metrics`` endpoint on the server and on each client.

:class:`ServerMonitor` is a pod on ``server.events`` (or a round listener: ``attach(server)``);
:class:`ClientMonitor` is a pod in a client's graph that watches the model the client receives and
the update it sends (wire ``model_in.out -> monitor.model`` and ``client.update ->
monitor.update`` beside the existing wires). Both read the byte counters of the links in their
own graph at scrape time, so bytes are exact and cost nothing between scrapes.

Every series carries the label ``fl_job`` (not ``job``: Prometheus reserves ``job`` for the scrape
job and would rename ours to ``exported_job``). Series exist at zero from the start, so ``rate()``
sees the first round. Each monitor owns a private ``CollectorRegistry`` (several monitors can
share a process, e.g. in tests or a simulation) and serves it with ``prometheus_client``'s HTTP
server on ``serve(port)``.
Every metric name is listed in :data:`SERVER_METRICS` / :data:`CLIENT_METRICS`; the Grafana
dashboard under ``deploy/`` may only query these (a test checks it).
"""

from __future__ import annotations

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

_LINK_METRICS = (
    "foedus_bytes_received_total", "foedus_bytes_sent_total",
    "foedus_messages_received_total", "foedus_messages_sent_total",
)
SERVER_METRICS: tuple[str, ...] = (
    "foedus_round", "foedus_rounds_total", "foedus_round_duration_seconds",
    "foedus_updates_accepted_total", "foedus_updates_rejected_total",
    "foedus_client_failures_total", "foedus_clients_connected", "foedus_clients_missing",
    "foedus_model_metric", "foedus_client_metric_mean", "foedus_privacy_epsilon",
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

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port); returns the port.

        The endpoint outlives the graph (so the last round can still be scraped after the job
        ends); whoever called ``serve`` calls :meth:`close`."""
        if self._server is not None:
            raise ConfigError(f"{self.name}: metrics endpoint already serving on {self.port}")
        client = require("prometheus_client", "prometheus")
        self._server, self._thread = client.start_http_server(port, addr=host,
                                                              registry=self.registry)
        self.port = int(self._server.server_port)
        return self.port

    def close(self) -> None:
        """Stop the HTTP endpoint (safe to call twice)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

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


class _LinkCollector:
    """Reads the monitored graph's link counters at scrape time."""

    def __init__(self, monitor: _Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Any]:
        core = require("prometheus_client.core", "prometheus")
        m = self.monitor
        wb = wire_bytes(m.current_links())
        labels = ["fl_job", "role", "actor"]
        values = [m.job_id, m.role, m.actor]
        for name, doc, value in (
            ("foedus_bytes_received", "Bytes received from the network by links",
             wb.bytes_in),
            ("foedus_bytes_sent", "Bytes published to the network by links", wb.bytes_out),
            ("foedus_messages_received", "Messages received by links", wb.messages_in),
            ("foedus_messages_sent", "Messages published by links", wb.messages_out),
        ):
            family = core.CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, float(value))
            yield family


class ServerMonitor(_Monitor):
    """Server metrics from round events. Pod: wire ``server.events -> monitor.events``."""

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
        for metric in (self.round, self.duration, self.accepted, self.failures, self.connected,
                       self.missing):
            metric.labels(job_id)
        self.rounds.labels(job_id, "ok")
        self.rejected.labels(job_id, "none")  # a series exists before the first rejection

    def observe(self, record: RoundRecord) -> None:
        """Update the metrics from one round's record."""
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
        """A round listener for ``run_job(on_round=...)`` (no byte counters in that mode)."""
        return self.observe

    def attach(self, server: ServerPod) -> None:
        """Observe ``server`` as a round listener."""
        if self.expected_clients is None:
            self.expected_clients = server.expected_clients
        server.round_listeners.append(self.observe)


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
