"""Graph recipes: the same pods wired as centralized, hierarchical or swarm federations."""

from foedus.topology.centralized import client_graph, run_centralized, server_graph, topics

__all__ = ["client_graph", "run_centralized", "server_graph", "topics"]
