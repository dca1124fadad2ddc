"""Fused MoE experts as one linear layer per expert, so that `sparsify` converts experts like any linear
layer: each expert's projection gets its own RBGP structure (fitted to its own weights, or to the
calibration tokens routed to it), the router stays dense.

transformers keeps the experts of a MoE block (Mixtral, Qwen2/3-MoE, OLMoE, ...) fused: `gate_up_proj`
(experts, 2 x intermediate, hidden) and `down_proj` (experts, hidden, intermediate), run by an eager loop
over the experts that received tokens. `SplitExperts` holds the same weights as `gate_up[e]` and
`down[e]` (nn.Linear, sharing the fused storage until converted) and runs the same loop, so the split
model computes what the fused one did; `fuse()` gives the fused module back (what `densify` returns).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

EXPERT_PARAMETERS = ("gate_up_proj", "down_proj")


def split_problem(module: nn.Module) -> str | None:
    """None when `module` is a fused experts module `SplitExperts` reproduces exactly; otherwise why not."""
    params = {k: v for k, v in module._parameters.items() if v is not None}
    if set(params) != set(EXPERT_PARAMETERS) or any(p.dim() != 3 for p in params.values()):
        return f"parameters {sorted(params)} are not fused gate_up_proj/down_proj experts"
    (e, two_i, h), (e2, h2, i) = params["gate_up_proj"].shape, params["down_proj"].shape
    if (e, h, two_i) != (e2, h2, 2 * i):
        return f"gate_up_proj {tuple(params['gate_up_proj'].shape)} and down_proj {(e2, h2, i)} do not pair up"
    if not callable(getattr(module, "act_fn", None)):
        return "no act_fn"
    flags = {"has_gate": True, "has_bias": False, "is_transposed": False, "is_concatenated": True}
    odd = [k for k, want in flags.items() if getattr(module, k, want) != want]
    if odd:
        return f"layout flags {odd} differ from the default (gate and up concatenated, (out, in) weights, no bias)"
    gate = getattr(type(module), "_apply_gate", None)
    if gate is not None and gate.__name__ != "_default_apply_gate":
        return f"{type(module).__name__} has its own gating (_apply_gate)"
    return None


class SplitExperts(nn.Module):
    """Fused MoE experts as `gate_up[e]` and `down[e]` linear layers (see the module docstring).
    Forward: `(hidden_states (tokens, hidden), top_k_index (tokens, k), top_k_weights (tokens, k))`, as
    transformers calls its experts modules."""

    _template: nn.Module  # set in __dict__ by __init__

    def __init__(self, fused: nn.Module) -> None:
        if (why := split_problem(fused)) is not None:
            raise ValueError(f"cannot split {type(fused).__name__}: {why}")
        super().__init__()
        gate_up, down = cast(torch.Tensor, fused.gate_up_proj), cast(torch.Tensor, fused.down_proj)
        self.num_experts = gate_up.shape[0]
        self.gate_up = nn.ModuleList(_linear(w) for w in gate_up)
        self.down = nn.ModuleList(_linear(w) for w in down)
        self.act_fn = cast(Callable[[torch.Tensor], torch.Tensor], fused.act_fn)
        placeholders = {  # the fused module without its weights: what fuse() fills in again
            id(p): nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad)
            for p in (gate_up, down)
        }
        self.__dict__["_template"] = copy.deepcopy(fused, placeholders)  # not a submodule: no state, no .to()

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            routed = F.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)  # (E + 1, k, tokens)
            hit = torch.greater(routed.sum(dim=(-1, -2)), 0).nonzero()
        for expert in hit[:, 0].tolist():
            if expert == self.num_experts:  # tokens a router dropped
                continue
            slot, token = torch.where(routed[expert])
            gate, up = self.gate_up[expert](hidden_states[token]).chunk(2, dim=-1)
            y = self.down[expert](self.act_fn(gate) * up) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out

    def fuse(self) -> nn.Module:
        """The fused experts module of the original class with these weights (sparse ones as their masked
        dense weights)."""
        fused = copy.deepcopy(self._template)
        for name, layers in (("gate_up_proj", self.gate_up), ("down_proj", self.down)):
            weights = [
                m.dense_weight() if hasattr(m, "dense_weight") else m.weight for m in cast(Iterable[Any], layers)
            ]
            setattr(fused, name, nn.Parameter(torch.stack([w.detach() for w in weights])))
        return fused.train(self.training)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, fused as {type(self._template).__name__}"


def _linear(weight: torch.Tensor) -> nn.Linear:
    """An nn.Linear (no bias) whose weight shares `weight`'s storage."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
    return layer
