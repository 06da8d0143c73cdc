"""The asynchronous server: FedBuff (Nguyen et al., 2022, "Federated Learning with Buffered
Asynchronous Aggregation").

There are no rounds for clients to wait on. The server publishes a model *version*; a client
trains on whatever version it has and sends its parameters back, tagged with that version (the
message's ``round``). The server turns each update into a delta against the version it was
trained from, scales it by a staleness weight, and adds it to a buffer. Once ``buffer_size`` (K)
updates are in, it applies their mean to the global model, publishes the next version, and
starts a new buffer::

    staleness  s_i = current_version - version_i
    weight     w_i = 1 / sqrt(1 + s_i)            (the paper's polynomial staleness weighting)
    new model  x  <- x + server_lr * (1/K) * sum_i w_i * (y_i - x_{version_i})

Clients send parameters, not deltas (so plain :class:`~foedus.roles.client.ClientPod` training
works unchanged); the server therefore keeps the last ``max_staleness + 1`` versions to subtract
from, which costs ``max_staleness + 1`` model copies of memory. Updates staler than
``max_staleness`` or for a version not yet published (``stale_round``), replays,
non-participants, wrong shapes, NaN or Inf are refused by the same
:class:`~foedus.roles.admission.Admission` as in the synchronous server, and counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from foedus.aggregate.base import check_finite_blocked, positive_number, whole_number
from foedus.core.errors import ConfigError, RejectedUpdate
from foedus.core.message import Kind, Message
from foedus.core.params import Params, ParamSpec, flatten, unflatten
from foedus.core.pod import Pod, Wire
from foedus.roles.admission import CLIENT_FAILED, STALE_ROUND, Admission

log = logging.getLogger("foedus.async_server")

#: a sender that already fills ``max_per_sender`` places of the current buffer
BUFFER_SHARE = "buffer_share"

Evaluator = Callable[[Params], dict[str, float]]
Weighting = Callable[[int], float]


def polynomial_staleness(staleness: int, exponent: float = 0.5) -> float:
    """``1 / (1 + s) ** exponent``; exponent 0.5 is FedBuff's ``1 / sqrt(1 + s)``."""
    return 1.0 / math.pow(1.0 + staleness, exponent)


class StalenessBuffer:
    """FedBuff's arithmetic, apart from any messaging: versions, the buffer, the update rule.

    Pure and synchronous, so it can be checked by hand and reused by other drivers.
    """

    def __init__(
        self, initial_params: Params, *, buffer_size: int, server_lr: float = 1.0,
        max_staleness: int = 10, weighting: Weighting = polynomial_staleness,
    ) -> None:
        self.buffer_size = whole_number("buffer_size", buffer_size, minimum=1)
        self.server_lr = positive_number("server_lr", server_lr)
        self.max_staleness = whole_number("max_staleness", max_staleness, minimum=0)
        self.weighting = weighting
        self.spec = ParamSpec.of(initial_params)
        self.version = 0
        self._versions: dict[int, np.ndarray] = {0: flatten(initial_params)}
        self._sum = np.zeros(self.spec.size)
        self.buffered: list[tuple[str, int, float]] = []  # (sender, staleness, weight)

    @property
    def vector(self) -> np.ndarray:
        return self._versions[self.version]

    @property
    def params(self) -> dict[str, np.ndarray]:
        return unflatten(self.vector, self.spec)

    def accept(self, update: Message) -> bool:
        """Fold one update in; True when the buffer is full (call :meth:`apply`)."""
        self.spec.check(update.params)
        check_finite_blocked(update.params)
        base = update.round
        if base > self.version or base < 0:
            raise RejectedUpdate(STALE_ROUND,
                                 f"trained from version {base}, newest is {self.version}")
        staleness = self.version - base
        if staleness > self.max_staleness or base not in self._versions:
            raise RejectedUpdate(
                STALE_ROUND, f"staleness {staleness} exceeds max_staleness={self.max_staleness}"
            )
        weight = float(self.weighting(staleness))
        delta = flatten(update.params) - self._versions[base]
        self._sum += weight * delta
        self.buffered.append((update.sender, staleness, weight))
        return len(self.buffered) >= self.buffer_size

    def window(self) -> range:
        """The versions an update may have been trained from now."""
        return range(max(0, self.version - self.max_staleness), self.version + 1)

    def apply(self) -> dict[str, np.ndarray]:
        """Apply the buffer's mean weighted delta; publishes a new version and empties it."""
        if not self.buffered:
            raise RejectedUpdate("no_updates", "the buffer is empty")
        new = self.vector + self.server_lr * self._sum / len(self.buffered)
        self.version += 1
        self._versions[self.version] = new
        for old in [v for v in self._versions if v < self.version - self.max_staleness]:
            del self._versions[old]
        self._sum = np.zeros(self.spec.size)
        self.buffered = []
        return self.params


