"""Which sparse layer stands for which dense layer, per pattern family: the conversion handlers of `sparsify`.

RBGP patterns convert into RBGP layers (grouped values and index tables, the fast kernels); the baseline
patterns (unstructured, block, N:M, HBsNN) into masked layers (a dense weight and its mask). A dense
layer type a family has no handler for stays dense, with the reason.
"""

from __future__ import annotations

from torch import nn

from rbgp.nn.masked import MaskedConv2d, MaskedLinear
from rbgp.nn.rbgp_layers import RBGPConv1d, RBGPConv2d, RBGPLinear, is_hf_conv1d
from rbgp.patterns import RBGP4, Pattern

HANDLERS: dict[str, dict[str, type[nn.Module]]] = {
    "rbgp": {"linear": RBGPLinear, "conv2d": RBGPConv2d, "conv1d": RBGPConv1d},
    "masked": {"linear": MaskedLinear, "conv2d": MaskedConv2d},
}
SPARSE_TYPES = (RBGPLinear, RBGPConv2d, MaskedLinear, MaskedConv2d)


def family(pattern: Pattern) -> str:
    """ "rbgp" for the RBGP patterns, "masked" for the baselines."""
    return "rbgp" if isinstance(pattern, RBGP4) or pattern.kind == "rbgp" else "masked"


def layer_kind(module: nn.Module) -> str | None:
    """ "linear" (nn.Linear, transformers' Conv1D), "conv2d", "conv1d", or None for any other type (subclasses
    with their own forward included)."""
    if type(module) is nn.Linear or is_hf_conv1d(module):
        return "linear"
    kinds: dict[type[nn.Module], str] = {nn.Conv2d: "conv2d", nn.Conv1d: "conv1d"}
    return kinds.get(type(module))


def handler(pattern: Pattern, module: nn.Module) -> type[nn.Module] | None:
    """The sparse layer class that converts `module` under `pattern` (its `from_dense`), or None."""
    kind = layer_kind(module)
    return None if kind is None else HANDLERS[family(pattern)].get(kind)
