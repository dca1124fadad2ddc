"""`sparsify(model, ...)`: the one entry point that makes a model sparse.

It swaps the eligible layers (nn.Linear, transformers' Conv1D, nn.Conv2d with groups=1) for RBGP
layers (RBGP patterns) or masked layers (the baselines). Every layer is planned before any is
swapped, so an error leaves the model untouched. Every weight-bearing module left dense is reported
with its reason: first/last layer (kept dense by default, as in the paper), excluded, tied weight
(an lm_head shared with the embedding is never untied), grouped/depthwise conv, MultiheadAttention's
out_proj (its parent reads `.weight` directly, so it would run dense), already sparse, infeasible
(with on_infeasible="skip") or an unsupported type. Stacked RBGP layers get alternating input
shuffles so their Kronecker tiles do not line up (DESIGN.md, 'Across layers'); the report gives the
network's input-output path coverage next to that of random unstructured masks of the same density.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from rbgp.graphs import path_coverage
from rbgp.nn.masked import MaskedConv2d, MaskedLinear
from rbgp.nn.rbgp_layers import RBGPConv2d, RBGPLinear, is_hf_conv1d
from rbgp.patterns import RBGP4, Pattern, Unstructured, check_sparsity, get_pattern

SPARSE_TYPES = (RBGPLinear, RBGPConv2d, MaskedLinear, MaskedConv2d)
ON_INFEASIBLE = ("error", "skip")


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
    """What `sparsify` did: per-layer facts, every weight-bearing module left dense with its reason,
    the model's parameter totals before and after, the arguments (`recipe`) that rebuild the same
    structure, and network-level path coverage."""

    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path_coverage: float | None = None
    random_path_coverage: float | None = None
    params_before: int = 0
    params_after: int = 0
    recipe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers], "skipped": [list(s) for s in self.skipped],
                "path_coverage": self.path_coverage, "random_path_coverage": self.random_path_coverage,
                "params_before": self.params_before, "params_after": self.params_after, "recipe": self.recipe}

    def table(self) -> str:
        """A markdown table of the swapped layers and the modules left dense."""
        lines = ["| layer | weight | pattern | density | params before | after | nnz/row | structure B | CSR B |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in self.layers:
            lines.append(f"| {r.name} | {'x'.join(map(str, r.weight_shape))} | {r.pattern} | {r.density:.4f} | "
                         f"{r.params_before:,} | {r.params_after:,} | {r.nnz_per_row} | {r.structure_bytes:,} | "
                         f"{r.csr_bytes:,} |")
        for name, why in self.skipped:
            lines.append(f"| {name} | | dense ({why}) | 1 | | | | | |")
        lines.append(f"\nModel parameters: {self.params_before:,} before, {self.params_after:,} after "
                     f"({len(self.layers)} layers converted, {len(self.skipped)} left dense)")
        if self.path_coverage is not None:
            lines.append(f"Input-output path coverage of the stacked sparse layers: {self.path_coverage:.4f} "
                         f"(random unstructured masks of the same density: {self.random_path_coverage:.4f})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def count_parameters(model: nn.Module) -> int:
    """Parameters of the model, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """id(weight) -> names of the modules that hold it as their `weight` parameter."""
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if w is not None:
            owners.setdefault(id(w), []).append(name)
    return owners


def _mha_out_projs(model: nn.Module) -> set[str]:
    return {f"{name}.out_proj" if name else "out_proj" for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)}


