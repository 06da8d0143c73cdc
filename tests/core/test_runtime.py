"""The runtime isolates failures, applies backpressure and keeps the event loop free."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import ClassVar

import pytest

from foedus.core.errors import RejectedUpdate, TransportError
from foedus.core.filter import Filter
from foedus.core.graph import Graph
from foedus.core.message import Kind, Message
from foedus.core.pod import Pod, Wire
from foedus.core.runtime import REFUSAL, Runtime, refusal, refusal_of
from foedus.testing import wait_until


def msg(round: int = 1) -> Message:
    return Message.create(Kind.UPDATE, job_id="j", round=round, sender="s")


class Collect(Pod):
    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)

    def __init__(self, name: str = "sink") -> None:
        super().__init__(name)
        self.got: list[Message] = []

    def on_in(self, m: Message) -> None:
        self.got.append(m)


class Explode(Filter):
    """Fails on odd rounds, passes even ones."""

    def process(self, m: Message) -> Message:
        if m.round % 2:
            raise RuntimeError("boom")
        return m


async def test_failing_handler_is_reported_with_pod_wire_and_round_and_graph_goes_on() -> None:
    sink = Collect()
    g = Graph("g").add(Explode("explode"), sink).connect("explode.out", "sink.in")
    g.expose("explode.in")
    async with Runtime(g) as rt:
        for r in range(1, 5):
            await rt.inject("explode", "in", msg(r))
        await rt.drain()
    assert [m.round for m in sink.got] == [2, 4]
    assert [(f.pod, f.wire, f.round) for f in rt.stats.failures] == [
        ("explode", "in", 1), ("explode", "in", 3),
    ]
    assert "pod 'explode', wire 'in', round 1: RuntimeError: boom" in str(rt.stats.failures[0])


async def test_full_inbox_makes_the_producer_wait() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    class Slow(Pod):
        inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)

        async def on_in(self, m: Message) -> None:
            entered.set()
            await release.wait()

    class Producer(Pod):
        outputs: ClassVar[tuple[Wire, ...]] = (Wire("out"),)
        sent = 0

        async def run(self) -> None:
            for r in range(10):
                await self.send("out", msg(r))
                Producer.sent += 1

    g = Graph("g").add(Producer("p"), Slow("slow")).connect("p.out", "slow.in")
    rt = Runtime(g, queue_size=2)
    await rt.start()
    await wait_until(lambda: entered.is_set() and Producer.sent >= 3, 10)
    for _ in range(50):  # every ready task gets many turns: an unblocked producer would go on
        await asyncio.sleep(0)
    # one message in the handler, two in the queue: the producer is stuck at the third send
    assert Producer.sent == 3
    release.set()
    await rt.wait()
    assert Producer.sent == 10
    await rt.stop()


async def test_blocking_handlers_run_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    handler_threads: list[int] = []
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    class Heavy(Filter):
        blocking = True

        def process(self, m: Message) -> Message:
            handler_threads.append(threading.get_ident())
            started.set()
            # CPU-heavy work stands in here: it holds its thread until the loop has shown that
            # it keeps running meanwhile (bounded, so a handler wrongly on the loop cannot hang)
            release.wait(10)
            finished.set()
            return m

    sink = Collect()
    g = Graph("g").add(Heavy("heavy"), sink).connect("heavy.out", "sink.in").expose("heavy.in")
    async with Runtime(g) as rt:
        await rt.inject("heavy", "in", msg())
        await wait_until(started.is_set, 10)
        for _ in range(20):  # the loop keeps running while the handler holds its thread
            await asyncio.sleep(0)
        handler_still_running = not finished.is_set()
        release.set()
        await rt.drain()
    assert handler_still_running  # we got here while it ran: the loop was never blocked
    assert handler_threads and handler_threads[0] != loop_thread
    assert len(sink.got) == 1


async def test_messages_on_unconnected_optional_outputs_are_counted_not_lost_silently() -> None:
    class Talker(Pod):
        inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)
        outputs: ClassVar[tuple[Wire, ...]] = (Wire("log", required=False),)

        def on_in(self, m: Message) -> None:
            self.emit("log", m)

    g = Graph("g").add(Talker("t")).expose("t.in")
    async with Runtime(g) as rt:
        await rt.inject("t", "in", msg())
        await rt.drain()
    assert rt.stats.discarded["t.log"] == 1


async def test_failed_handler_output_is_not_delivered() -> None:
    class Half(Pod):
        inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)
        outputs: ClassVar[tuple[Wire, ...]] = (Wire("out"),)

        def on_in(self, m: Message) -> None:
            self.emit("out", m)
            raise ValueError("after emitting")

    sink = Collect()
    g = Graph("g").add(Half("h"), sink).connect("h.out", "sink.in").expose("h.in")
    async with Runtime(g) as rt:
        await rt.inject("h", "in", msg())
        await rt.drain()
    assert sink.got == []
    assert len(rt.stats.failures) == 1


async def test_start_and_stop_hooks_run_once_and_stop_is_idempotent() -> None:
    calls: list[str] = []

    class Hooked(Collect):
        async def start(self) -> None:
            calls.append("start")

        async def stop(self) -> None:
            calls.append("stop")

    g = Graph("g").add(Hooked("h")).expose("h.in")
    rt = Runtime(g)
    await rt.start()
    await rt.stop()
    await rt.stop()
    assert calls == ["start", "stop"]


class Refuse(Filter):
    """Refuses odd rounds with a reason, passes even ones."""

    def process(self, m: Message) -> Message:
        if m.round % 2:
            raise RejectedUpdate("odd_round", f"round {m.round} is odd")
        return m


class Tag(Filter):
    """A later filter: marks what it processed, so a test sees what it was given."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seen: list[int] = []

    def process(self, m: Message) -> Message:
        self.seen.append(m.round)
        return m.replace(meta={"tagged": True})


