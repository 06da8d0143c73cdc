"""Hierarchical FL: edges aggregate their children and answer their parent with one update."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from foedus.aggregate.fedavg import FedAvg
from foedus.aggregate.fedopt import FedAdam
from foedus.config.spec import JobSpec
from foedus.core.errors import ConfigError
from foedus.core.runtime import run_graphs
from foedus.roles.client import ClientPod
from foedus.roles.server import ServerPod
from foedus.topology.centralized import run_centralized
from foedus.topology.hierarchical import (
    EdgeNode,
    build_hierarchy,
    check_tree,
    parse_tree,
    run_hierarchical,
)
from foedus.transport.local import LocalTransport
from tests.topology.helpers import Digits, digits

ROUNDS = 4


def clients_of(data: Digits) -> dict[str, ClientPod]:
    return {
        f"c{i}": ClientPod(client_id=f"c{i}", model=data.model(), data=share)
        for i, share in enumerate(data.shares)
    }


def server_for(data: Digits, expected: int, **kw: object) -> ServerPod:
    options: dict = {"round_timeout": 30.0, "aggregator": FedAvg()} | kw
    return ServerPod(
        job_id="tree", initial_params=data.model().get_params(), rounds=ROUNDS,
        expected_clients=expected, evaluate=lambda p: {"accuracy": data.accuracy(p)}, **options,
    )


async def flat_run(data: Digits, **kw: object) -> ServerPod:
    server = server_for(data, len(data.shares), **kw)
    transport = LocalTransport()
    clients = [(c, transport, ()) for c in clients_of(data).values()]
    await run_centralized(server, transport, clients)
    await transport.close()
    return server


@pytest.fixture(scope="module")
def data() -> Digits:
    # A constant step: scikit-learn's default "optimal" schedule takes huge first steps that
    # amplify the last-bit difference of summing in another order (1e-15 after round 1) to
    # 1e-3 two rounds later, which is chaos in SGD, not a difference between the topologies.
    return digits(6, scheme="dirichlet", learning_rate="constant", eta0=0.05)


@pytest.fixture(scope="module")
def flat(data: Digits) -> ServerPod:
    return asyncio.run(flat_run(data))


async def test_a_tree_with_a_server_optimiser_takes_the_flat_runs_steps(data: Digits) -> None:
    # edges send their children's plain mean; only the root steps, with the one optimiser state
    flat = await flat_run(data, aggregator=FedAdam(server_lr=0.05))
    tree = (EdgeNode("north", ("c0", "c1", "c2")), EdgeNode("south", ("c3", "c4", "c5")))
    server = server_for(data, len(tree), aggregator=FedAdam(server_lr=0.05))
    transport = LocalTransport()
    await run_hierarchical(server, tree, clients_of(data), transport,
                           aggregator=lambda: FedAdam(server_lr=0.05))
    await transport.close()
    assert server.aggregator.steps == ROUNDS
    for name in flat.params:
        np.testing.assert_allclose(server.params[name], flat.params[name], rtol=1e-9, atol=1e-12)


async def test_two_level_fedavg_equals_the_flat_run_over_the_same_clients(
    data: Digits, flat: ServerPod
) -> None:
    tree = (EdgeNode("north", ("c0", "c1", "c2")), EdgeNode("south", ("c3", "c4", "c5")))
    server = server_for(data, len(tree))
    transport = LocalTransport()
    history = await run_hierarchical(server, tree, clients_of(data), transport)
    await transport.close()
    assert [r.accepted for r in history] == [2] * ROUNDS
    for name in flat.params:
        np.testing.assert_allclose(server.params[name], flat.params[name], rtol=1e-9, atol=1e-12)
    assert server.history[-1].metrics["accuracy"] > 0.8


async def test_an_unbalanced_three_level_tree_still_equals_the_flat_run(
    data: Digits, flat: ServerPod
) -> None:
    tree = (
        "c0",
        EdgeNode("eu", ("c1", EdgeNode("de", ("c2", "c3")), EdgeNode("fr", ("c4",)))),
        "c5",
    )
    server = server_for(data, len(tree))
    transport = LocalTransport()
    h = build_hierarchy(server, tree, clients_of(data), transport)
    await run_graphs(h.server_runtime, *h.runtimes.values())
    await transport.close()
    for name in flat.params:
        np.testing.assert_allclose(server.params[name], flat.params[name], rtol=1e-9, atol=1e-12)
    eu = h.edges["eu"].history
    assert [r.accepted for r in eu] == [3] * ROUNDS  # c1, de, fr
    sizes = [len(s) for s in data.shares]
    assert eu[0].num_examples == sizes[1] + sizes[2] + sizes[3] + sizes[4]
    assert h.edges["de"].round_timeout < h.edges["eu"].round_timeout < server.round_timeout


async def test_an_edge_killed_mid_run_does_not_stop_the_rest(data: Digits) -> None:
    tree = (
        EdgeNode("a", ("c0", "c1")), EdgeNode("b", ("c2", "c3")), EdgeNode("c", ("c4", "c5")),
    )
    server = server_for(data, len(tree), min_clients=2, round_timeout=1.5)
    server.rounds = 4
    transport = LocalTransport()
    h = build_hierarchy(server, tree, clients_of(data), transport)
    runtimes = list(h.runtimes.values())
    for rt in runtimes:
        await rt.start()
    await h.server_runtime.start()
    while not h.edges["b"].history:  # let edge b serve one round, then kill it
        await asyncio.sleep(0.01)
    await h.runtimes["b"].stop()
    await asyncio.wait_for(h.server_runtime.wait(), 30)
    await h.server_runtime.stop()
    for rt in runtimes:
        await rt.stop()
    await transport.close()
    accepted = [r.accepted for r in server.history]
    assert len(accepted) == 4 and accepted[0] == 3 and accepted[-1] == 2
    assert all(r.status == "ok" for r in server.history)
    assert len(h.edges["a"].history) == 4 and len(h.edges["c"].history) == 4
    assert server.history[-1].metrics["accuracy"] > 0.7


async def test_an_edge_without_quorum_reports_an_error_to_its_parent(data: Digits) -> None:
    tree = (EdgeNode("lonely", ("c0", "c1"), round_timeout=0.3), "c2")
    clients = clients_of(digits(3))
    server = server_for(data, 2, min_clients=1, round_timeout=2.0)
    server.rounds = 1
    transport = LocalTransport()
    h = build_hierarchy(server, tree, clients, transport)
    # c1 never runs: its graph is dropped before the job starts
    del h.runtimes["c1"]
    await run_graphs(h.server_runtime, *h.runtimes.values())
    await transport.close()
    assert h.edges["lonely"].history[0].status == "no_quorum"
    assert server.history[0].failed_clients == ["lonely"]
    assert server.history[0].accepted == 1


def test_job_file_tree_is_parsed_and_checked() -> None:
    raw = [
        {"edge": "eu", "min_children": 1, "round_timeout": 20,
         "children": ["client-000", {"edge": "de", "children": ["client-001"]}]},
        "client-002",
    ]
    tree = parse_tree(raw)
    assert tree == (
        EdgeNode("eu", ("client-000", EdgeNode("de", ("client-001",))), 1, 20.0),
        "client-002",
    )
    check_tree(tree, ["client-000", "client-001", "client-002"])


@pytest.mark.parametrize(("raw", "ids", "message"), [
    ([{"edge": "eu", "children": []}], ["a"], "topology.tree[0].children: expected a non-empty"),
    ([{"edge": "eu", "kids": ["a"]}], ["a"], "topology.tree[0].kids: unknown key"),
    ([{"edge": "e u", "children": ["a"]}], ["a"], "edge name 'e u'"),
    ([{"edge": "eu", "children": ["a"], "min_children": 2}], ["a"], "min_children"),
    (["a", {"edge": "eu", "children": ["a"]}], ["a"], "more than once"),
    (["a"], ["a", "b"], "missing from the tree: ['b']"),
    (["a", "zz"], ["a"], "unknown clients ['zz']"),
])
def test_bad_trees_raise_config_errors_naming_the_problem(
    raw: list, ids: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_tree(parse_tree(raw), ids)
    assert message in str(info.value)


@pytest.mark.parametrize(("north", "deep", "message"), [
    (30, None, "edge 'north': round_timeout 30s is not shorter than its parent's 20s (the "
               "root's)"),
    (10, 10, "edge 'deep': round_timeout 10s is not shorter than its parent's 10s (edge "
             "'north')"),
    (None, 16, "edge 'deep': round_timeout 16s is not shorter than its parent's 16s (edge "
               "'north')"),  # north's default: 0.8 x the root's 20 s
])
def test_an_edge_that_would_answer_after_its_parent_closed_the_round_is_refused(
        north: float | None, deep: float | None, message: str) -> None:
    # it was accepted: whenever one of its children was missing, the edge waited past its
    # parent's deadline, and its whole subtree was dropped from every such round unsaid
    def edge(name: str, timeout: float | None, children: list) -> dict:
        return {"edge": name, "children": children} | (
            {} if timeout is None else {"round_timeout": timeout})

    tree = [edge("north", north, ["client-000", edge("deep", deep, ["client-001"])]),
            "client-002"]
    with pytest.raises(ConfigError) as caught:
        JobSpec.from_dict({"job_id": "t", "round_timeout": 20, "clients": {"count": 3},
                           "topology": {"type": "hierarchical", "params": {"tree": tree}}})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_tree_built_in_python_checks_its_edges_deadlines_too(data: Digits) -> None:
    tree = (EdgeNode("slow", ("c0", "c1"), round_timeout=45.0), "c2", "c3", "c4", "c5")
    with pytest.raises(ConfigError, match=r"edge 'slow': round_timeout 45s is not shorter than "
                                          r"its parent's 30s \(the root's\)"):
        build_hierarchy(server_for(data, len(tree)), tree, clients_of(data), LocalTransport())
