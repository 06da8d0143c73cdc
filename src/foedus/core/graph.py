"""Graphs: pods joined by wires, validated before anything runs.

``graph.connect("trainer.update", "uplink.in")`` joins an output wire to an input wire. Every
mistake (an unknown pod or wire, a type that does not fit, a required input left unconnected, a
cycle) is a :class:`GraphError` raised by :meth:`Graph.validate`, and its message lists the valid
choices, so a wiring bug is found when the graph is built, not in round 37.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from foedus.core.errors import GraphError
from foedus.core.filter import MODEL_WIRE, Filter, wants_model
from foedus.core.pod import Pod, Wire


@dataclass(frozen=True, slots=True)
class Endpoint:
    pod: str
    wire: str

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        pod, sep, wire = text.rpartition(".")
        if not sep or not pod or not wire:
            raise GraphError(f"endpoint {text!r} must be written 'pod.wire'")
        return cls(pod, wire)

    def __str__(self) -> str:
        return f"{self.pod}.{self.wire}"


class Graph:
    """A named set of pods and the wires between them; one actor (server, client, peer) each."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.pods: dict[str, Pod] = {}
        self.edges: list[tuple[Endpoint, Endpoint]] = []
        self.entries: set[Endpoint] = set()
        self.feedback: set[tuple[Endpoint, Endpoint]] = set()

    def add(self, *pods: Pod) -> Graph:
        """Add pods; names must be unique within the graph."""
        for pod in pods:
            if pod.name in self.pods:
                raise GraphError(f"graph {self.name!r} already has a pod named {pod.name!r}")
            self.pods[pod.name] = pod
        return self

    def connect(self, source: str, target: str, *, feedback: bool = False) -> Graph:
        """Join output ``source`` ("pod.wire") to input ``target``; checked immediately.

        ``feedback=True`` marks an edge that closes a loop on purpose (a simulated client pool
        answering the server that feeds it). Cycle detection ignores it; it is safe when the
        loop's sender is a driver (``run``), not a handler waiting on its own downstream.
        """
        src, dst = Endpoint.parse(source), Endpoint.parse(target)
        src_wire = self._wire(src, "output")
        dst_wire = self._wire(dst, "input")
        if not issubclass(src_wire.type, dst_wire.type):
            raise GraphError(
                f"cannot connect {src} ({src_wire.type.__name__}) to {dst} "
                f"({dst_wire.type.__name__}): types do not fit"
            )
        if (src, dst) in self.edges:
            raise GraphError(f"{src} is already connected to {dst}")
        self.edges.append((src, dst))
        if feedback:
            self.feedback.add((src, dst))
        return self

    def expose(self, target: str) -> Graph:
        """Declare input ``target`` fed from outside the graph (``Runtime.inject``), so it counts
        as connected: the entry points of a graph embedded in a test or a larger program."""
        end = Endpoint.parse(target)
        self._wire(end, "input")
        self.entries.add(end)
        return self

    def chain(self, *pods: Pod, source: str = "out", target: str = "in") -> Graph:
        """Add pods (if new) and connect each one's ``source`` wire to the next one's ``target``."""
        for pod in pods:
            if pod.name not in self.pods:
                self.add(pod)
        for a, b in itertools.pairwise(pods):
            self.connect(f"{a.name}.{source}", f"{b.name}.{target}")
        return self

    def pipe(
        self, source: str, filters: Sequence[Filter], target: str, *,
        model: str | None = None, model_feedback: bool = False,
    ) -> Graph:
        """Add ``filters`` and connect ``source -> each filter -> target``. A filter that
        declares the ``model`` input is connected to ``model`` (the global model stream; a
        feedback edge when ``model_feedback``, as on a server whose output feeds its decoders)."""
        current = source
        for f in filters:
            self.add(f)
            self.connect(current, f"{f.name}.in")
            current = f"{f.name}.out"
            if wants_model(f):
                if model is None:
                    raise GraphError(
                        f"filter {f.name!r} needs the global model on its {MODEL_WIRE!r} wire, "
                        "but no model source was given"
                    )
                self.connect(model, f"{f.name}.{MODEL_WIRE}", feedback=model_feedback)
        return self.connect(current, target)

    def targets(self, pod: str, wire: str) -> list[Endpoint]:
        """Where messages emitted on ``pod.wire`` go."""
        return [dst for src, dst in self.edges if src.pod == pod and src.wire == wire]

    def validate(self) -> None:
        """Raise :class:`GraphError` describing every problem at once, or return quietly."""
        problems: list[str] = []
        connected_in = {(d.pod, d.wire) for _, d in self.edges}
        connected_in |= {(e.pod, e.wire) for e in self.entries}
        connected_out = {(s.pod, s.wire) for s, _ in self.edges}
        for pod in self.pods.values():
            for wire in pod.input_wires.values():
                if wire.required and (pod.name, wire.name) not in connected_in:
                    problems.append(f"required input {pod.name}.{wire.name} is not connected")
                try:
                    pod.handler(wire.name)
                except GraphError as exc:
                    problems.append(str(exc))
            for wire in pod.output_wires.values():
                if wire.required and (pod.name, wire.name) not in connected_out:
                    problems.append(
                        f"output {pod.name}.{wire.name} is not connected (mark it "
                        "required=False to allow discarding its messages)"
                    )
        cycle = self._find_cycle()
        if cycle:
            problems.append("cycle: " + " -> ".join(cycle))
        if problems:
            raise GraphError(f"graph {self.name!r} is invalid:\n  - " + "\n  - ".join(problems))

    # ---- internals -------------------------------------------------------------------------
    def _wire(self, end: Endpoint, direction: str) -> Wire:
        pod = self.pods.get(end.pod)
        if pod is None:
            choices = ", ".join(sorted(self.pods)) or "none"
            raise GraphError(f"graph {self.name!r} has no pod {end.pod!r}; pods: {choices}")
        wires = pod.output_wires if direction == "output" else pod.input_wires
        if end.wire not in wires:
            choices = ", ".join(sorted(wires)) or "none"
            raise GraphError(
                f"pod {end.pod!r} has no {direction} wire {end.wire!r}; "
                f"{direction} wires: {choices}"
            )
        return wires[end.wire]

    def _find_cycle(self) -> list[str] | None:
        following: dict[str, list[str]] = defaultdict(list)
        for src, dst in self.edges:
            if (src, dst) not in self.feedback:
                following[src.pod].append(dst.pod)
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        path: list[str] = []

        def visit(node: str) -> list[str] | None:
            state[node] = 1
            path.append(node)
            for nxt in following[node]:
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt):], nxt]
                if nxt not in state and (found := visit(nxt)):
                    return found
            path.pop()
            state[node] = 2
            return None

        for node in self.pods:
            if node not in state and (found := visit(node)):
                return found
        return None