async def test_a_filters_refusal_travels_down_the_pipe_untouched_to_the_pod_at_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    later, sink = Tag("later"), Collect()
    g = Graph("g").add(Refuse("refuse"), later, sink)
    g.connect("refuse.out", "later.in").connect("later.out", "sink.in").expose("refuse.in")
    with caplog.at_level(logging.DEBUG):
        async with Runtime(g) as rt:
            for r in (1, 2):
                await rt.inject("refuse", "in", msg(r))
            await rt.drain()
    assert later.seen == [2]  # the refusal passed the later filter without being processed
    refused, passed = sorted(sink.got, key=lambda m: m.round)
    reason = refusal_of(refused)
    assert reason is not None and (reason.reason, reason.detail) == ("odd_round",
                                                                     "round 1 is odd")
    assert (refused.sender, refused.round) == ("s", 1) and not refused.params
    assert refusal_of(passed) is None and passed.meta["tagged"]
    assert not rt.stats.failures and not rt.stats.refused
    assert not caplog.records  # counting it is the job of the pod at the end


async def test_a_refusal_no_pod_takes_is_counted_in_one_line_never_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Gate(Pod):  # not a filter: nothing downstream to carry its refusal to
        inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)

        def on_in(self, m: Message) -> None:
            raise RejectedUpdate("closed", "the gate is closed")

    class Strict(Pod):  # a pod at the end of a pipe that cannot take a refusal
        inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)

        def on_in(self, m: Message) -> None:
            raise TypeError(f"cannot handle {dict(m.meta)}")

    g = Graph("g").add(Gate("gate"), Refuse("refuse"), Strict("strict"))
    g.connect("refuse.out", "strict.in").expose("gate.in").expose("refuse.in")
    with caplog.at_level(logging.WARNING):
        async with Runtime(g) as rt:
            await rt.inject("gate", "in", msg(2))
            await rt.inject("refuse", "in", msg(1))
            await rt.drain()
    assert rt.stats.refused == {"gate.in: closed": 1, "strict.in: odd_round": 1}
    assert not rt.stats.failures
    assert len(caplog.records) == 2 and not any(r.exc_info for r in caplog.records)


def test_a_peer_cannot_forge_a_refusal() -> None:
    """Only an exception object marks a refusal, and no codec can produce one."""
    forged = msg().replace(meta={REFUSAL: {"reason": "odd_round", "detail": "x"}})
    assert refusal_of(forged) is None
    assert refusal_of(refusal(msg(), RejectedUpdate("odd_round"))) is not None


class Source(Pod):
    """A daemon source (a link reading a topic): emits nothing, and its ``run`` fails once
    ``give_up`` is set, as a reader does whose transport spent its reconnect budget."""

    outputs: ClassVar[tuple[Wire, ...]] = (Wire("out", required=False),)
    daemon = True

    def __init__(self) -> None:
        super().__init__("reader")
        self.give_up = asyncio.Event()

    async def run(self) -> None:
        await self.give_up.wait()  # connected, or retrying within its budget
        raise TransportError("subscription to 'job.model' broke and could not be re-established")


class Driver(Pod):
    """A driver waiting for its source (a client waiting for the server's next model)."""

    def __init__(self) -> None:
        super().__init__("driver")
        self.done = asyncio.Event()

    async def run(self) -> None:
        await self.done.wait()


async def test_a_daemon_source_that_fails_ends_the_wait_for_the_drivers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, driver = Source(), Driver()
    async with Runtime(Graph("g").add(source, driver)) as rt:
        source.give_up.set()
        await asyncio.wait_for(rt.wait(), 5)  # the driver alone would wait forever
        assert not driver.done.is_set()
    [failure] = rt.stats.failures
    assert (failure.pod, failure.wire) == ("reader", "run")
    assert "subscription to 'job.model' broke" in str(failure)
    # whoever waits re-raises it and says it (foedus: error: ...); here it is only a WARNING
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", str(failure))]


async def test_a_daemon_source_still_running_ends_nothing() -> None:
    source, driver = Source(), Driver()
    async with Runtime(Graph("g").add(source, driver)) as rt:
        waiting = asyncio.ensure_future(rt.wait())
        for _ in range(50):  # every ready task gets many turns: a wrongly ended wait would end
            await asyncio.sleep(0)
        assert not waiting.done()  # a reader retrying within its budget is no failure
        driver.done.set()
        await asyncio.wait_for(waiting, 10)
    assert rt.stats.failures == []
