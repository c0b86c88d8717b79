"""Lightning network simulator: several fake LND nodes (REST subset) paying each other."""

from .network import Network, SimNode
from .runner import NODES_FILE, RunningNetwork, start_network

__all__ = ["NODES_FILE", "Network", "RunningNetwork", "SimNode", "start_network"]
