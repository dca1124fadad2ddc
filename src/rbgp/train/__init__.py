"""Sparse training methods as a library: gradual magnitude pruning, AutoSparse (learnable thresholds with
Gradient Annealing) and budgeted RBGP (per-layer sparsities another run learnt), each a `Method` that
prepares a model's layers and hooks into any training loop; the minimal loop (`train_step`, `fit`); and
FLOP counts of sparse models.
The run harness that drives them from the command line is `rbgp.experiments`."""

from rbgp.train.methods import METHOD_NAMES, make_method
from rbgp.train.steps import fit, train_step

__all__ = ["METHOD_NAMES", "fit", "make_method", "train_step"]
