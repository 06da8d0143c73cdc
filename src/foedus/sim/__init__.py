"""Simulation: thousands of virtual clients on one machine (or a Ray cluster)."""

from foedus.sim.engine import VirtualClients, run_simulation, run_simulation_sync

__all__ = ["VirtualClients", "run_simulation", "run_simulation_sync"]
