"""Training recipes: named presets of optimizer, schedule, batch size and epochs.

The paper's CIFAR recipes (DESIGN.md, 'Training recipe') are SGD with Nesterov momentum 0.9 and
weight decay 1e-4: VGG19-bn at lr 0.1, batch 256, 160 epochs, lr x0.1 at epochs 80 and 120;
WRN-40-4 at lr 0.1, batch 128, 200 epochs, lr x0.2 at 60, 120 and 160. ``paper`` picks the one
that matches the model. ``demo`` is the short Fashion-MNIST recipe of ``rbgp demo``; ``smoke`` a
few-step recipe for CI. Explicit command-line flags override any field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["RECIPE_NAMES", "SCHEDULES", "Recipe", "get_recipe"]

SCHEDULES: tuple[str, ...] = ("multistep", "cosine", "constant")


@dataclass(frozen=True)
class Recipe:
    """Optimizer (SGD) and schedule settings; ``milestones`` are epochs (1-based ends)."""

    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: str = "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError(
                f"need lr > 0, batch_size >= 1 and epochs >= 1; got lr={self.lr}, "
                f"batch_size={self.batch_size}, epochs={self.epochs}"
            )
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError(
                f"need 0 <= momentum < 1 and weight_decay >= 0; got momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}"
            )
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        if list(self.milestones) != sorted(set(self.milestones)) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing positive epochs, got {self.milestones}")

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with the non-``None`` overrides applied (flags the user actually gave)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; valid: {sorted(asdict(self))}")
        if "milestones" in given:
            given["milestones"] = tuple(int(m) for m in given["milestones"])
        return replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


_PAPER = {
    "vgg19": Recipe(lr=0.1, batch_size=256, epochs=160, milestones=(80, 120), gamma=0.1),
    "wrn40_4": Recipe(lr=0.1, batch_size=128, epochs=200, milestones=(60, 120, 160), gamma=0.2),
}
_RECIPES = {
    "paper-vgg19": _PAPER["vgg19"],
    "paper-wrn40_4": _PAPER["wrn40_4"],
    # Short Fashion-MNIST recipe used by `rbgp demo` (chosen by measurement, see demo.py).
    "demo": Recipe(lr=0.05, batch_size=128, epochs=3, momentum=0.9, nesterov=True, weight_decay=0.0, schedule="cosine"),
    "smoke": Recipe(lr=0.05, batch_size=16, epochs=1, weight_decay=0.0, schedule="constant"),
}
RECIPE_NAMES: tuple[str, ...] = ("paper", *_RECIPES)


def get_recipe(name: str, model: str | None = None) -> Recipe:
    """The recipe ``name``; ``paper`` resolves to the model's own (vgg19 or wrn40_4) recipe."""
    if name == "paper":
        if model not in _PAPER:
            raise ValueError(
                f"the paper has recipes for {sorted(_PAPER)} only, not model {model!r}; "
                f"pick one of {', '.join(_RECIPES)} or give --lr/--epochs/--batch-size"
            )
        return _PAPER[model]
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPE_NAMES)}")
    return _RECIPES[name]