def _classify(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, str]]]:
    """(eligible (name, module) in module order, [(name, reason)] for weight-bearing modules left alone)."""
    eligible, skipped = [], []
    owners = _shared_weights(model)
    out_projs = _mha_out_projs(model)
    for name, m in model.named_modules():
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if isinstance(m, SPARSE_TYPES):
            skipped.append((name, "already sparse"))
        elif w is None:
            continue
        elif len(owners.get(id(w), ())) > 1:
            others = [o for o in owners[id(w)] if o != name]
            skipped.append((name, f"tied weight (shared with {', '.join(others)})"))
        elif name in out_projs:
            skipped.append((name, "MultiheadAttention out_proj (its parent reads .weight directly: would run dense)"))
        elif type(m) is nn.Conv2d and m.groups != 1:
            kind = "depthwise" if m.groups == m.in_channels else "grouped"
            skipped.append((name, f"{kind} conv (groups={m.groups})"))
        elif type(m) in (nn.Linear, nn.Conv2d) or is_hf_conv1d(m):
            eligible.append((name, m))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            skipped.append((name, f"type {type(m).__name__} (a subclass with its own forward)"))
        elif w.dim() >= 2:
            skipped.append((name, f"type {type(m).__name__} not supported"))
    return eligible, skipped


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
    exclude: str | tuple[str, ...] | list[str] = (),
    keep_first_last: bool = True,
    seed: int = 0,
    init: str = "kaiming",
    shuffle: bool = True,
    backend: str = "auto",
    on_infeasible: str = "error",
    **pattern_kwargs: Any,
) -> SparsifyReport:
    """Make `model` sparse in place and report what changed; on any error the model is untouched.

    pattern: "rbgp4" (default), "unstructured", "block", "hbsnn", "nm" or a Pattern; pattern_kwargs
    go to the pattern (e.g. block=(16, 16); unknown ones raise a TypeError listing the valid ones).
    exclude: a module name or fnmatch glob, or a list of them, kept dense. init: "kaiming"
    re-initialises the kept weights (std sqrt(2/fan_in), the paper's recipe for training from scratch)
    or "keep" keeps the dense weights on the pattern. shuffle: give every second stacked RBGP4 layer a
    perfect shuffle of its inputs so tiles do not line up. on_infeasible: "error" raises when a layer's
    shape cannot be planned at `sparsity`, "skip" leaves that layer dense and reports it.

    The same arguments on the same architecture give the same structure (`report.recipe` holds them;
    on a Hugging Face model they are also stored as `model.config.rbgp`, so `save_pretrained` keeps
    them and `rbgp.from_pretrained` can rebuild the model).
    """
    check_sparsity(sparsity)
    if init not in ("kaiming", "keep"):
        raise ValueError(f"init must be 'kaiming' or 'keep', got {init!r}")
    if on_infeasible not in ON_INFEASIBLE:
        raise ValueError(f"on_infeasible must be one of {ON_INFEASIBLE}, got {on_infeasible!r}")
    excludes = [exclude] if isinstance(exclude, str) else list(exclude)
    base = get_pattern(pattern, **pattern_kwargs)
    candidates, skipped = _classify(model)
    report = SparsifyReport(params_before=count_parameters(model))
    if not candidates:
        sparse = [n for n, why in skipped if why == "already sparse"]
        if sparse:
            warnings.warn(f"sparsify: nothing left to convert ({len(sparse)} layers are already sparse)",
                          stacklevel=2)
            report.skipped, report.params_after = skipped, report.params_before
            return report
        raise ValueError("model has no nn.Linear, Conv1D or groups=1 nn.Conv2d to sparsify"
                         + (f" (left alone: {skipped})" if skipped else ""))
    for pat in excludes:
        if not any(fnmatch.fnmatchcase(name, pat) for name, _ in candidates):
            warnings.warn(f"sparsify: exclude pattern {pat!r} matches no convertible layer", stacklevel=2)
    keep_dense = {candidates[0][0], candidates[-1][0]} if keep_first_last and len(candidates) > 1 else set()
    planned: list[tuple[str, nn.Module, nn.Module]] = []
    for index, (name, module) in enumerate(candidates):
        if name in keep_dense:
            skipped.append((name, "first/last layer"))
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in excludes):
            skipped.append((name, "excluded"))
            continue
        layer_pattern = base
        if isinstance(base, RBGP4) and shuffle and len(planned) % 2 == 1:
            layer_pattern = _shuffled(base)
        try:
            new = _convert(module, sparsity, layer_pattern, seed + index, init, backend, name)
        except ValueError as err:
            if on_infeasible == "error":
                raise
            skipped.append((name, f"infeasible: {err}"))
            continue
        planned.append((name, module, new))
    for name, module, new in planned:  # nothing above touched the model
        _set_module(model, name, new)
        s = new.structure
        report.layers.append(LayerReport(
            name, list(s.weight_shape), s.kind, s.density, module.weight.numel(),
            new.values.numel() if isinstance(new, (RBGPLinear, RBGPConv2d)) else s.nnz,
            s.nnz_per_row, s.structure_bytes, s.csr_bytes()))
    report.skipped = skipped
    report.params_after = count_parameters(model)
    report.recipe = _recipe(sparsity, base, excludes, keep_first_last, seed, shuffle, backend, on_infeasible)
    config = getattr(model, "config", None)
    if report.recipe is not None and hasattr(config, "to_dict") and hasattr(config, "save_pretrained"):
        config.rbgp = report.recipe  # a transformers PretrainedConfig: saved with save_pretrained
    swapped = [new for _, _, new in planned]
    masks = [_channel_mask(m) for m in swapped]
    chains = _chains(masks)
    report.path_coverage = _coverage(chains)
    if chains:
        rnd = [[_random_like(c, seed + i) for i, c in enumerate(ch)] for ch in chains]
        report.random_path_coverage = _coverage(rnd)
    return report


def _recipe(sparsity: float, pattern: Pattern, excludes: list[str], keep_first_last: bool, seed: int,
            shuffle: bool, backend: str, on_infeasible: str) -> dict[str, Any] | None:
    """The JSON-able sparsify arguments that rebuild the same structure, or None when the pattern has
    no plain-data form."""
    from rbgp.patterns import PATTERNS

    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(pattern).items()}
    if type(pattern) not in PATTERNS.values() or not all(isinstance(v, (int, float, str, bool, list, type(None)))
                                                         for v in kwargs.values()):
        return None
    return {"sparsity": sparsity, "pattern": pattern.kind, "pattern_kwargs": kwargs, "exclude": excludes,
            "keep_first_last": keep_first_last, "seed": seed, "shuffle": shuffle, "backend": backend,
            "on_infeasible": on_infeasible}


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
    linear = not isinstance(module, nn.Conv2d)
    try:
        if isinstance(pattern, RBGP4) or pattern.kind == "rbgp":
            cls = RBGPLinear if linear else RBGPConv2d
            return cls.from_dense(module, sparsity, pattern=pattern, seed=seed, keep_weights=keep, backend=backend)
        cls = MaskedLinear if linear else MaskedConv2d
        return cls.from_dense(module, sparsity, pattern=pattern, seed=seed, keep_weights=keep)
    except ValueError as err:
        raise ValueError(f"cannot sparsify layer {name!r} ({module}): {err}") from err
