"""Hierarchical FL: a tree of edge aggregators between the server and the clients, any depth.

Each edge is an :class:`~foedus.roles.edge.EdgePod` in its own graph: a client of its parent's
topics and a server on its own pair of topics. The root is an ordinary
:class:`~foedus.roles.server.ServerPod` on the job's usual topics, unchanged: to the root an edge
is just a client whose update carries many examples. Pods and wires (``~>`` is a topic)::

    server graph:  updates_in(foedus.J.updates) -> server -> model_out ~> foedus.J.model
    edge E graph:  parent_in(parent's model topic) -> edge.model
                   edge.down -> down_out ~> foedus.J.edge.E.model      (retained)
                   children_in(foedus.J.edge.E.updates) -> edge.update
                   edge.up   -> up_out   ~> parent's updates topic
    client graph:  model_in(parent's model topic) -> client -> [filters] -> update_out
                                                                ~> parent's updates topic

The tree is a list of the root's children; a child is a client id (``"client-003"``) or an
:class:`EdgeNode` with children of its own. :func:`parse_tree` reads the same tree from a job
file (see ``docs/topologies.md``); :class:`Hierarchical` is the ``hierarchical`` topology.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from foedus.aggregate.base import Aggregator
from foedus.aggregate.fedavg import FedAvg
from foedus.codec import DEFAULT_MAX_SIZE
from foedus.config.parts import JobParts, client_ids, pipeline_of
from foedus.config.spec import JobSpec
from foedus.config.topology import Assembly, Topology, TransportFor, topologies
from foedus.core.errors import ConfigError
from foedus.core.filter import Filter
from foedus.core.graph import Graph
from foedus.core.message import Message
from foedus.core.runtime import Runtime, run_graphs
from foedus.roles.client import ClientPod
from foedus.roles.edge import EdgePod
from foedus.roles.server import RoundRecord, ServerPod
from foedus.topology.centralized import Topics, secure_plan, server_assembly, server_graph, topics
from foedus.transport.base import Transport
from foedus.transport.link import Downlink, Uplink

_EDGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,60}$")
#: each level down closes its rounds this much earlier than its parent, so its single update
#: still reaches the parent before the parent's own deadline
TIMEOUT_SHRINK = 0.8


@dataclass(frozen=True)
class EdgeNode:
    """An edge aggregator and its children (client ids or further edges).

    ``round_timeout`` defaults to :data:`TIMEOUT_SHRINK` times the parent's; ``min_children``
    to all of them.
    """

    name: str
    children: tuple[Node, ...]
    min_children: int | None = None
    round_timeout: float | None = None

    def __post_init__(self) -> None:
        if not _EDGE_NAME.match(self.name):
            raise ConfigError(
                f"edge name {self.name!r} must start with a letter or digit and contain only "
                "letters, digits, '_' or '-' (it becomes part of topic names)"
            )
        if not self.children:
            raise ConfigError(f"edge {self.name!r} has no children")
        if self.min_children is not None and not 1 <= self.min_children <= len(self.children):
            raise ConfigError(
                f"edge {self.name!r}: min_children must be between 1 and its "
                f"{len(self.children)} children, got {self.min_children}"
            )
        if self.round_timeout is not None and self.round_timeout <= 0:
            raise ConfigError(f"edge {self.name!r}: round_timeout must be positive")


Node = EdgeNode | str


def edge_topics(job_id: str, edge: str) -> Topics:
    """The topics an edge serves its children on."""
    base = topics(job_id)  # validates the job id
    prefix = base.model.rsplit(".", 1)[0]
    return Topics(model=f"{prefix}.edge.{edge}.model", updates=f"{prefix}.edge.{edge}.updates")


def walk(tree: Sequence[Node]) -> Iterator[tuple[Node, EdgeNode | None]]:
    """Every node of the tree with its parent edge (``None`` for the root's children)."""
    stack: list[tuple[Node, EdgeNode | None]] = [(n, None) for n in reversed(tree)]
    while stack:
        node, parent = stack.pop()
        yield node, parent
        if isinstance(node, EdgeNode):
            stack.extend((c, node) for c in reversed(node.children))


def check_tree(tree: Sequence[Node], client_ids: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless every client appears exactly once and edge names are
    unique."""
    if not tree:
        raise ConfigError("the tree has no children under the root")
    seen_edges: set[str] = set()
    seen_clients: list[str] = []
    for node, _ in walk(tree):
        if isinstance(node, EdgeNode):
            if node.name in seen_edges:
                raise ConfigError(f"edge name {node.name!r} is used twice")
            seen_edges.add(node.name)
        else:
            seen_clients.append(node)
    duplicates = sorted({c for c in seen_clients if seen_clients.count(c) > 1})
    if duplicates:
        raise ConfigError(f"clients appear more than once in the tree: {duplicates}")
    unknown = sorted(set(seen_clients) - set(client_ids))
    if unknown:
        raise ConfigError(f"the tree names unknown clients {unknown}; known: {sorted(client_ids)}")
    missing = sorted(set(client_ids) - set(seen_clients))
    if missing:
        raise ConfigError(f"clients missing from the tree: {missing}")


def check_timeouts(tree: Sequence[Node], root_timeout: float) -> None:
    """Raise :class:`ConfigError` for an edge whose ``round_timeout`` is not shorter than
    its parent's: whenever one of its children is missing, it would wait past its parent's
    deadline, and its one update (its whole subtree) would miss every such round."""
    timeouts: dict[str | None, float] = {None: root_timeout}
    for node, parent in walk(tree):
        if not isinstance(node, EdgeNode):
            continue
        above = timeouts[None if parent is None else parent.name]
        timeouts[node.name] = node.round_timeout or above * TIMEOUT_SHRINK
        if node.round_timeout is not None and node.round_timeout >= above:
            whose = "the root's" if parent is None else f"edge {parent.name!r}"
            raise ConfigError(
                f"edge {node.name!r}: round_timeout {node.round_timeout:g}s is not shorter "
                f"than its parent's {above:g}s ({whose}); with a child missing, its update "
                "would reach the parent after the round closed; make it shorter or leave it "
                f"out ({TIMEOUT_SHRINK:g} x the parent's)")


def parse_tree(raw: Any, where: str = "topology.tree") -> tuple[Node, ...]:
    """Read a tree from a job file: a list whose items are client ids or mappings
    ``{edge: NAME, children: [...], min_children: N, round_timeout: S}``."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a non-empty list of client ids and edges")
    nodes: list[Node] = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if isinstance(item, str) and item:
            nodes.append(item)
            continue
        if not isinstance(item, dict):
            raise ConfigError(f"{here}: expected a client id or {{edge: NAME, children: [...]}}")
        unknown = sorted(set(item) - {"edge", "children", "min_children", "round_timeout"})
        if unknown:
            raise ConfigError(f"{here}.{unknown[0]}: unknown key; allowed: edge, children, "
                              "min_children, round_timeout")
        name = item.get("edge")
        if not isinstance(name, str):
            raise ConfigError(f"{here}.edge: expected the edge's name, got {name!r}")
        min_children = item.get("min_children")
        timeout = item.get("round_timeout")
        if min_children is not None and (not isinstance(min_children, int)
                                         or isinstance(min_children, bool)):
            raise ConfigError(f"{here}.min_children: expected an integer, got {min_children!r}")
        if timeout is not None and (not isinstance(timeout, int | float)
                                    or isinstance(timeout, bool)):
            raise ConfigError(f"{here}.round_timeout: expected a number, got {timeout!r}")
        try:
            nodes.append(EdgeNode(
                name, parse_tree(item.get("children"), f"{here}.children"),
                min_children=min_children,
                round_timeout=None if timeout is None else float(timeout),
            ))
        except ConfigError as exc:
            if str(exc).startswith(where):
                raise
            raise ConfigError(f"{here}: {exc}") from exc
    return tuple(nodes)


def edge_graph(
    edge: EdgePod, transport: Transport, parent: Topics, own: Topics,
    *, max_message_size: int | None = None,
) -> Graph:
    """One edge's graph: a client of ``parent``'s topics, a server on ``own``."""
    size = max_message_size or DEFAULT_MAX_SIZE
    parent_in = Downlink(
        transport, parent.model, job_id=edge.job_id, name="parent_in",
        accept=lambda m: m.header.recipient in (None, edge.edge_id), max_size=size,
    )
    children_in = Downlink(
        transport, own.updates, job_id=edge.job_id, group=f"{edge.job_id}.edge.{edge.edge_id}",
        name="children_in", max_size=size,
    )
    down_out = Uplink(transport, own.model, retain=True, name="down_out")
    up_out = Uplink(transport, parent.updates, name="up_out")
    graph = Graph(f"{edge.job_id}/edge/{edge.edge_id}")
    graph.add(parent_in, children_in, edge, down_out, up_out)
    graph.connect("parent_in.out", f"{edge.name}.model")
    graph.connect("children_in.out", f"{edge.name}.update")
    graph.connect(f"{edge.name}.down", "down_out.in")
    graph.connect(f"{edge.name}.up", "up_out.in")
    return graph


def leaf_graph(
    client: ClientPod, transport: Transport, job_id: str, parent: Topics,
    *, filters: Sequence[Filter] = (),
) -> Graph:
    """A client's graph under any parent (the root or an edge)."""

    def for_me(msg: Message) -> bool:
        return msg.header.recipient in (None, client.client_id)

    downlink = Downlink(transport, parent.model, job_id=job_id, accept=for_me, name="model_in")
    uplink = Uplink(transport, parent.updates, name="update_out")
    graph = Graph(f"{job_id}/{client.client_id}").add(downlink, client, uplink)
    graph.connect("model_in.out", f"{client.name}.model")
    graph.pipe(f"{client.name}.update", filters, "update_out.in", model="model_in.out")
    return graph


Leaf = ClientPod | tuple[ClientPod, Sequence[Filter]]


@dataclass
class Hierarchy:
    """The runtimes of a whole tree, root first, and its edge pods by name (for inspection)."""

    server: ServerPod
    server_runtime: Runtime
    edges: dict[str, EdgePod] = field(default_factory=dict)
    runtimes: dict[str, Runtime] = field(default_factory=dict)  # every non-root actor by id


def build_hierarchy(
    server: ServerPod, tree: Sequence[Node], clients: Mapping[str, Leaf],
    transport: Transport | TransportFor, *, aggregator: Callable[[], Aggregator] = FedAvg,
    queue_size: int = 16,
) -> Hierarchy:
    """Graphs and runtimes for every actor of the tree (nothing started yet).

    ``transport`` is one shared transport (in-process) or a function from actor id to that
    actor's own transport (networked: one connection per actor, as separate processes have).
    Each edge gets a fresh aggregator from ``aggregator``.
    """
    built = tree_actors(server, tree, clients, transport, aggregator=aggregator,
                        queue_size=queue_size)
    root = built.runtimes.pop(server.name)
    return Hierarchy(server, root, built.edges, built.runtimes)


@dataclass
class TreeActors:
    """The runtimes of some actors of a tree, by actor id (the root's is ``server.name``), and
    the edge pods among them."""

    runtimes: dict[str, Runtime] = field(default_factory=dict)
    edges: dict[str, EdgePod] = field(default_factory=dict)


def actor_ids(server: ServerPod, tree: Sequence[Node]) -> list[str]:
    """Every actor of the tree: the root (``server.name``), then edges and clients top down.

    Raises :class:`ConfigError` if two actors share an id (an edge named like a client or like
    the server), since each actor id names one process and one transport connection.
    """
    ids = [server.name] + [n.name if isinstance(n, EdgeNode) else n for n, _ in walk(tree)]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise ConfigError(f"actor ids used twice in the tree (edges, clients, server): {clashes}")
    return ids


def tree_actors(
    server: ServerPod, tree: Sequence[Node], clients: Mapping[str, Leaf],
    transport: Transport | TransportFor, *, actors: Collection[str] | None = None,
    aggregator: Callable[[], Aggregator] = FedAvg, queue_size: int = 16,
) -> TreeActors:
    """Runtimes for the actors named in ``actors`` (default: all of them), nothing started.

    This is how a deployment runs one part of a tree per process: every process builds the same
    tree and starts only its own actors, which meet the others on the transport's topics. Only
    selected actors open a transport (``transport_for`` is called for them alone).
    """
    check_tree(tree, list(clients))
    check_timeouts(tree, server.round_timeout)
    if server.expected_clients != len(tree):
        raise ConfigError(
            f"the server expects {server.expected_clients} children but the tree gives the root "
            f"{len(tree)}; build the server with expected_clients={len(tree)}"
        )
    known = actor_ids(server, tree)
    wanted = set(known if actors is None else actors)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ConfigError(f"unknown actors {unknown}; this tree has {known}")
    transport_for = _per_actor(transport)
    job_id = server.job_id
    result = TreeActors()
    if server.name in wanted:
        result.runtimes[server.name] = Runtime(
            server_graph(server, transport_for(server.name)), queue_size=queue_size
        )
    timeouts: dict[str | None, float] = {None: server.round_timeout}
    for node, parent in walk(tree):
        parent_topics = topics(job_id) if parent is None else edge_topics(job_id, parent.name)
        parent_timeout = timeouts[None if parent is None else parent.name]
        if isinstance(node, EdgeNode):
            timeout = node.round_timeout or parent_timeout * TIMEOUT_SHRINK
            timeouts[node.name] = timeout  # needed below it even when this edge runs elsewhere
            if node.name not in wanted:
                continue
            edge = EdgePod(
                job_id=job_id, edge_id=node.name, aggregator=aggregator(),
                expected_children=len(node.children), min_children=node.min_children,
                round_timeout=timeout,
                children=[c.name if isinstance(c, EdgeNode) else c for c in node.children],
                parent=server.name if parent is None else parent.name,
            )
            result.edges[node.name] = edge
            result.runtimes[node.name] = Runtime(
                edge_graph(edge, transport_for(node.name), parent_topics,
                           edge_topics(job_id, node.name)),
                queue_size=queue_size,
            )
        elif node in wanted:
            leaf = clients[node]
            client, filters = leaf if isinstance(leaf, tuple) else (leaf, ())
            if client.client_id != node:
                raise ConfigError(f"clients[{node!r}] is a client with id {client.client_id!r}")
            result.runtimes[node] = Runtime(
                leaf_graph(client, transport_for(node), job_id, parent_topics, filters=filters),
                queue_size=queue_size,
            )
    return result


def _per_actor(transport: Transport | TransportFor) -> TransportFor:
    if not isinstance(transport, Transport):
        return transport
    shared = transport
    return lambda _actor: shared


async def run_hierarchical(
    server: ServerPod, tree: Sequence[Node], clients: Mapping[str, Leaf],
    transport: Transport | TransportFor, *, aggregator: Callable[[], Aggregator] = FedAvg,
    queue_size: int = 16,
) -> list[RoundRecord]:
    """Run a whole tree in this process (clients and edges start before the root broadcasts)."""
    h = build_hierarchy(server, tree, clients, transport, aggregator=aggregator,
                        queue_size=queue_size)
    await run_graphs(h.server_runtime, *h.runtimes.values())
    return server.history


@topologies.register("hierarchical")
class Hierarchical(Topology):
    """A tree of edge aggregators (``tree``, read by :func:`parse_tree`) between the server and
    the clients; ``min_children`` is the root's quorum among its children (default: all).

    Actors: ``server``, then the edges and clients top down. The root is the job's server (its
    rounds are the job's rounds; MLOps and checkpoints attach to it); every edge runs the job's
    aggregator on its children and sends :meth:`~foedus.aggregate.base.Aggregator.edge_result`
    up, so a tree computes what the flat job would.
    """

    supports_server_features = True

    def __init__(self, tree: Any, min_children: int | None = None) -> None:
        self.tree = parse_tree(tree, "params.tree")
        if min_children is not None and (isinstance(min_children, bool)
                                         or not isinstance(min_children, int)
                                         or not 1 <= min_children <= len(self.tree)):
            raise ConfigError(f"params.min_children: expected an integer between 1 and the "
                              f"root's {len(self.tree)} children, got {min_children!r}")
        self.min_children = min_children

    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        self.actors(spec)  # refuses an actor id used twice
        try:
            check_tree(self.tree, client_ids(spec))
            check_timeouts(self.tree, spec.round_timeout)
        except ConfigError as exc:
            raise ConfigError(f"topology.params.tree: {exc}") from exc
        self.refuse_unused(spec, "every child answers each round; the quorums are the tree's "
                           "min_children", "clients.min_clients", "clients.per_round")
        self.require_updates(spec, len(self.tree), "children of the root")
        for node, _ in walk(self.tree):
            if isinstance(node, EdgeNode):
                self.require_updates(spec, len(node.children), f"children of edge {node.name!r}")
        pipeline = pipeline_of(spec)
        secure_plan(spec, pipeline, self.name)  # refuses secure sum: it needs centralized
        self.refuse_server_halves(spec, pipeline, "the edges of a tree")

    def actors(self, spec: JobSpec) -> list[str]:
        ids = ["server"] + [n.name if isinstance(n, EdgeNode) else n for n, _ in walk(self.tree)]
        clashes = sorted({i for i in ids if ids.count(i) > 1})
        if clashes:  # an actor id names one process and one connection: it must be unique
            raise ConfigError(f"topology.params.tree: actor ids used twice (edges, clients, "
                              f"server): {clashes}")
        return ids

    def build(self, job: JobParts, actors: Collection[str], transport_for: TransportFor,
              ) -> Assembly:
        root_children = [n.name if isinstance(n, EdgeNode) else n for n in self.tree]
        server = job.make_server(
            expected_clients=len(self.tree), min_clients=self.min_children,
            participants=root_children, clients_per_round=None,
        )
        index = {cid: i for i, cid in enumerate(client_ids(job.spec))}
        leaves = {  # only the clients run here get a model and read their share
            cid: (job.make_client(i), job.client_filters())
            for cid, i in index.items() if cid in actors
        }
        built = tree_actors(server, self.tree, _Leaves(index, leaves), transport_for,
                            actors=actors, aggregator=job.make_aggregator)
        bound = job.spec.clients.max_examples  # an edge may claim it for every client below
        for admission in [server.collector.admission,
                          *(e.collector.admission for e in built.edges.values())]:
            admission.max_examples = bound
            admission.represents.update(leaves_below(self.tree))
        here = built.runtimes.copy()
        assembly = server_assembly(here, server if server.name in here else None)

        def records() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {a: [] for a in here}
            if server.name in here:
                out[server.name] = [r.to_dict() for r in server.history]
            for name, edge in built.edges.items():
                out[name] = [r.to_dict() for r in edge.history]
            return out

        assembly.records = records
        return assembly


def leaves_below(tree: Sequence[Node]) -> dict[str, int]:
    """How many clients each edge of ``tree`` stands for (the clients in its subtree)."""
    counts: dict[str, int] = {}

    def count(node: Node) -> int:
        if not isinstance(node, EdgeNode):
            return 1
        counts[node.name] = sum(count(child) for child in node.children)
        return counts[node.name]

    for node in tree:
        count(node)
    return counts


class _Leaves(Mapping[str, Leaf]):
    """Every client id of the job (so the tree can be checked), with pods only for those built
    here: the others run in other processes and their data is not on this machine."""

    def __init__(self, index: Mapping[str, int], built: Mapping[str, Leaf]) -> None:
        self.index = index
        self.built = built

    def __getitem__(self, key: str) -> Leaf:
        if key not in self.built:
            raise KeyError(key)
        return self.built[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)
