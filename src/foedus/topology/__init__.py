"""The topologies: the same pods wired as centralized, secure-sum, hierarchical, swarm and
asynchronous federations, each a plugin registered in
:data:`foedus.config.topology.topologies` (one module each)."""

from foedus.topology.centralized import client_graph, run_centralized, server_graph, topics

__all__ = ["client_graph", "run_centralized", "server_graph", "topics"]
