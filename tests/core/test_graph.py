"""Graphs are validated when built; every error lists the valid choices."""

from __future__ import annotations

from typing import ClassVar

import pytest

from foedus.core.errors import GraphError
from foedus.core.filter import Chain, Filter, Identity
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.pod import Pod, Wire


class Source(Pod):
    outputs: ClassVar[tuple[Wire, ...]] = (Wire("out"),)


class Sink(Pod):
    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)

    def on_in(self, msg: Message) -> None:
        pass


class Special(Message):
    """A narrower message type, to check wire types."""


class SpecialSink(Pod):
    inputs: ClassVar[tuple[Wire, ...]] = (Wire("in", Special),)

    def on_in(self, msg: Message) -> None:
        pass


def test_unknown_pod_error_lists_the_pods() -> None:
    g = Graph("g").add(Source("a"), Sink("b"))
    with pytest.raises(GraphError, match=r"no pod 'x'; pods: a, b"):
        g.connect("x.out", "b.in")


def test_unknown_wire_error_lists_the_wires() -> None:
    g = Graph("g").add(Source("a"), Sink("b"))
    with pytest.raises(GraphError, match=r"no output wire 'update'; output wires: out"):
        g.connect("a.update", "b.in")
    with pytest.raises(GraphError, match=r"no input wire 'model'; input wires: in"):
        g.connect("a.out", "b.model")


def test_endpoint_must_name_pod_and_wire() -> None:
    g = Graph("g").add(Source("a"), Sink("b"))
    with pytest.raises(GraphError, match=r"'pod\.wire'"):
        g.connect("a", "b.in")


def test_wire_types_must_fit() -> None:
    g = Graph("g").add(Source("a"), SpecialSink("b"))
    with pytest.raises(GraphError, match="types do not fit"):
        g.connect("a.out", "b.in")


def test_unconnected_required_wires_are_reported_together() -> None:
    g = Graph("g").add(Source("a"), Sink("b"))
    with pytest.raises(GraphError) as err:
        g.validate()
    assert "required input b.in is not connected" in str(err.value)
    assert "output a.out is not connected" in str(err.value)


def test_cycles_are_rejected_with_the_path() -> None:
    f1, f2 = Identity("f1"), Identity("f2")
    g = Graph("g").add(f1, f2).connect("f1.out", "f2.in").connect("f2.out", "f1.in")
    with pytest.raises(GraphError, match=r"cycle: f1 -> f2 -> f1"):
        g.validate()


def test_input_without_handler_is_a_build_error() -> None:
    class Deaf(Pod):
        inputs: ClassVar[tuple[Wire, ...]] = (Wire("in"),)

    g = Graph("g").add(Source("a"), Deaf("d")).connect("a.out", "d.in")
    with pytest.raises(GraphError, match=r"define on_in\(\)"):
        g.validate()


def test_pods_extend_by_adding_wires_and_assigning_handlers() -> None:
    seen: list[Message] = []
    pod = Sink("s")
    pod.add_input("extra", seen.append)
    pod.add_output("echo", required=False)
    assert set(pod.input_wires) == {"in", "extra"}
    assert pod.handler("extra") is not None
    with pytest.raises(GraphError, match="valid: in"):
        Sink("t").set_handler("nope", seen.append)


def test_filters_chain_with_pipe_into_one_pod() -> None:
    class Tag(Filter):
        def process(self, msg: Message) -> Message:
            return msg.push_trail(self.name)

    chain = Tag("a") | Tag("b") | Tag("c")
    assert isinstance(chain, Chain)
    assert [f.name for f in chain.filters] == ["a", "b", "c"]
    msg = Message.create("update", job_id="j", round=1, sender="s")
    out = chain(msg)
    assert out is not None and out.trail == ("a", "b", "c")


def test_only_filters_chain() -> None:
    with pytest.raises(GraphError, match="only filters chain"):
        Source("a") | Identity("b")


def test_duplicate_pod_names_are_refused() -> None:
    with pytest.raises(GraphError, match="already has a pod named 'a'"):
        Graph("g").add(Source("a"), Sink("a"))


def test_exposed_inputs_count_as_connected() -> None:
    g = Graph("g").add(Sink("b")).expose("b.in")
    g.validate()
    with pytest.raises(GraphError, match="no input wire 'x'"):
        g.expose("b.x")


def test_feedback_edges_close_a_loop_on_purpose() -> None:
    f1, f2 = Identity("f1"), Identity("f2")
    g = Graph("g").add(f1, f2).connect("f1.out", "f2.in")
    g.connect("f2.out", "f1.in", feedback=True)
    g.validate()


def test_pipe_chains_filters_and_feeds_their_model_wire() -> None:
    class NeedsModel(Identity):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.add_input("model", lambda m: None, required=False)

    g = Graph("g").add(Source("a"), Sink("b"), Source("m"))
    g.pipe("a.out", [Identity("f1"), NeedsModel("f2")], "b.in", model="m.out")
    edges = {(str(s), str(d)) for s, d in g.edges}
    assert {("a.out", "f1.in"), ("f1.out", "f2.in"), ("f2.out", "b.in"),
            ("m.out", "f2.model")} <= edges
    with pytest.raises(GraphError, match="no model source was given"):
        Graph("h").add(Source("a"), Sink("b")).pipe("a.out", [NeedsModel("f")], "b.in")
