"""AutoSparse (Kundu, Mellempudi, Vooturi, Kaul, Dubey; arXiv 2304.06941): learnable thresholds with
Gradient Annealing (GA).

Forward: ``W_s = sign(W) * relu(|W| - sigmoid(T))`` with a learnable threshold ``T`` per layer (or per
output channel), as in STR (Kusupati et al., 2020). Backward: the relu's gradient is 1 where
``|W| > sigmoid(T)`` and ``alpha`` where the weight is masked (STR uses 0 there), so masked weights
and the thresholds keep getting gradient, scaled by ``alpha``; ``alpha = 0`` is STR exactly. ``alpha``
decays per epoch ``t`` (0-based) of a horizon ``H`` (``alpha_zero_epoch`` if set, else the run's epochs):

    alpha_t = alpha0 * max((1 + cos(pi * t / H)) / 2, 1 - sigmoid(-6 + 12 * t / H)),

and is 0 from epoch ``alpha_zero_epoch`` on. Sources: the paper's abstract states GA; the formulas
follow the third-party PQuantML implementation (cern-nextgen/PQuantML, `autosparse.py`), which says it
follows the authors' code. It sets ``alpha_t = alpha0 * decay(t)`` as here; its older version
(nroope/PQuant) multiplied ``alpha`` by the decay factor every epoch (compounding), which we do not.
The paper's own alpha0, threshold initialisation and weight decay on T were not available to us; the
defaults are PQuantML's (alpha0 0.5, T init -5, per-channel thresholds optional).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from rbgp.nn import convertible_layers
from rbgp.nn.rbgp_layers import is_hf_conv1d
from rbgp.train.methods.base import DenseStartMethod, Options, attach_parametrization, weight_parametrization


class _GradientAnnealedReLU(torch.autograd.Function):
    """relu(x) whose gradient is `alpha` (not 0) where x <= 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x > 0)
        ctx.alpha = alpha
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (passed,) = ctx.saved_tensors
        return torch.where(passed, grad, grad * ctx.alpha), None


def ga_threshold(weight: torch.Tensor, threshold: torch.Tensor, alpha: float) -> torch.Tensor:
    """``sign(W) * relu(|W| - sigmoid(T))`` with the Gradient Annealing backward."""
    return torch.sign(weight) * _GradientAnnealedReLU.apply(weight.abs() - torch.sigmoid(threshold), alpha)


def alpha_schedule(epoch: int, alpha0: float, horizon: int, zero_epoch: int | None = None) -> float:
    """``alpha`` during 0-based epoch `epoch` (see the module docstring)."""
    if zero_epoch is not None and epoch >= zero_epoch:
        return 0.0
    x = epoch / horizon
    return alpha0 * max((1 + math.cos(math.pi * x)) / 2, 1 - 1 / (1 + math.exp(6 - 12 * x)))


@dataclass
class AutoSparseOptions(Options):
    alpha0: float = 0.5
    alpha_zero_epoch: int | None = None
    threshold_init: float = -5.0
    init_sparsity: float | None = None  # start T at the global |W| quantile giving this sparsity instead
    per_channel: bool = False
    threshold_decay: float = 0.0

    def check(self, method: str) -> None:
        problems = [
            (math.isfinite(self.alpha0) and 0.0 <= self.alpha0 <= 1.0, f"alpha0 must be in [0, 1], got {self.alpha0}"),
            (
                self.alpha_zero_epoch is None or self.alpha_zero_epoch >= 0,
                f"alpha_zero_epoch must be >= 0 (0-based epoch), got {self.alpha_zero_epoch}",
            ),
            (math.isfinite(self.threshold_init), f"threshold_init must be a finite number, got {self.threshold_init}"),
            (
                self.init_sparsity is None or 0.0 < self.init_sparsity < 1.0,
                f"init_sparsity must be in (0, 1), got {self.init_sparsity}",
            ),
            (
                math.isfinite(self.threshold_decay) and self.threshold_decay >= 0,
                f"threshold_decay must be >= 0, got {self.threshold_decay}",
            ),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(f"method {method!r}: {message}")


class LearnedThreshold(nn.Module):
    """Parametrization: ``ga_threshold(W, T, alpha)`` with T a parameter and alpha a buffer."""

    alpha: torch.Tensor

    def __init__(self, module: nn.Module, init: float, per_channel: bool, alpha: float) -> None:
        super().__init__()
        w = cast(torch.Tensor, module.weight)
        shape = [1] * w.dim()
        if per_channel:
            channel_dim = 1 if is_hf_conv1d(module) else 0  # Conv1D stores (in, out)
            shape[channel_dim] = w.shape[channel_dim]
        self.threshold = nn.Parameter(torch.full(shape, float(init), device=w.device, dtype=w.dtype))
        self.register_buffer("alpha", torch.tensor(float(alpha), device=w.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return ga_threshold(weight, self.threshold.to(weight.dtype), float(self.alpha))


class AutoSparse(DenseStartMethod):
    name = "autosparse"
    options_type = AutoSparseOptions
    options: AutoSparseOptions

    def prepare(self, model: nn.Module, total_steps: int) -> None:
        super().prepare(model, total_steps)
        o = self.options
        init = o.threshold_init if o.init_sparsity is None else _logit_of_quantile(model, self.config, o.init_sparsity)
        self.layers = attach_parametrization(
            model, self.config, lambda m: LearnedThreshold(m, init, o.per_channel, o.alpha0)
        )
        self.alpha = o.alpha0

    def thresholds(self) -> list[nn.Parameter]:
        return [cast(LearnedThreshold, weight_parametrization(m)).threshold for m in self.layers.values()]

    def param_groups(self, model: nn.Module) -> list[dict]:
        ts = {id(t) for t in self.thresholds()}
        rest = [p for p in model.parameters() if id(p) not in ts]
        return [{"params": rest}, {"params": self.thresholds(), "weight_decay": self.options.threshold_decay}]

    def on_epoch_start(self, epoch: int) -> None:
        o = self.options
        horizon = o.alpha_zero_epoch or self.config.epochs
        self.alpha = alpha_schedule(epoch - 1, o.alpha0, horizon, o.alpha_zero_epoch)
        for m in self.layers.values():
            cast(LearnedThreshold, weight_parametrization(m)).alpha.fill_(self.alpha)

    def dense_weight_grad(self) -> bool:
        return self.alpha > 0  # GA sends gradient to every weight until alpha reaches 0

    def epoch_metrics(self) -> dict[str, float]:
        return {"alpha": self.alpha}


@torch.no_grad()
def _logit_of_quantile(model: nn.Module, config, sparsity: float) -> float:
    """logit(q) for q the `sparsity` quantile of |W| over the layers AutoSparse will threshold."""
    flat = torch.cat(
        [
            cast(torch.Tensor, m.weight).detach().abs().float().flatten()
            for _, m in convertible_layers(model, exclude=tuple(config.exclude))
        ]
    )
    q = float(flat.kthvalue(max(1, int(sparsity * flat.numel()))).values)
    q = min(max(q, 1e-6), 1 - 1e-6)
    return math.log(q / (1 - q))
