"""Sparse training methods: how the masks of the sparse layers come about during training.

- "static": the paper's RBGP recipe; the structure is fixed when the model is built (any pattern).
- "magnitude": gradual (cubic schedule) or one-shot magnitude pruning, unstructured or block-wise,
  per-layer or global, then fine-tuning.
- "autosparse": learnable thresholds with Gradient Annealing.
- "budgeted": the per-layer sparsities another run learnt, realised as RBGP4 and trained static.

`make_method(config)` gives the method object the training loop calls (see `Method` for the hooks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from rbgp.train.methods.autosparse import AutoSparse, alpha_schedule, ga_threshold
from rbgp.train.methods.base import Method
from rbgp.train.methods.budgeted import Budgeted, budget_from_run
from rbgp.train.methods.magnitude import MagnitudePruning, cubic_sparsity

METHODS: dict[str, type[Method]] = {
    "static": Method,
    "magnitude": MagnitudePruning,
    "autosparse": AutoSparse,
    "budgeted": Budgeted,
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "Method",
    "MethodSettings",
    "alpha_schedule",
    "bake",
    "budget_from_run",
    "check_method",
    "cubic_sparsity",
    "ga_threshold",
    "make_method",
]


def check_method(config: Any) -> None:
    """Raise ValueError if `config.method` or its options do not fit `config`."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; valid: {', '.join(METHOD_NAMES)}")
    METHODS[config.method].check_config(config)


@dataclass
class MethodSettings:
    """What a method reads of a training config, for use outside `rbgp train` (see `make_method`)."""

    method: str
    sparsity: float = 0.9
    epochs: int = 1
    exclude: list[str] = field(default_factory=list)
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    pattern: str = "dense"
    distribution: str = "uniform"


def make_method(config: Any, **options: Any) -> Method:
    """The method object of a `TrainConfig`, or of a method name with its settings and options, e.g.
    `make_method("autosparse", epochs=10, init_sparsity=0.9)` or `make_method("magnitude", sparsity=0.95,
    end_step=5000)`; then `prepare(model, total_steps)`, build the optimizer on `param_groups(model)`,
    and call `on_epoch_start(epoch)` and `after_step(model, step)` from your loop."""
    if isinstance(config, str):
        own = {k: options.pop(k) for k in ("sparsity", "epochs", "exclude", "pattern", "distribution") if k in options}
        config = MethodSettings(config, method_kwargs=options, **own)
        check_method(config)
    elif options:
        raise TypeError("options go in the config's method_kwargs when a config is given")
    return METHODS[config.method](config)


def bake(model: nn.Module) -> nn.Module:
    """Replace the masks and thresholds of a magnitude or AutoSparse run by plain weights with zeros
    (what a checkpoint consumer or `sparsify(..., init="keep")` expects); in place."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
