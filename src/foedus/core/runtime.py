"""The asyncio runtime that runs a graph.

Every pod gets one bounded inbox and one worker task, so a pod's handlers never run concurrently
with each other (pods may keep plain state) while different pods run in parallel. Delivery into
a full inbox waits: a slow pod slows its producers instead of growing memory without bound
(backpressure). Synchronous handlers of ``blocking`` pods run in a worker thread so training and
aggregation do not freeze the event loop. A handler that raises is recorded as a
:class:`~foedus.core.errors.PodError` naming the pod, the wire and the round; the graph goes on.

A ``run`` that raises is recorded the same way (wire ``run``) and ends :meth:`Runtime.wait`, even
a daemon's: a source that failed (a subscription whose transport gave up reconnecting) will
never deliver again, so drivers waiting for its messages would wait forever. Whoever waits
re-raises such a failure (:func:`run_graphs`, the job runner) and so reports it: the runtime
logs a deliberate one (a :class:`~foedus.core.errors.FoedusError`) at WARNING, so that a
command says it once; a bug is logged at ERROR with its traceback. A source still retrying
within its transport's budget has not failed and ends nothing.

A handler that raises :class:`~foedus.core.errors.RejectedUpdate` has not failed: it refused
a message, which is the normal course of things for input from the network. Such a refusal is
data, so it travels down the pipe like data: a :class:`~foedus.core.filter.Filter` that refuses
sends the message on, marked as refused (:func:`refusal`), and every later filter passes a
marked message on untouched, until it reaches the pod at the end of the filters (the pod that
aggregates), whose admission counts it under its reason with every other refusal of the round.
No wiring is needed: the refusal takes the path the message would have taken. A refusal that
no pod takes (a non-filter pod refused, or the marked message reached a pod that could not
handle it) is counted in ``stats.refused`` and logged in one line, never as a failure.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from foedus.core.errors import FoedusError, GraphError, PodError, RejectedUpdate
from foedus.core.filter import Filter
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.pod import Pod

log = logging.getLogger("foedus.runtime")

_STOP = object()

#: the meta key under which a refused message carries its :class:`RejectedUpdate`. The value is
#: an exception object, which no codec can produce: a peer cannot forge a refusal
REFUSAL = "foedus.refusal"


def refusal(msg: Message, exc: RejectedUpdate) -> Message:
    """``msg`` marked as refused for ``exc``'s reason. Its parameters, metrics and meta are
    dropped (nothing downstream may use them; the envelope is what the counting pod reads)."""
    return msg.replace(params={}, metrics={}, meta={REFUSAL: exc})


def refusal_of(msg: Message) -> RejectedUpdate | None:
    """The refusal ``msg`` carries (see :func:`refusal`), or ``None`` for an ordinary message."""
    value = msg.meta.get(REFUSAL)
    return value if isinstance(value, RejectedUpdate) else None


@dataclass
class RuntimeStats:
    """Counters a test or a metrics exporter can read while the graph runs."""

    handled: Counter[str] = field(default_factory=Counter)  # "pod.wire" -> messages handled
    discarded: Counter[str] = field(default_factory=Counter)  # emitted on unconnected outputs
    failures: list[PodError] = field(default_factory=list)
    #: refusals no pod counted, "pod.wire: reason" -> messages (see the module docstring)
    refused: Counter[str] = field(default_factory=Counter)


class Runtime:
    """Runs one validated graph. Use as ``async with Runtime(graph):`` or start()/stop()."""

    def __init__(self, graph: Graph, *, queue_size: int = 16) -> None:
        if queue_size < 1:
            raise GraphError(f"queue_size must be at least 1, got {queue_size}")
        graph.validate()
        self.graph = graph
        self.queue_size = queue_size
        self.stats = RuntimeStats()
        self._inboxes: dict[str, asyncio.Queue[tuple[str, Message] | object]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._run_tasks: list[asyncio.Task[None]] = []
        self._driver_tasks: list[asyncio.Task[None]] = []
        #: set when any pod's ``run`` raised: the graph cannot go on as built (see the module)
        self._run_failed = asyncio.Event()
        self._started = False

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            raise GraphError(f"graph {self.graph.name!r} is already running")
        self._started = True
        self._run_failed = asyncio.Event()
        for name, pod in self.graph.pods.items():
            pod._runtime = self
            self._inboxes[name] = asyncio.Queue(self.queue_size)
        for pod in self.graph.pods.values():
            await pod.start()
        for name, pod in self.graph.pods.items():
            self._tasks.append(asyncio.create_task(self._work(pod), name=f"pod:{name}"))
            if pod.has_run:
                task = asyncio.create_task(self._run(pod), name=f"run:{name}")
                self._run_tasks.append(task)
                if not pod.daemon:
                    self._driver_tasks.append(task)

    async def stop(self) -> None:
        """Stop drivers, let every inbox drain, then stop pods. Safe to call twice."""
        if not self._started:
            return
        for task in self._run_tasks:
            task.cancel()
        await asyncio.gather(*self._run_tasks, return_exceptions=True)
        await self.drain()
        for inbox in self._inboxes.values():
            await inbox.put(_STOP)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pod in self.graph.pods.values():
            try:
                await pod.stop()
            except Exception as exc:  # a failing stop must not keep others running
                self._record(PodError(pod.name, "stop", None, exc))
            pod._runtime = None
        self._tasks.clear()
        self._run_tasks.clear()
        self._driver_tasks.clear()
        self._started = False

    async def drain(self) -> None:
        """Wait until every message already in the graph has been handled."""
        for _ in range(len(self.graph.pods) + 1):  # each pass settles one more hop
            await asyncio.gather(*(q.join() for q in self._inboxes.values()))

    async def wait(self) -> None:
        """Wait for the non-daemon ``run`` drivers to finish (e.g. the server's last round), or
        until any pod's ``run`` fails, a daemon's included (its failure is in ``stats.failures``;
        see the module docstring)."""
        drivers: asyncio.Future[Any] = asyncio.gather(*self._driver_tasks,
                                                      return_exceptions=True)
        failed: asyncio.Future[Any] = asyncio.ensure_future(self._run_failed.wait())
        try:
            await asyncio.wait({drivers, failed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            drivers.cancel()  # as a cancelled gather of the drivers did
            raise
        finally:
            failed.cancel()

    async def inject(self, pod: str, wire: str, msg: Message) -> None:
        """Put a message on an input wire from outside the graph (tests, sources)."""
        if pod not in self.graph.pods or wire not in self.graph.pods[pod].input_wires:
            raise GraphError(f"no input wire {pod}.{wire} in graph {self.graph.name!r}")
        await self._inboxes[pod].put((wire, msg))

    async def deliver(self, pod: Pod, wire: str, msg: Message) -> None:
        """Carry a message emitted on ``pod.wire`` to every connected input."""
        targets = self.graph.targets(pod.name, wire)
        if not targets:
            self.stats.discarded[f"{pod.name}.{wire}"] += 1
            return
        for end in targets:
            await self._inboxes[end.pod].put((end.wire, msg))

    # ---- internals -------------------------------------------------------------------------
    async def _work(self, pod: Pod) -> None:
        inbox = self._inboxes[pod.name]
        while True:
            item = await inbox.get()
            try:
                if item is _STOP:
                    return
                wire, msg = item  # type: ignore[misc]
                await self._handle(pod, wire, msg)
            finally:
                inbox.task_done()

    async def _handle(self, pod: Pod, wire: str, msg: Message) -> None:
        refused = refusal_of(msg)
        if refused is not None and isinstance(pod, Filter):
            await self.deliver(pod, "out", msg)  # on to the pod that counts it, untouched
            return
        handler = pod.handler(wire)
        try:
            if inspect.iscoroutinefunction(handler):
                await handler(msg)  # type: ignore[misc]
            elif pod.blocking:
                await asyncio.to_thread(handler, msg)
            else:
                handler(msg)
        except RejectedUpdate as exc:
            pod.take_outbox()
            await self._refuse(pod, wire, msg, exc)
            return
        except Exception as exc:
            pod.take_outbox()  # a failed handler's partial output must not leak downstream
            if refused is not None:  # the refusal reached a pod that cannot take refusals
                self._count_refusal(pod, wire, msg, refused)
            else:
                self._record(PodError(pod.name, wire, msg.header.round, exc))
            return
        finally:
            self.stats.handled[f"{pod.name}.{wire}"] += 1
        for out_wire, out_msg in pod.take_outbox():
            await self.deliver(pod, out_wire, out_msg)

    async def _run(self, pod: Pod) -> None:
        try:
            await pod.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._record(PodError(pod.name, "run", None, exc))
            self._run_failed.set()
        for out_wire, out_msg in pod.take_outbox():
            await self.deliver(pod, out_wire, out_msg)

    async def _refuse(self, pod: Pod, wire: str, msg: Message, exc: RejectedUpdate) -> None:
        """A filter's refusal goes on down its pipe; any other pod's is counted here."""
        if isinstance(pod, Filter) and self.graph.targets(pod.name, "out"):
            await self.deliver(pod, "out", refusal(msg, exc))
        else:
            self._count_refusal(pod, wire, msg, exc)

    def _count_refusal(self, pod: Pod, wire: str, msg: Message, exc: RejectedUpdate) -> None:
        self.stats.refused[f"{pod.name}.{wire}: {exc.reason}"] += 1
        log.warning("pod %r refused a message from %.64r (round %d) on %r: %s: %.200s",
                    pod.name, msg.header.sender, msg.header.round, wire, exc.reason, exc.detail)

    def _record(self, error: PodError) -> None:
        # a FoedusError is raised on purpose and its message says what is wrong (a server that
        # refuses to start over its checkpoints): one line; anything else is a bug: traceback.
        # A deliberate failure of a run ends the wait and whoever waits re-raises it, and so
        # reports it (the foedus command: `foedus: error: ...`): a WARNING here, not the same
        # text as an ERROR line first
        self.stats.failures.append(error)
        if not isinstance(error.cause, FoedusError):
            log.error("%s", error, exc_info=error.cause)
        elif error.wire == "run":
            log.warning("%s", error)
        else:
            log.error("%s", error)


async def run_graphs(
    leader: Runtime, *followers: Runtime, grace: float = 10.0
) -> None:
    """Start followers then the leader; when the leader's drivers finish, give the followers
    ``grace`` seconds to finish theirs, then stop everything. A leader whose driver failed
    re-raises that failure after cleanup, so a crashed server never looks like a finished job."""
    started: list[Runtime] = []
    try:
        for rt in (*followers, leader):
            await rt.start()
            started.append(rt)
        await leader.wait()
        if followers:
            pending = asyncio.gather(*(rt.wait() for rt in followers))
            try:
                await asyncio.wait_for(pending, timeout=grace)
            except TimeoutError:
                log.warning("%d follower graphs still running after %.1fs; stopping them",
                            len(followers), grace)
    finally:
        for rt in reversed(started):
            await rt.stop()
    for failure in leader.stats.failures:
        if failure.wire == "run":
            raise failure
