"""FLOPs of a model's linear and conv layers, dense-equivalent and actual, the way AutoSparse reports
its training and inference reductions.

Per sample, a layer with `nnz` non-zero weights applied at `positions` output positions (conv output
pixels; 1 for a linear layer on a vector) costs `2 * nnz * positions` FLOPs forward; training adds
the input gradient (the same) and the weight gradient (the same, or `2 * numel * positions` when the
method sends gradient to every weight, as Gradient Annealing does while alpha > 0). Normalisation,
activations and pooling are not counted. "Actual" is what a kernel that skips the zeros would do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import nn

from rbgp.nn import SPARSE_TYPES
from rbgp.nn.rbgp_layers import is_hf_conv1d

__all__ = ["flops", "layer_nnz", "layer_positions", "weight_layers"]


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The linear and conv layers (dense, masked, RBGP or parametrized), by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d, *SPARSE_TYPES)) or is_hf_conv1d(m)
    }


@torch.no_grad()
def layer_positions(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> dict[str, int]:
    """Output positions per sample of every weight layer, from one forward pass on a zero sample."""
    layers = weight_layers(model)
    positions: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
            channels = output.shape[1] if output.dim() == 4 else output.shape[-1]
            positions[name] = max(1, output.numel() // (output.shape[0] * channels))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return positions


@torch.no_grad()
def layer_nnz(module: nn.Module) -> tuple[int, int]:
    """(non-zero weights, all weights) of a weight layer: RBGP and masked layers from their structure
    (no dense weight is built), others by counting their (possibly parametrized) weight."""
    structure = getattr(module, "structure", None)
    if structure is not None:
        numel = math.prod(structure.weight_shape)
        return round(structure.density * numel), numel
    weight = cast(torch.Tensor, module.weight)
    return int(torch.count_nonzero(weight)), weight.numel()


def flops(model: nn.Module, positions: dict[str, int], dense_grad: Iterable[str] = ()) -> dict[str, float]:
    """Per-sample FLOPs: inference and one training step, actual and dense-equivalent. Layers named
    in `dense_grad` compute their full weight gradient."""
    dense_grad = set(dense_grad)
    out = {"infer_flops": 0.0, "infer_flops_dense": 0.0, "train_flops": 0.0, "train_flops_dense": 0.0}
    for name, m in weight_layers(model).items():
        if name not in positions:
            continue  # not reached by the forward pass
        nnz, numel = layer_nnz(m)
        p = 2.0 * positions[name]
        out["infer_flops"] += p * nnz
        out["infer_flops_dense"] += p * numel
        out["train_flops"] += p * (2 * nnz + (numel if name in dense_grad else nnz))
        out["train_flops_dense"] += 3 * p * numel
    return out
