"""`densify(model)`: the inverse of `sparsify`, back to plain nn.Linear / nn.Conv2d / nn.Conv1d (or transformers'
Conv1D where that is what was converted, and the fused module of MoE experts), with the masked weights
(zeros off the pattern), so the model computes the same function with stock layers: to export, to hand
to tools that expect dense layers, or to fine-tune dense."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from rbgp.nn.calibration import set_module
from rbgp.nn.experts import SplitExperts
from rbgp.nn.masked import MaskedConv2d, MaskedLinear
from rbgp.nn.rbgp_layers import RBGPConv1d, RBGPConv2d, RBGPLinear, is_hf_conv1d


def _dense_linear(layer: RBGPLinear | MaskedLinear) -> nn.Module:
    w = layer.dense_weight().detach()
    bias = layer.bias is not None
    dense_type = layer.dense_type
    if dense_type is not nn.Linear and dense_type is not MaskedLinear:
        probe = dense_type(w.shape[0], w.shape[1])  # transformers' Conv1D(nf=out, nx=in)
        if is_hf_conv1d(probe):
            probe.to(device=w.device, dtype=w.dtype)
            weight, probe_bias = cast(torch.Tensor, probe.weight), cast(torch.Tensor, probe.bias)
            with torch.no_grad():
                weight.copy_(w.t())
                probe_bias.copy_(layer.bias if layer.bias is not None else torch.zeros_like(probe_bias))
            return probe
    out = nn.Linear(w.shape[1], w.shape[0], bias=bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out


def _dense_conv(layer: RBGPConv2d | MaskedConv2d) -> nn.Conv2d | nn.Conv1d:
    w = layer.dense_weight().detach()
    conv: Callable[..., nn.Conv2d | nn.Conv1d] = nn.Conv1d if isinstance(layer, RBGPConv1d) else nn.Conv2d
    out = conv(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        groups=1,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        out.weight.copy_(w)
        if layer.bias is not None:
            assert out.bias is not None  # built with bias=layer.bias is not None
            out.bias.copy_(layer.bias)
    return out


def densify(model: nn.Module, inplace: bool = True) -> nn.Module:
    """Replace every RBGP and masked layer of `model` by the dense layer it stands for and return the
    model (a converted copy with inplace=False, `model` left as it is). The sparsify recipe stored in
    a transformers config is removed, so `save_pretrained` writes a plain dense model."""
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, (RBGPLinear, RBGPConv2d, MaskedLinear, MaskedConv2d)):
        raise TypeError("densify converts the layers inside a model; for a single layer use layer.dense_weight()")
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (RBGPLinear, RBGPConv2d, MaskedLinear, MaskedConv2d))
    ]
    for name, m in targets:
        new = _dense_conv(m) if isinstance(m, (RBGPConv2d, MaskedConv2d)) else _dense_linear(m)
        new.train(m.training)
        set_module(model, name, new)
    for name, m in list(model.named_modules()):  # split MoE experts, all dense again: the fused module
        if isinstance(m, SplitExperts) and all(type(c) is nn.Linear for c in (*m.gate_up, *m.down)):
            set_module(model, name, m.fuse())
    config = getattr(model, "config", None)
    if targets and config is not None and hasattr(config, "rbgp"):
        del config.rbgp
    return model