@dataclass
class VersionRecord:
    """One applied buffer: the version it made, what went in, and the model's metrics."""

    version: int
    updates: int
    senders: list[str] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0  # since the job started: time-to-accuracy reads straight off this
    metrics: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # refused while this buffer filled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AsyncServerPod(Pod):
    """Wire ``update`` from the clients' uplink, ``model`` to their downlink (as the
    synchronous :class:`~foedus.roles.server.ServerPod`), so the same client graphs serve both.

    The job ends after ``versions`` buffers were applied, with a ``stop`` control message; or
    early, with ``stop_reason`` saying why, after ``timeout`` seconds in all or when no new
    version was made for ``version_timeout`` seconds once a client was heard from (too few
    clients left to fill a buffer: waiting longer would only delay the same result). Before
    the first update only ``timeout`` applies: clients in other processes may start later.

    Updates pass the same :class:`~foedus.roles.admission.Admission` as the synchronous
    server's, with the versions within ``max_staleness`` of the newest as the open "rounds":
    ``participants`` (the roster; ``None`` admits any sender) and no replayed message id. A
    client may send several updates trained from one version (it keeps training while no new
    version comes), so there is no ``duplicate`` here; but no sender may fill more than
    ``max_per_sender`` places of one buffer (``buffer_share``), or one participant sending
    updates back to back would *be* every version. By default that is half the buffer (rounded
    up) when the roster has two or more participants, else unbounded. A client's ``ERROR`` is
    counted as ``client_failed``.
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("update"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("model"), Wire("events", required=False))

    def __init__(
        self, *, job_id: str, initial_params: Params, versions: int, buffer_size: int,
        server_lr: float = 1.0, max_staleness: int = 10,
        weighting: Weighting = polynomial_staleness, evaluate: Evaluator | None = None,
        timeout: float = 600.0, participants: Sequence[str] | None = None,
        name: str = "server", max_per_sender: int | None = None,
        version_timeout: float | None = None,
    ) -> None:
        super().__init__(name)
        if versions < 1:
            raise ConfigError(f"versions must be at least 1, got {versions}")
        if timeout <= 0 or (version_timeout is not None and version_timeout <= 0):
            raise ConfigError(f"timeout and version_timeout must be positive, got {timeout} "
                              f"and {version_timeout}")
        self.version_timeout = version_timeout
        #: why the job ended before its last version (``None``: it made every version)
        self.stop_reason: str | None = None
        self.job_id = job_id
        self.buffer = StalenessBuffer(
            initial_params, buffer_size=buffer_size, server_lr=server_lr,
            max_staleness=max_staleness, weighting=weighting,
        )
        self.versions = versions
        self.evaluate = evaluate
        self.timeout = timeout
        self.history: list[VersionRecord] = []
        self.participants = sorted(participants) if participants is not None else None
        if max_per_sender is None and self.participants is not None \
                and len(self.participants) >= 2:
            max_per_sender = -(-self.buffer.buffer_size // 2)
        if max_per_sender is not None:
            max_per_sender = whole_number("max_per_sender", max_per_sender, minimum=1)
        self.max_per_sender = max_per_sender
        self.admission = Admission(  # the buffer checks NaN/Inf as it folds
            job_id=job_id, participants=participants, finite=False, one_per_round=False,
            logger=log)
        self.admission.open(self.buffer.window(), self.buffer.spec)
        self._rejected: Counter[str] = Counter()  # while the current buffer fills
        self.round_listeners: list[Callable[[VersionRecord], None]] = []
        self._done = asyncio.Event()
        self._progress = asyncio.Event()  # set whenever a version is made (and on a first word)
        self._heard = False  # an update (accepted or not) has arrived
        self._began = 0.0

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.buffer.params

    @property
    def rejections(self) -> Counter[str]:
        """Refused updates by reason over the whole job, for metrics exporters."""
        return self.admission.rejections

    async def run(self) -> None:
        self._began = time.perf_counter()
        await self.send("model", self._model())
        end = time.monotonic() + self.timeout
        while not self._done.is_set():
            left = end - time.monotonic()
            stalls = self.version_timeout is not None and self._heard
            wait = min(left, self.version_timeout) if stalls and self.version_timeout else left
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), max(wait, 0.0))
            except TimeoutError:
                self.stop_reason = self._stalled(not stalls or left <= wait)
                log.warning("job %s: %s", self.job_id, self.stop_reason)
                self._done.set()
        await self.send("model", Message.create(
            Kind.CONTROL, job_id=self.job_id, round=self.buffer.version, sender=self.name,
            meta={"action": "stop"},
        ))

    async def on_update(self, msg: Message) -> None:
        if self._done.is_set():
            return
        if not self._heard:  # from now on a version is due every version_timeout
            self._heard = True
            self._progress.set()
        try:
            self.admission.admit(msg)
            if msg.kind is Kind.ERROR or msg.error is not None:
                raise RejectedUpdate(CLIENT_FAILED, msg.error or "error message")
            if self.max_per_sender is not None and sum(
                    sender == msg.sender for sender, _, _ in self.buffer.buffered
            ) >= self.max_per_sender:
                raise RejectedUpdate(BUFFER_SHARE, f"already {self.max_per_sender} of the "
                                                   f"buffer's {self.buffer.buffer_size} places")
            full = await asyncio.to_thread(self.buffer.accept, msg)
        except RejectedUpdate as exc:
            self.admission.reject(msg, exc)
            self._rejected[exc.reason] += 1
            return
        if not full:
            return
        buffered = self.buffer.buffered
        params = await asyncio.to_thread(self.buffer.apply)
        self.admission.open(self.buffer.window())
        record = VersionRecord(
            self.buffer.version, len(buffered), [b[0] for b in buffered], [b[1] for b in buffered],
            rejected=dict(self._rejected),
        )
        self._rejected.clear()
        if self.evaluate is not None:
            record.metrics = await asyncio.to_thread(self.evaluate, params)
        record.elapsed_s = time.perf_counter() - self._began
        self.history.append(record)
        for listener in self.round_listeners:
            listener(record)
        self._progress.set()
        if self.buffer.version >= self.versions:
            self._done.set()
            return
        await self.send("model", self._model())
        await self.send("events", Message.create(
            Kind.METRICS, job_id=self.job_id, round=record.version, sender=self.name,
            metrics=record.metrics, meta=record.to_dict(),
        ))

    def _stalled(self, out_of_time: bool) -> str:
        """Why the job ends short of ``versions``, for ``stop_reason``."""
        made = f"{self.buffer.version} of {self.versions} versions made"
        if out_of_time:
            return f"timeout after {self.timeout:g}s: {made}"
        return (f"no new version within {self.version_timeout:g}s: {made}, "
                f"{len(self.buffer.buffered)} of {self.buffer.buffer_size} updates "
                "buffered for the next")

    def _model(self) -> Message:
        return Message.create(
            Kind.MODEL, job_id=self.job_id, round=self.buffer.version, sender=self.name,
            params=self.buffer.params,
        )
