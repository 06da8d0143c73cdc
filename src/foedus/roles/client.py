"""The client's round (figure 2 of the ALCHIMIA seed) as one pod.

On each global model received on ``model``: load it into the local framework, train on local
data, evaluate, and send the update on ``update`` (through whatever privacy and compression
filters the graph puts after it). Training runs in a worker thread so the event loop keeps
serving the transport. A failure is reported to the server as an ``ERROR`` message: errors travel
as values, and the server skips this client for the round instead of waiting for it.

What the client obeys. The model topic is writable by more parties than the server (a shared
broker, a previous run of the same job), so before acting on a broadcast the client checks:

* **who sent it**: with ``verify_broadcast`` (the ``sign`` stage's
  :meth:`~foedus.security.signing.SignStage.broadcast_verifier`) only broadcasts signed by the
  server are obeyed; anything else is refused (``unsigned``, ``bad_signature``);
* **which run it belongs to**: the server puts its run id in every broadcast (``meta["run"]``).
  A ``stop`` is obeyed only from the run of the newest model this client received. A client
  that has received no model yet (started before the server, or after it finished) does not
  stop at once on a ``stop`` from a run it never saw: that may be the previous run's retained
  leftover, with the next run about to start. If the stop says its run is finished, the
  client ends after ``stop_grace`` seconds unless a model arrives first; other stops are
  ignored (logged once);
* **what protection the server expects**: a model's ``meta["requires"]`` (e.g. ``["mask"]``)
  must be among what this client's pipeline ``provides``; if not, the client fails closed: it
  answers with an ``ERROR`` naming the missing protection instead of sending its parameters.

Every refusal is counted in :attr:`ClientPod.refused` under its reason and logged in one line;
nothing a peer sends ends the client.

When the server goes silent. A server that dies mid-job behind a broker that stays up (MQTT,
Kafka) is not seen by the transport: its clients would wait for the next model forever. With
``silence_timeout`` set (a client process run apart from its server gets
:data:`SILENCE_FACTOR` times the job's ``round_timeout``), a client that joined the job and sent
its answer fails with :class:`ServerSilent` once nothing from the model topic (a model or a
control message) has come for that long. A client training, or one that has not joined yet, is
never ended by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from typing import Any, ClassVar

from foedus.core.errors import ConfigError, FoedusError, RejectedUpdate
from foedus.core.filter import CLIP, MASK, NOISE, Stage
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.data.datasets import Dataset
from foedus.models.base import ModelAdapter, task_seed

log = logging.getLogger("foedus.client")

#: the privacy operations a server can require of every update (``meta["requires"]``): the ones
#: whose absence on one client breaks the job's guarantee for everyone
PROTECTIONS: frozenset[str] = frozenset({CLIP, NOISE, MASK})
#: reasons a client refuses a broadcast (counted in :attr:`ClientPod.refused`)
OTHER_RUN = "other_run"
MALFORMED = "malformed_broadcast"
#: a check of a broadcast: returns if it may be obeyed, raises RejectedUpdate otherwise
BroadcastCheck = Callable[[Message], None]
#: how many times ``round_timeout`` a client run apart from its server waits, after its answer,
#: for the next word from the model topic before it decides the server is gone. A server
#: waits at most ``round_timeout`` for a round, then aggregates and evaluates (and a tree's
#: edges wait less than their parent): 5 leaves room for a slow aggregation or evaluation.
SILENCE_FACTOR = 5.0


class ServerSilent(FoedusError):
    """A client that joined the job heard nothing from its server for ``silence_timeout``
    seconds after its answer: the server is most likely gone behind a broker that stays up."""


def protections_of(pipeline: Iterable[Stage]) -> frozenset[str]:
    """The protections a pipeline gives every update (from its stages' declared
    ``privacy_operations``): the server's ``required_protections`` and a client's ``provides``
    both come from here, each from its own job file."""
    return frozenset(op for stage in pipeline for op in (stage.privacy_operations or ())
                     if op in PROTECTIONS)


class ClientPod(Pod):
    """One participant. ``data`` never leaves this pod; only parameters and metrics do.

    ``verify_broadcast``: checks each broadcast before it is obeyed (None: trust the broker's
    access control). ``provides``: the protections this client's pipeline applies
    (:func:`protections_of`); empty by default, so a server that requires any gets an error,
    never a bare update. ``stop_grace``: how long a client that has received no model waits
    for one after a finished run's ``stop`` before it ends (see the module docstring).
    ``silence_timeout``: how long a client that joined and answered waits for the next model
    or control message before its run fails with :class:`ServerSilent` (None: forever).
    """

    inputs: ClassVar[tuple[Wire, ...]] = (Wire("model"),)
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("update"),)

    def __init__(
        self, *, client_id: str, model: ModelAdapter, data: Dataset, epochs: int = 1,
        eval_data: Dataset | None = None, seed: int = 0, name: str = "client",
        verify_broadcast: BroadcastCheck | None = None,
        provides: Collection[str] = frozenset(), stop_grace: float = 120.0,
        silence_timeout: float | None = None,
    ) -> None:
        super().__init__(name)
        if epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {epochs}")
        if len(data) == 0:
            raise ConfigError(f"client {client_id!r} has no training data")
        if not stop_grace >= 0:
            raise ConfigError(f"stop_grace must be at least 0 seconds, got {stop_grace!r}")
        if silence_timeout is not None and not silence_timeout > 0:
            raise ConfigError(f"silence_timeout must be positive, got {silence_timeout!r}")
        if isinstance(provides, str) or not all(isinstance(p, str) for p in provides):
            raise ConfigError(f"provides must be a collection of names, got {provides!r}")
        self.client_id = client_id
        self.model = model
        self.data = data
        self.eval_data = eval_data
        self.epochs = epochs
        self.seed = seed
        self.verify_broadcast = verify_broadcast
        self.provides = frozenset(provides)
        self.stop_grace = float(stop_grace)
        self.silence_timeout = None if silence_timeout is None else float(silence_timeout)
        self.rounds_trained = 0
        #: called with this client and each answer it sent (an update, or an error): how a
        #: client process shows its progress
        self.round_listeners: list[Callable[[ClientPod, Message], None]] = []
        self.finished = asyncio.Event()
        #: broadcasts refused, by reason
        self.refused: Counter[str] = Counter()
        #: the run of the newest model received (None before any, or from a server without runs)
        self.run_id: str | None = None
        self.joined = False  # received a model: from now on only its run's stop counts
        #: why the client ended: "stopped" (its run's stop) or "finished_before_joining"
        self.end_reason: str | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._ignored_stops: set[Any] = set()  # runs whose stop was ignored (logged once each)
        #: when the silence began (monotonic): the last answer, or the last word from this
        #: client's run since; None while training or before joining (no deadline runs)
        self._quiet_since: float | None = None
        self._last_round = 0  # the round of the last model or answer: named by ServerSilent

    # ---- what arrives on ``model`` -----------------------------------------------------------
    async def on_model(self, msg: Message) -> None:
        if not await self.admit(msg):
            return
        if msg.kind is Kind.CONTROL:
            self.on_control(msg)
            return
        self._last_round = msg.round
        selected = msg.meta.get("selected")
        if selected is not None and self.client_id not in selected:
            self._quiet_since = time.monotonic()  # the server is alive; nothing to train
            return  # not sampled this round
        self._quiet_since = None  # training: no deadline until the answer is sent
        refusal = self.refusal(msg)
        await self.answer(refusal if refusal is not None else await self.trained(msg))

    async def trained(self, msg: Message) -> Message:
        """The update trained from ``msg`` (in a worker thread), or an ``ERROR`` answer when
        training failed: errors travel as values, the round goes on without this client."""
        try:
            return await asyncio.to_thread(self.train, msg)
        except Exception as exc:
            # the model came from the network: one line per round (the traceback at DEBUG),
            # and the error goes to the server as this client's answer
            log.error("client %s failed in round %d: %s: %.200s", self.client_id, msg.round,
                      type(exc).__name__, exc)
            log.debug("client %s: the traceback of round %d", self.client_id, msg.round,
                      exc_info=exc)
            return msg.reply(Kind.ERROR, self.client_id, error=f"{type(exc).__name__}: {exc}")

    async def answer(self, update: Message) -> None:
        """Send this round's answer and tell the round listeners."""
        await self.send("update", update)
        self._quiet_since, self._last_round = time.monotonic(), update.round
        for listener in self.round_listeners:
            listener(self, update)

    async def admit(self, msg: Message) -> bool:
        """Whether ``msg`` is a broadcast to act on: a model or control message, signed by the
        server when broadcasts are verified, with a well-formed run. An admitted model makes
        its run this client's run."""
        if msg.kind not in (Kind.MODEL, Kind.CONTROL) or self.finished.is_set():
            return False  # once ended, a client trains and obeys nothing more
        if self.verify_broadcast is not None:
            try:
                if msg.kind is Kind.MODEL:  # hashing a model is CPU work: off the loop
                    await asyncio.to_thread(self.verify_broadcast, msg)
                else:
                    self.verify_broadcast(msg)
            except RejectedUpdate as exc:
                self._refuse(msg, exc.reason, str(exc))
                return False
        run = msg.meta.get("run")
        if run is not None and not isinstance(run, str):
            self._refuse(msg, MALFORMED, f"run id {run!r} is not a string")
            return False
        if msg.kind is Kind.MODEL:
            if self._grace is not None:  # a run is on after all: the old stop was a leftover
                self._grace.cancel()
                self._grace = None
            if run != self.run_id and self.joined:
                log.info("client %s follows a new run of job %s (%s)", self.client_id,
                         msg.header.job_id, run)
            self.run_id, self.joined = run, True
        return True

    def on_control(self, msg: Message) -> None:
        """Obey a ``stop`` of this client's run (see the module docstring for the rule)."""
        run = msg.meta.get("run")
        if self.joined and run == self.run_id and self._quiet_since is not None:
            self._quiet_since = time.monotonic()  # a word from this client's run
        if msg.meta.get("action") != "stop":
            return
        if self.joined:
            if run == self.run_id:
                self._finish("stopped")
            else:
                self._refuse(msg, OTHER_RUN, f"stop of run {run!r}, this client is in run "
                                             f"{self.run_id!r}")
            return
        if run not in self._ignored_stops:
            self._ignored_stops.add(run)
            log.info("client %s has received no model yet: a stop of run %r may be a previous "
                     "run's leftover; %s", self.client_id, run,
                     f"ending in {self.stop_grace:g}s unless a model arrives"
                     if msg.meta.get("finished") is True else "ignored")
        if msg.meta.get("finished") is True and self._grace is None and not self.finished.is_set():
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(self.stop_grace, self._finish,
                                          "finished_before_joining")

    def refusal(self, msg: Message) -> Message | None:
        """The ``ERROR`` answer to a model that requires protections this client does not
        provide (fail closed: its parameters never leave), or None when it may train."""
        requires = msg.meta.get("requires", ())
        if not isinstance(requires, list | tuple) or not all(isinstance(r, str)
                                                              for r in requires):
            requires = ["<unreadable requires>"]
        missing = sorted(set(requires) - self.provides)
        if not missing:
            return None
        log.warning("client %s will not send its update in round %d: the server requires %s, "
                    "which this client's pipeline does not provide", self.client_id, msg.round,
                    ", ".join(missing))
        return msg.reply(Kind.ERROR, self.client_id, error=(
            f"missing protection: {', '.join(missing)} (required by the server; add the stage "
            "to this client's pipeline)"))

    def _refuse(self, msg: Message, reason: str, detail: str) -> None:
        self.refused[reason] += 1
        log.warning("client %s refused a %s (round %d) on the model topic: %s: %.200s",
                    self.client_id, msg.kind.value, msg.round, reason, detail)

    def _finish(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        if reason != "stopped":
            log.warning("client %s ends without having trained: the job's run finished "
                        "before this client joined it (no model within %gs of its stop)",
                        self.client_id, self.stop_grace)
        self.finished.set()

    async def stop(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        await super().stop()

    def round_seed(self, model_msg: Message) -> int:
        """The seed of the local round trained from ``model_msg``: the same in real runs and
        simulations (:func:`~foedus.models.base.task_seed`)."""
        return task_seed(self.seed, self.client_id, model_msg.round)

    def train(self, model_msg: Message) -> Message:
        """One local round: load, fit, evaluate; returns the update message."""
        self.model.set_params(model_msg.params)
        self.model.begin_round(self.round_seed(model_msg))
        train_metrics = self.model.fit(self.data, epochs=self.epochs)
        metrics = {f"train_{k}": v for k, v in train_metrics.items()}
        if self.eval_data is not None and len(self.eval_data):
            metrics.update({f"eval_{k}": v for k, v in self.model.evaluate(self.eval_data).items()})
        self.rounds_trained += 1
        return model_msg.reply(
            Kind.UPDATE, self.client_id, params=self.model.get_params(),
            num_examples=len(self.data), metrics=metrics,
        )

    async def run(self) -> None:
        """Wait until the client ends: its run's stop, or (with ``silence_timeout``) a server
        silent for that long after this client's answer, which raises :class:`ServerSilent`."""
        while not self.finished.is_set():
            limit = self.silence_timeout
            if limit is None:
                await self.finished.wait()
                return
            since = self._quiet_since
            # training or not joined: look again in ``limit`` (the answer starts the clock)
            left = limit if since is None else since + limit - time.monotonic()
            if left <= 0:
                raise ServerSilent(
                    f"no model from the job's server for {limit:g}s after round "
                    f"{self._last_round}: is the server still running?")
            # a timeout is no verdict: the deadline may have moved meanwhile (measured above)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), timeout=left)
