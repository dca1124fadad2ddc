"""`sparsify(model, ...)`: the one entry point that makes a model sparse.

It swaps the eligible nn.Linear / nn.Conv2d modules (groups=1) in place: RBGP layers for RBGP
patterns, masked layers for the baselines. The first and last eligible layers stay dense by default,
as in the paper. Stacked RBGP layers get alternating input shuffles so their Kronecker tiles do not
line up (DESIGN.md, 'Across layers'); the report gives the network's input-output path coverage next
to that of random unstructured masks of the same density.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from rbgp.graphs import path_coverage
from rbgp.nn.masked import MaskedConv2d, MaskedLinear
from rbgp.nn.rbgp_layers import RBGPConv2d, RBGPLinear
from rbgp.patterns import RBGP4, Pattern, Unstructured, check_sparsity, get_pattern

SPARSE_TYPES = (RBGPLinear, RBGPConv2d, MaskedLinear, MaskedConv2d)


@dataclass
class LayerReport:
    name: str
    weight_shape: list[int]
    pattern: str
    density: float
    params_before: int
    params_after: int
    nnz_per_row: int | None
    structure_bytes: int
    csr_bytes: int


@dataclass
class SparsifyReport:
    """What `sparsify` did: per-layer facts, skipped layers and network-level path coverage."""

    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path_coverage: float | None = None
    random_path_coverage: float | None = None

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers], "skipped": [list(s) for s in self.skipped],
                "path_coverage": self.path_coverage, "random_path_coverage": self.random_path_coverage,
                "params_before": self.params_before, "params_after": self.params_after}

    def table(self) -> str:
        """A markdown table of the swapped layers."""
        lines = ["| layer | weight | pattern | density | params before | after | nnz/row | structure B | CSR B |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.layers:
            lines.append(f"| {r.name} | {'x'.join(map(str, r.weight_shape))} | {r.pattern} | {r.density:.4f} | "
                         f"{r.params_before:,} | {r.params_after:,} | {r.nnz_per_row} | {r.structure_bytes:,} | "
                         f"{r.csr_bytes:,} |")
        for name, why in self.skipped:
            lines.append(f"| {name} | | dense ({why}) | 1 | | | | | |")
        if self.path_coverage is not None:
            lines.append(f"\nInput-output path coverage of the stacked sparse layers: {self.path_coverage:.4f} "
                         f"(random unstructured masks of the same density: {self.random_path_coverage:.4f})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _eligible(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if type(m) in (nn.Linear, nn.Conv2d) and (not isinstance(m, nn.Conv2d) or m.groups == 1)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _channel_mask(layer: nn.Module) -> np.ndarray:
    """The (out, in) connectivity of a layer, a conv's kernel taps collapsed."""
    mask = layer.structure.weight_mask()
    return mask.reshape(mask.shape[0], mask.shape[1], -1).any(axis=2)


def _chains(masks: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Maximal runs of consecutive masks whose shapes chain (out of one == in of the next)."""
    chains: list[list[np.ndarray]] = []
    for m in masks:
        if chains and chains[-1][-1].shape[0] == m.shape[1]:
            chains[-1].append(m)
        else:
            chains.append([m])
    return [c for c in chains if len(c) >= 2]


def _coverage(chains: list[list[np.ndarray]]) -> float | None:
    if not chains:
        return None
    return float(np.mean([path_coverage(c) for c in chains]))


def sparsify(
    model: nn.Module,
    sparsity: float = 0.9,
    pattern: str | Pattern = "rbgp4",
    *,
    exclude: tuple[str, ...] | list[str] = (),
    keep_first_last: bool = True,
    seed: int = 0,
    init: str = "kaiming",
    shuffle: bool = True,
    backend: str = "auto",
    **pattern_kwargs: Any,
) -> SparsifyReport:
    """Make `model` sparse in place and report what changed.

    pattern: "rbgp4" (default), "unstructured", "block", "hbsnn", "nm" or a Pattern; pattern_kwargs
    go to the pattern (e.g. block=(16, 16)). exclude: module names or fnmatch globs kept dense.
    init: "kaiming" re-initialises the kept weights (std sqrt(2/fan_in), the paper's recipe for
    training from scratch) or "keep" keeps the dense weights on the pattern. shuffle: give every
    second stacked RBGP4 layer a perfect-shuffle of its inputs so tiles do not line up.
    """
    check_sparsity(sparsity)
    if init not in ("kaiming", "keep"):
        raise ValueError(f"init must be 'kaiming' or 'keep', got {init!r}")
    base = get_pattern(pattern, **pattern_kwargs)
    candidates = _eligible(model)
    if not candidates:
        raise ValueError("model has no nn.Linear or groups=1 nn.Conv2d to sparsify")
    report = SparsifyReport()
    keep_dense = {candidates[0][0], candidates[-1][0]} if keep_first_last and len(candidates) > 1 else set()
    swapped: list[nn.Module] = []
    for index, (name, module) in enumerate(candidates):
        if name in keep_dense:
            report.skipped.append((name, "first/last layer"))
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            report.skipped.append((name, "excluded"))
            continue
        layer_pattern = base
        if isinstance(base, RBGP4) and shuffle and len(swapped) % 2 == 1:
            layer_pattern = _shuffled(base)
        new = _convert(module, sparsity, layer_pattern, seed + index, init, backend, name)
        _set_module(model, name, new)
        swapped.append(new)
        s = new.structure
        report.layers.append(LayerReport(
            name, list(s.weight_shape), s.kind, s.density, module.weight.numel(),
            new.values.numel() if isinstance(new, (RBGPLinear, RBGPConv2d)) else s.nnz,
            s.nnz_per_row, s.structure_bytes, s.csr_bytes()))
    masks = [_channel_mask(m) for m in swapped]
    chains = _chains(masks)
    report.path_coverage = _coverage(chains)
    if chains:
        rnd = [[_random_like(c, seed + i) for i, c in enumerate(ch)] for ch in chains]
        report.random_path_coverage = _coverage(rnd)
    return report


def _random_like(mask: np.ndarray, seed: int) -> np.ndarray:
    """A random unstructured mask with `mask`'s shape and density (all ones when it is dense)."""
    if mask.all():
        return np.ones_like(mask)
    return Unstructured().build(mask.shape, 1.0 - mask.mean(), seed).array


def _shuffled(base: RBGP4, stride: int = 16) -> RBGP4:
    """`base` with a perfect shuffle of its input micro-blocks (measured: stride 8-16 mixes stacked
    layers as well as random masks do)."""
    return RBGP4(base.block, base.group_rows, base.outer_sparsity, base.tile, base.tol, input_shuffle=stride)


def _convert(module: nn.Module, sparsity: float, pattern: Pattern, seed: int, init: str, backend: str,
             name: str) -> nn.Module:
    keep = init == "keep"
    try:
        if isinstance(pattern, RBGP4) or pattern.kind == "rbgp":
            cls = RBGPLinear if isinstance(module, nn.Linear) else RBGPConv2d
            return cls.from_dense(module, sparsity, pattern=pattern, seed=seed, keep_weights=keep, backend=backend)
        cls = MaskedLinear if isinstance(module, nn.Linear) else MaskedConv2d
        return cls.from_dense(module, sparsity, pattern=pattern, seed=seed, keep_weights=keep)
    except ValueError as err:
        raise ValueError(f"cannot sparsify layer {name!r} ({module}): {err}") from err
