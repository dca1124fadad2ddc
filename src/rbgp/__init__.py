"""rbgp: fast sparse neural networks from Ramanujan bipartite graph products."""

__version__ = "0.1.0"
