"""The asyncio runtime that runs a graph.

Every pod gets one bounded inbox and one worker task, so a pod's handlers never run concurrently
with each other (pods may keep plain state) while different pods run in parallel. Delivery into
a full inbox waits: a slow pod slows its producers instead of growing memory without bound
(backpressure). Synchronous handlers of ``blocking`` pods run in a worker thread so training and
aggregation do not freeze the event loop. A handler that raises is recorded as a
:class:`~foedus.core.errors.PodError` naming the pod, the wire and the round; the graph goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter
from dataclasses import dataclass, field

from foedus.core.errors import GraphError, PodError
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.pod import Pod

log = logging.getLogger("foedus.runtime")

_STOP = object()


@dataclass
class RuntimeStats:
    """Counters a test or a metrics exporter can read while the graph runs."""

    handled: Counter[str] = field(default_factory=Counter)  # "pod.wire" -> messages handled
    discarded: Counter[str] = field(default_factory=Counter)  # emitted on unconnected outputs
    failures: list[PodError] = field(default_factory=list)


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
        """Wait for the non-daemon ``run`` drivers to finish (e.g. the server's last round)."""
        await asyncio.gather(*self._driver_tasks, return_exceptions=True)

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
        handler = pod.handler(wire)
        try:
            if inspect.iscoroutinefunction(handler):
                await handler(msg)  # type: ignore[misc]
            elif pod.blocking:
                await asyncio.to_thread(handler, msg)
            else:
                handler(msg)
        except Exception as exc:
            pod.take_outbox()  # a failed handler's partial output must not leak downstream
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
        for out_wire, out_msg in pod.take_outbox():
            await self.deliver(pod, out_wire, out_msg)

    def _record(self, error: PodError) -> None:
        log.error("%s", error, exc_info=error.cause)
        self.stats.failures.append(error)


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
