"""Budgeted: per-layer sparsities learnt by another run (AutoSparse or magnitude pruning), realised as
the nearest feasible structured pattern (RBGP4 by default) and trained with static masks.

The learnt run decides how much sparsity each layer gets; RBGP decides how it is laid out for speed.
The budget is stored in the config (`method_kwargs["budget"]`: layer name -> sparsity), so the run is
reproducible without the source run; `budget_from_run` reads it from a finished run's metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rbgp.train.methods.base import Method, Options

MIN_BUDGET_SPARSITY = 0.05  # a layer learnt sparser than dense by less than this stays dense


@dataclass
class BudgetOptions(Options):
    budget: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # where the budget came from (informational)

    def check(self, method: str) -> None:
        if not self.budget:
            raise ValueError(
                f"method {method!r} needs a budget: layer name -> sparsity (rbgp train "
                f"--budget-from RUN takes it from a finished autosparse or magnitude run)"
            )
        bad = {k: v for k, v in self.budget.items() if not (isinstance(v, (int, float)) and 0.0 < v < 1.0)}
        if bad:
            raise ValueError(f"method {method!r}: budget sparsities must be in (0, 1), got {bad}")


class Budgeted(Method):
    name = "budgeted"
    options_type = BudgetOptions

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.pattern == "dense":
            raise ValueError(
                f"method {cls.name!r} realises the budget as a structured pattern: choose one "
                f"(e.g. pattern 'rbgp4'), not 'dense'"
            )
        if config.distribution != "uniform":
            raise ValueError(
                f"method {cls.name!r} gives every layer its own sparsity: distribution must be "
                f"'uniform', got {config.distribution!r}"
            )


def budget_from_run(run_dir: str | Path) -> dict[str, float]:
    """The final per-layer sparsities of a finished run (its metrics.jsonl), layers nearly dense left out."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"no metrics.jsonl in {run_dir} (give the --out-dir of a finished autosparse or magnitude run)"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    layers = rows[-1].get("layer_sparsity") if rows else None
    if not layers:
        raise ValueError(f"{path}: its last epoch has no per-layer sparsities (not a sparse run?)")
    return budget_from_layers(layers)


def budget_from_layers(layer_sparsity: dict[str, float]) -> dict[str, float]:
    """A budget from learnt per-layer sparsities (rounded; layers nearly dense left out: they stay dense)."""
    return {name: round(float(s), 6) for name, s in layer_sparsity.items() if s >= MIN_BUDGET_SPARSITY}
