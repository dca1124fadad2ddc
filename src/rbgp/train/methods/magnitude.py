"""Gradual magnitude pruning (Zhu and Gupta, "To prune, or not to prune", 2017), and one-shot pruning.

The layers `sparsify` would convert start dense; a 0/1 mask on each (a `torch.nn.utils.parametrize`
parametrization, so `.weight` reads the masked weight and the masked weights get no gradient) is
tightened after optimizer steps `start, start + frequency, ...` up to `end`, to the cubic schedule

    s_t = s_f + (s_i - s_f) * (1 - (t - start) / (end - start))^3,

then held for the rest of the run (the fine-tuning phase). `start == end` prunes once (one-shot).
Weights are ranked by |W| (granularity "unstructured") or by the mean |W| of each `block` of the
(out, in*kh*kw) weight matrix ("block"), within each layer (scope "layer", every layer at s_t) or
over all pruned layers together (scope "global", one threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from rbgp.train.methods.base import DenseStartMethod, Options, attach_parametrization, weight_parametrization

GRANULARITIES = ("unstructured", "block")
SCOPES = ("layer", "global")
DEFAULT_END_FRACTION = 2 / 3  # of the run's steps: the last third fine-tunes the pruned network
DEFAULT_FREQUENCY = 50


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu and Gupta's target sparsity after optimizer step `step`."""
    if step < start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def is_prune_step(step: int, start: int, end: int, frequency: int) -> bool:
    """Whether the masks are updated after optimizer step `step` (>= 1)."""
    return step >= max(start, 1) and step <= end and ((step - start) % frequency == 0 or step == end)


@dataclass
class MagnitudeOptions(Options):
    start_step: int = 0
    end_step: int | None = None  # default: DEFAULT_END_FRACTION of the run
    frequency: int = DEFAULT_FREQUENCY
    initial_sparsity: float = 0.0
    granularity: str = "unstructured"
    block: list[int] = field(default_factory=lambda: [4, 4])
    scope: str = "layer"

    def check(self, method: str) -> None:
        problems = [
            (self.start_step >= 0, f"start_step must be >= 0, got {self.start_step}"),
            (
                self.end_step is None or self.end_step >= max(self.start_step, 1),
                f"end_step must be >= start_step and >= 1, got {self.end_step} (start_step {self.start_step})",
            ),
            (self.frequency >= 1, f"frequency must be >= 1 step, got {self.frequency}"),
            (0.0 <= self.initial_sparsity < 1.0, f"initial_sparsity must be in [0, 1), got {self.initial_sparsity}"),
            (
                self.granularity in GRANULARITIES,
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}",
            ),
            (
                len(self.block) == 2 and all(int(b) >= 1 for b in self.block),
                f"block must be two sizes >= 1, got {self.block}",
            ),
            (self.scope in SCOPES, f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}"),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(f"method {method!r}: {message}")


class WeightMask(nn.Module):
    """Parametrization: the weight times a 0/1 mask (a buffer, saved with the model)."""

    mask: torch.Tensor

    def __init__(self, shape: torch.Size, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


class MagnitudePruning(DenseStartMethod):
    name = "magnitude"
    options_type = MagnitudeOptions
    options: MagnitudeOptions

    def prepare(self, model: nn.Module, total_steps: int) -> None:
        super().prepare(model, total_steps)
        o = self.options
        self.end = o.end_step if o.end_step is not None else max(1, round(DEFAULT_END_FRACTION * total_steps))
        self.start = min(o.start_step, self.end)

        def make(m: nn.Module) -> nn.Module:
            weight = cast(torch.Tensor, m.weight)
            return WeightMask(weight.shape, weight.device)

        self.layers = attach_parametrization(model, self.config, make)

    def target(self, step: int) -> float:
        return cubic_sparsity(step, self.config.sparsity, self.start, self.end, self.options.initial_sparsity)

    def after_step(self, model: nn.Module, step: int) -> None:
        super().after_step(model, step)
        if is_prune_step(step, self.start, self.end, self.options.frequency):
            self.prune(self.target(step))

    @torch.no_grad()
    def prune(self, sparsity: float) -> None:
        """Set every mask so that `sparsity` of the pruned layers' weights (or blocks) is zero."""
        masks = [cast(WeightMask, weight_parametrization(m)).mask for m in self.layers.values()]
        scores = [self._scores(m) for m in self.layers.values()]
        if self.options.scope == "global":
            flat = torch.cat([s.flatten() for s in scores])
            k = int(math.floor(sparsity * flat.numel()))
            threshold = flat.kthvalue(k).values if k > 0 else flat.new_tensor(-1.0)
            keeps = [s > threshold for s in scores]
        else:
            keeps = []
            for s in scores:
                k = int(math.floor(sparsity * s.numel()))
                keeps.append(s > s.flatten().kthvalue(k).values if k > 0 else torch.ones_like(s, dtype=torch.bool))
        for mask, keep in zip(masks, keeps):
            mask.copy_(self._expand(keep, mask.shape))

    def _scores(self, module: nn.Module) -> torch.Tensor:
        """|W| of the current (masked) weight, per weight or per block; pruned entries score 0."""
        w = cast(torch.Tensor, module.weight).detach().abs().float()
        if self.options.granularity == "unstructured":
            return w
        bh, bw = (int(b) for b in self.options.block)
        mat = w.reshape(w.shape[0], -1)[None]
        return F.avg_pool2d(mat, (bh, bw), ceil_mode=True)[0]  # partial edge blocks: mean of what is there

    def _expand(self, keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if self.options.granularity == "unstructured":
            return keep
        bh, bw = (int(b) for b in self.options.block)
        rows, cols = shape[0], math.prod(shape[1:])
        full = keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:rows, :cols]
        return full.reshape(shape)
