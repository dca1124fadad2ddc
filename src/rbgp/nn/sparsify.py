"""`sparsify(model, ...)`: the one entry point that makes a model sparse.

It swaps the eligible layers (nn.Linear, transformers' Conv1D, nn.Conv2d and nn.Conv1d with groups=1,
and each expert of transformers' fused MoE experts, split by `rbgp.nn.experts`) for RBGP layers (RBGP
patterns) or masked layers (the baselines). Every layer is planned before any is swapped, so an error
leaves the model untouched (split experts are fused again). Every weight-bearing module left dense is reported
with its reason: kept dense by role (a transformer's output head and classifier heads; the first and
last layer of other models, as in the paper), excluded, no sparsity given, tied weight (an lm_head
shared with the embedding is never untied), grouped/depthwise conv, MultiheadAttention's out_proj (its
parent reads `.weight` directly, so it would run dense), already sparse, too small, infeasible (with
on_infeasible="skip") or an unsupported type.

A layer's sparsity comes from a float, a dict of globs, or a callable; when its shape cannot meet
it, on_infeasible="nearest" (default) takes the nearest feasible sparsity and reports it.
init="magnitude" (default) fits the structure to the weights and keeps them (each row rescaled to its
dense L1 norm), so a trained model keeps as much of its function as the pattern allows; init="kaiming"
re-draws them (training from scratch); with calibration data the structure and weights are fitted to
the layers' inputs (`rbgp.nn.calibration`, `rbgp.nn.reconstruct`).
Stacked RBGP layers built from seeds get alternating input shuffles so their Kronecker tiles do not
line up (DESIGN.md, 'Across layers'); for plain (non-transformer) models the report gives the
network's input-output path coverage next to that of random unstructured masks of the same density.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Union, cast

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rbgp.graphs import path_coverage
from rbgp.nn.calibration import TARGETS, GramStats, as_batches, power_of_two_unit, sequential, set_module
from rbgp.nn.conversions import HANDLERS, SPARSE_TYPES, family, handler, layer_kind
from rbgp.nn.distribution import DEFAULT_DISTRIBUTION, DISTRIBUTIONS, distribute, hw_group_rows
from rbgp.nn.experts import split_problem
from rbgp.nn.rbgp_layers import linear_weight
from rbgp.nn.reconstruct import DAMP, SALIENCIES, calibrated_pattern, fit_calibrated, output_error, solve_grouped
from rbgp.nn.transformers_rules import (
    is_transformers_model,
    output_heads,
    split_experts,
    store_recipe,
    unsplit_experts,
)
from rbgp.patterns import (
    RBGP4,
    Pattern,
    SparseMask,
    Unstructured,
    check_sparsity,
    get_pattern,
    matrix_shape,
)
from rbgp.patterns.fit import check_finite_weight, kept_mass, top_k_mask

CONVS = (nn.Conv2d, nn.Conv1d)
ON_INFEASIBLE = ("nearest", "skip", "error")
INITS = ("magnitude", "keep", "kaiming", "calibrated")
MAX_NEAREST_MISS = 0.1
"""on_infeasible="nearest" takes the nearest feasible sparsity only within this distance of the request;
beyond, the layer stays dense (reported as infeasible)."""

SparsitySpec = Union[float, Mapping[str, Union[float, None]], Callable[[str, nn.Module], Union[float, None]]]


@dataclass
class LayerReport:
    """One converted layer: the sparsity asked for and the one achieved (they differ when the shape
    cannot meet the request exactly), its row-group size (rows per dense sub-GEMM), its expected
    FLOPs per output position (a token, or a conv output pixel) dense and sparse, and, when the dense
    weights were kept, the fraction of their |W| mass kept next to the unstructured top-k bound at
    the same density."""

    name: str
    weight_shape: list[int]
    pattern: str
    requested_sparsity: float
    sparsity: float
    density: float
    rows_per_group: int | None
    params_before: int
    params_after: int
    nnz_per_row: int | None
    structure_bytes: int
    csr_bytes: int
    kept_mass: float | None = None
    top_k_mass: float | None = None
    note: str = ""
    dense_flops: int = 0  # per output position (a token, or a conv output pixel): 2 x out x in (x kh x kw)
    flops: int = 0  # the same for the sparse layer: 2 x non-zeros (padding rows not counted)
    output_error: float | None = None  # calibrated: ||X (W' - W)^T||^2 / ||X W^T||^2 on the calibration inputs


@dataclass
class SparsifyReport:
    """What `sparsify` did: per-layer facts, every weight-bearing module and every other parameter of
    two or more dimensions left dense with its reason (`skipped`), the model's parameters and state
    bytes (index tables included) before and after, the arguments (`recipe`) that rebuild the same
    structure, the converted `model` (a copy with inplace=False) and, for plain stacked models, the
    input-output path coverage. Every parameter is accounted for: the converted weights
    (`layers[i].params_before`) plus `dense_params` make `params_before`."""

    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path_coverage: float | None = None
    random_path_coverage: float | None = None
    params_before: int = 0
    params_after: int = 0
    dense_params: int = 0  # parameters outside the converted weights (embeddings, norms, biases, skipped)
    bytes_before: int = 0  # parameters and buffers, each tensor counted once
    bytes_after: int = 0
    recipe: dict[str, Any] | None = None
    global_sparsity: float | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(r) for r in self.layers],
            "skipped": [list(s) for s in self.skipped],
            "path_coverage": self.path_coverage,
            "random_path_coverage": self.random_path_coverage,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "dense_params": self.dense_params,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "recipe": self.recipe,
            "global_sparsity": self.global_sparsity,
        }

    def table(self) -> str:
        """A markdown table of the converted layers and the modules left dense."""

        def pct(x: float | None) -> str:
            return "" if x is None else f"{x:.1%}"

        calibrated = any(r.output_error is not None for r in self.layers)
        lines = [
            "| layer | weight | pattern | sparsity asked | achieved | rows/group | params before | after | "
            "FLOPs/position dense -> sparse | kept mass | top-k bound | "
            + ("output error | " if calibrated else "")
            + "note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if calibrated else ""),
        ]
        for r in self.layers:
            lines.append(
                f"| {r.name} | {'x'.join(map(str, r.weight_shape))} | {r.pattern} | "
                f"{r.requested_sparsity:.4g} | {r.sparsity:.4f} | {r.rows_per_group or ''} | "
                f"{r.params_before:,} | {r.params_after:,} | {r.dense_flops:,} -> {r.flops:,} | "
                f"{pct(r.kept_mass)} | {pct(r.top_k_mass)} | "
                + (f"{'' if r.output_error is None else f'{r.output_error:.4f}'} | " if calibrated else "")
                + f"{r.note} |"
            )
        for name, why in self.skipped:
            lines.append(f"| {name} | | dense | | 0 | | | | | | | {'| ' if calibrated else ''}{why} |")
        lines.append(
            f"\nModel parameters: {self.params_before:,} before, {self.params_after:,} after "
            f"({_fewer(self.params_before, self.params_after)}); state {_mb(self.bytes_before)} -> "
            f"{_mb(self.bytes_after)} with index tables ({_fewer(self.bytes_before, self.bytes_after)}); "
            f"{len(self.layers)} layers converted, {len(self.skipped)} weights left dense "
            f"({self.dense_params:,} parameters outside the converted weights)"
        )
        if self.global_sparsity is not None:
            lines.append(
                f"Sparsity over the converted layers (and those a distribution kept dense): {self.global_sparsity:.4f}"
            )
        kept = [
            (r.kept_mass, r.top_k_mass, r.params_before)
            for r in self.layers
            if r.kept_mass is not None and r.top_k_mass is not None  # both set, or neither (init="kaiming")
        ]
        if kept:
            w = sum(p for _, _, p in kept)
            lines.append(
                f"Kept |W| mass of the converted layers (weighted by size): "
                f"{sum(k * p for k, _, p in kept) / w:.1%} (unstructured top-k at the same density: "
                f"{sum(t * p for _, t, p in kept) / w:.1%})"
            )
        coverage, random = self.path_coverage, self.random_path_coverage
        if coverage is not None and random is not None and min(coverage, random) < 0.9999:
            lines.append(
                f"Input-output path coverage of the stacked sparse layers: {coverage:.4f} "
                f"(random unstructured masks of the same density: {random:.4f})"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def count_parameters(model: nn.Module) -> int:
    """Parameters of the model, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def count_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (index tables included), each tensor counted once."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _fewer(before: int, after: int) -> str:
    return f"{1 - after / before:.1%} fewer" if before else "none"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """id(weight) -> names of the modules that hold it as their `weight` parameter."""
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if w is not None:
            owners.setdefault(id(w), []).append(name)
    return owners


def _mha_out_projs(model: nn.Module) -> set[str]:
    return {
        f"{name}.out_proj" if name else "out_proj"
        for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
    }


def _classify(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, str]]]:
    """(eligible (name, module) in module order, [(name, reason)] for weight-bearing modules left alone)."""
    eligible, skipped = [], []
    owners = _shared_weights(model)
    out_projs = _mha_out_projs(model)
    for name, m in model.named_modules():
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if isinstance(m, SPARSE_TYPES):
            skipped.append((name, "already sparse"))
            continue
        skipped += _other_matrices(name, m)
        if w is None:
            continue
        if len(owners.get(id(w), ())) > 1:
            others = [o for o in owners[id(w)] if o != name]
            skipped.append((name, f"tied weight (shared with {', '.join(others)})"))
        elif name in out_projs:
            skipped.append((name, "MultiheadAttention out_proj (its parent reads .weight directly: would run dense)"))
        elif type(m) in CONVS and m.groups != 1:
            kind = "depthwise" if m.groups == m.in_channels else "grouped"
            skipped.append((name, f"{kind} conv (groups={m.groups})"))
        elif layer_kind(m) is not None:
            eligible.append((name, m))
        elif isinstance(m, (nn.Linear, *CONVS)):
            skipped.append((name, f"type {type(m).__name__} (a subclass with its own forward)"))
        elif "router" in type(m).__name__.lower():
            skipped.append((name, "MoE router (kept dense by role)"))
        elif w.dim() >= 2:
            skipped.append((name, f"type {type(m).__name__} not supported"))
    return eligible, skipped


def _other_matrices(name: str, module: nn.Module) -> list[tuple[str, str]]:
    """(name, reason) for the module's own parameters of two or more dimensions other than `weight`
    (recurrent weights, MultiheadAttention's in_proj_weight, fused MoE experts): they stay dense."""
    found = []
    for pname, p in module.named_parameters(recurse=False):
        if pname == "weight" or p.dim() < 2:
            continue
        kind = type(module).__name__
        if isinstance(module, nn.RNNBase):
            why = f"{kind} recurrent weight (not supported)"
        elif isinstance(module, nn.MultiheadAttention):
            why = "MultiheadAttention projection read directly by the attention function (would run dense)"
        elif p.dim() == 3 and "expert" in kind.lower():
            why = f"{kind}: fused MoE expert weights {tuple(p.shape)} not converted ({split_problem(module)})"
        else:
            why = f"{kind} parameter of shape {tuple(p.shape)} (not a layer weight rbgp converts)"
        found.append((f"{name}.{pname}" if name else pname, why))
    return found


def _dense_by_role(model: nn.Module, candidates: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """Layers kept dense for their role. In a transformers model: the output head and classifier heads
    (`get_output_embeddings()`, and modules named like heads: lm_head, classifier, score, pooler, ...),
    not whatever comes first in module order (its inputs go through embeddings, which stay dense).
    In other models: the first and the last layer in module order, as in the paper."""
    if is_transformers_model(model):
        return output_heads(model, candidates)
    if len(candidates) < 2:
        return {}
    return {
        candidates[0][0]: "first layer (kept dense, as in the paper)",
        candidates[-1][0]: "last layer (kept dense, as in the paper)",
    }


def _kept_dense(name: str, roles: dict[str, str], excludes: list[str]) -> str | None:
    """Why layer `name` stays dense whatever its sparsity (its role, or an exclude glob), or None."""
    if name in roles:
        return roles[name]
    if any(fnmatch.fnmatchcase(name, pat) for pat in excludes):
        return "excluded"
    return None


def convertible_layers(
    model: nn.Module, exclude: str | tuple[str, ...] | list[str] = (), keep_first_last: bool = True
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs `sparsify` would make sparse with the same `exclude` and `keep_first_last`,
    in module order: for training methods that make their own masks on the same layers."""
    excludes = [exclude] if isinstance(exclude, str) else list(exclude)
    candidates, _ = _classify(model)
    roles = _dense_by_role(model, candidates) if keep_first_last else {}
    return [(name, m) for name, m in candidates if _kept_dense(name, roles, excludes) is None]


def _sparsity_for(spec: SparsitySpec, name: str, module: nn.Module) -> float | None:
    """The sparsity `spec` gives layer `name` (None: leave it dense)."""
    if callable(spec):
        value = spec(name, module)
    elif isinstance(spec, Mapping):
        value = next((v for pat, v in spec.items() if fnmatch.fnmatchcase(name, pat)), None)
    else:
        value = spec
    if value is None:
        return None
    try:
        return check_sparsity(value)
    except ValueError as err:
        raise ValueError(f"layer {name!r}: {err}") from None


def _check_spec(spec: Any) -> None:
    if callable(spec):
        return
    if isinstance(spec, Mapping):
        bad = [k for k in spec if not isinstance(k, str)]
        if bad:
            raise ValueError(f"sparsity dict keys must be module-name globs (str), got {bad}")
        for v in spec.values():
            if v is not None:
                check_sparsity(v)
        return
    check_sparsity(spec)


def _weight_matrix(module: nn.Module) -> torch.Tensor:
    w = module.weight if isinstance(module, CONVS) else linear_weight(module)[0]
    return w.detach().reshape(w.shape[0], -1)


def sparsify(
    model: nn.Module,
    sparsity: SparsitySpec = 0.9,
    pattern: str | Pattern = "rbgp4",
    *,
    exclude: str | tuple[str, ...] | list[str] = (),
    keep_first_last: bool = True,
    seed: int = 0,
    init: str = "magnitude",
    shuffle: bool = True,
    backend: str = "auto",
    on_infeasible: str = "nearest",
    inplace: bool = True,
    distribution: str | None = None,
    calibration: Iterable | None = None,
    saliency: str = "obs",
    damp: float = DAMP,
    targets: str = "dense",
    **pattern_kwargs: Any,
) -> SparsifyReport:
    """Make `model` sparse and report what changed; on any error the model is untouched.

    sparsity: the fraction of zero weights: a float for every layer; a dict of module-name globs to
    sparsities (the first matching glob wins; unmatched layers, or a None value, stay dense); or a
    callable `(name, module) -> sparsity or None`.
    pattern: "rbgp4" (default), "unstructured", "block", "hbsnn", "nm" or a Pattern; pattern_kwargs
    go to the pattern (e.g. block=(16, 16); unknown ones raise a TypeError listing the valid ones).
    exclude: a module name or glob, or a list of them, kept dense (a pattern matching nothing warns).
    keep_first_last: keep the layers dense that the paper keeps dense, by role (see `_dense_by_role`).
    init: "magnitude" fits the structure to |W| (row groups, their columns, the graph between them)
    and keeps the weights, each output row scaled back to its dense L1 norm (data-free;
    benchmarks/pretrained_conversion.md); "keep" keeps them on the seed's structure; "kaiming"
    re-draws them there (std sqrt(2/fan_in), the paper's recipe for training from scratch).
    shuffle: give every second stacked seed-built RBGP4 layer a perfect shuffle of its inputs.
    on_infeasible: when a layer cannot meet its sparsity within the pattern's tolerance, "nearest"
    takes the nearest feasible one (up to 0.1 away), "skip" leaves the layer dense, "error" raises.
    inplace: False leaves `model` as it is and converts a copy (`report.model`).
    distribution: how a float `sparsity` is spread over the converted layers: "hw" (the default for a
    float: hardware-aware, the global fraction of zeros over all converted layers, with every layer's
    row groups large enough to run fast; see `rbgp.nn.distribution`), "erk" (Erdős-Rényi-Kernel, also
    global) or "uniform" (every layer at `sparsity`; the default for a dict or callable). Under "erk"
    and "hw" each layer takes the nearest feasible density to what the rule asks, and the rule is
    re-solved over the layers left, so the global budget is met (on_infeasible does not apply).
    calibration: an iterable of model inputs (tensors, dicts for transformers models, `(input, target)`
    pairs, a DataLoader; a few hundred samples are typical): the layers are converted in the order the
    model runs them, each on the inputs the converted layers before it produce; row groups and their
    micro-blocks are fitted to the `saliency` ("obs", "wanda", "magnitude"), then each group's weights
    and the bias are the exact damped least-squares fit of the `targets`: "dense" (default), the outputs
    the unconverted model gives the layer, so that each layer also corrects the errors of those before
    it (costs a second forward pass per layer and two more Gram matrices); "layer", the dense layer on
    the converted model's inputs, as SparseGPT does (`rbgp.nn.reconstruct`; measured in
    benchmarks/calibrated_conversion.md). The report gives each layer's output error against its
    targets. RBGP4 only (`rbgp.prune_oneshot`: Wanda, SparseGPT).

    The same arguments on the same architecture give the same structure (`report.recipe`; on a
    Hugging Face model also `model.config.rbgp`, which `save_pretrained` keeps for
    `rbgp.from_pretrained`; fitted structures are saved with the weights).
    """
    args = _checked_arguments(
        sparsity,
        pattern,
        exclude,
        keep_first_last,
        seed,
        init,
        shuffle,
        backend,
        on_infeasible,
        inplace,
        distribution,
        calibration,
        saliency,
        damp,
        targets,
        pattern_kwargs,
    )
    if not inplace:
        model = copy.deepcopy(model)
    return _sparsify(model, args)


@dataclass(frozen=True)
class SparsifyArgs:
    """sparsify's arguments once checked (`pattern` built from its name and keywords), as the planning and
    conversion steps read them."""

    sparsity: SparsitySpec
    pattern: Pattern
    excludes: list[str]
    keep_first_last: bool
    seed: int
    init: str
    shuffle: bool
    backend: str
    on_infeasible: str
    distribution: str
    calibration: list | None
    saliency: str
    damp: float
    targets: str
    finer: bool  # the calibrated default's finer plans (`calibrated_pattern`)


def _sparsify(model: nn.Module, args: SparsifyArgs) -> SparsifyReport:
    """plan -> convert -> swap and report, on `model` itself; on any error the model is as it was."""
    report = SparsifyReport(params_before=count_parameters(model), bytes_before=count_bytes(model), model=model)
    split = split_experts(model)  # fused MoE experts as one linear layer per expert, converted like any other
    try:
        candidates, skipped = _classify(model)
        skipped += [(n, _no_handler(m, args.pattern)) for n, m in candidates if handler(args.pattern, m) is None]
        candidates = [(n, m) for n, m in candidates if handler(args.pattern, m) is not None]
        if not candidates:
            unsplit_experts(model, split, skipped)
            return _nothing_to_convert(report, skipped)
        _warn_unmatched(candidates, args.excludes, args.sparsity)
        plans, dense_kept = _plan_layers(model, candidates, skipped, args)
        if args.calibration is None:
            converted = _convert_plans(plans, args)
        else:
            converted = _convert_sequentially(model, plans, args, routed=[name for name, _ in split])
        if not converted:
            _warn_none_converted(skipped, len(candidates))
    except BaseException:
        unsplit_experts(model, split, [])
        raise
    done = {plan.name for plan, _, _, _ in converted}
    unsplit_experts(model, [(n, m) for n, m in split if not any(d.startswith(f"{n}.") for d in done)], skipped)
    return _swap_and_report(report, converted, skipped, dense_kept, args)


def _check_flags(**flags: Any) -> None:
    """TypeError naming a flag that is not a bool, or a seed that is not an integer >= 0."""
    for name, value in flags.items():
        if name == "seed":
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                raise TypeError(f"sparsify: seed must be an integer >= 0, got {value!r}")
        elif not isinstance(value, bool):
            raise TypeError(f"sparsify: {name} must be True or False, got {value!r}")


def _no_handler(module: nn.Module, pattern: Pattern) -> str:
    able = [f.upper() for f, table in HANDLERS.items() if layer_kind(module) in table]
    return f"{type(module).__name__} ({' or '.join(able)} patterns only, not {pattern.kind!r})"


def _convert_plans(plans: list[LayerPlan], args: SparsifyArgs) -> list[Converted]:
    """Every planned layer converted data-free (nothing is swapped in yet)."""
    bar = tqdm(plans, desc="sparsify", unit="layer", leave=False, disable=None if len(plans) > 8 else True)
    return [
        (
            plan,
            _convert(
                plan.module, plan.sparsity, plan.pattern, args.seed + plan.index, args.init, args.backend, plan.name
            ),
            None,
            plan.note,
        )
        for plan in bar
    ]


def _warn_none_converted(skipped: list[tuple[str, str]], candidates: int) -> None:
    sparse = sum(why == "already sparse" for _, why in skipped)
    what = f"nothing left to convert ({sparse} layers are already sparse, " if sparse else "no layer was converted ("
    warnings.warn(f"sparsify: {what}{candidates} stay dense: see report.skipped)", stacklevel=4)


@dataclass
class LayerPlan:
    """One layer's conversion, decided before any layer is swapped: the sparsity asked for, the
    pattern it is planned with and the sparsity it is built at (with a note when they differ)."""

    index: int  # position among the convertible layers (its seed is sparsify's seed + index)
    name: str
    module: nn.Module
    requested: float
    pattern: Pattern
    sparsity: float
    note: str = ""


Converted = tuple[LayerPlan, nn.Module, Union[float, None], str]
"""(plan, the new layer, its calibrated output error or None, the report's note)."""


def _checked_arguments(
    sparsity: Any,
    pattern: Any,
    exclude: Any,
    keep_first_last: Any,
    seed: Any,
    init: Any,
    shuffle: Any,
    backend: str,
    on_infeasible: Any,
    inplace: Any,
    distribution: Any,
    calibration: Any,
    saliency: Any,
    damp: Any,
    targets: Any,
    pattern_kwargs: dict[str, Any],
) -> SparsifyArgs:
    """The arguments checked (calibration read into a list of batches, the pattern built), or a ValueError /
    TypeError that names the bad argument."""
    _check_flags(keep_first_last=keep_first_last, shuffle=shuffle, inplace=inplace, seed=seed)
    _check_spec(sparsity)
    per_layer = callable(sparsity) or isinstance(sparsity, Mapping)
    if distribution is None:
        distribution = "uniform" if per_layer else DEFAULT_DISTRIBUTION
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if distribution != "uniform" and per_layer:
        raise ValueError(
            f"distribution={distribution!r} spreads one global sparsity (a float); a dict or "
            f"callable already gives every layer its own"
        )
    if calibration is not None:
        _check_calibrated(init, saliency, damp, targets)
        calibration = as_batches(calibration)
        init = "calibrated"
    elif init == "calibrated":
        raise ValueError("init='calibrated' needs calibration data (calibration=[batch, ...])")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if on_infeasible not in ON_INFEASIBLE:
        raise ValueError(f"on_infeasible must be one of {ON_INFEASIBLE}, got {on_infeasible!r}")
    try:
        base = get_pattern(pattern, **pattern_kwargs)
    except TypeError as err:
        own = [p for p in inspect.signature(sparsify).parameters if p not in ("model", "pattern_kwargs")]
        raise TypeError(f"sparsify: {err}; sparsify's own keywords: {own}") from None
    if calibration is not None and not isinstance(base, RBGP4):
        raise ValueError(
            f"calibration converts into RBGP4 structures; for pattern {base.kind!r} use "
            f"rbgp.nn.oneshot.prune_oneshot (magnitude, Wanda, SparseGPT; unstructured or 2:4)"
        )
    excludes = [exclude] if isinstance(exclude, str) else list(exclude) if isinstance(exclude, Iterable) else None
    if excludes is None or not all(isinstance(e, str) for e in excludes):
        raise TypeError(f"sparsify: exclude must be a glob or a list of globs (strings), got {exclude!r}")
    finer = calibration is not None and isinstance(pattern, str) and not {"group_rows", "block"} & set(pattern_kwargs)
    return SparsifyArgs(
        sparsity,
        base,
        excludes,
        keep_first_last,
        int(seed),
        init,
        shuffle,
        backend,
        on_infeasible,
        distribution,
        calibration,
        saliency,
        float(damp),
        targets,
        finer,
    )


def _check_calibrated(init: Any, saliency: Any, damp: Any, targets: Any) -> None:
    """Refuse arguments that cannot go with calibration data, naming the bad value."""
    if init not in ("magnitude", "calibrated"):
        raise ValueError(
            f"calibration fits the structure and the weights to the data; it cannot be combined "
            f"with init={init!r} (leave init at its default)"
        )
    if saliency not in SALIENCIES:
        raise ValueError(f"saliency must be one of {SALIENCIES}, got {saliency!r}")
    if not (isinstance(damp, (int, float)) and 0 <= damp < 1e3) or isinstance(damp, bool):
        raise ValueError(f"damp must be a number in [0, 1000), got {damp!r}")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")


def _nothing_to_convert(report: SparsifyReport, skipped: list[tuple[str, str]]) -> SparsifyReport:
    """The report of a model without a convertible layer (a warning when they are all sparse already),
    or a ValueError when it has none at all."""
    sparse = sum(why == "already sparse" for _, why in skipped)
    if sparse:
        warnings.warn(f"sparsify: nothing left to convert ({sparse} layers are already sparse)", stacklevel=4)
        report.skipped, report.params_after = skipped, report.params_before
        report.dense_params, report.bytes_after = report.params_before, report.bytes_before
        return report
    raise ValueError(
        "model has no nn.Linear, Conv1D or groups=1 nn.Conv2d/nn.Conv1d to sparsify"
        + (f" (left alone: {skipped})" if skipped else "")
    )


def _warn_unmatched(candidates: list[tuple[str, nn.Module]], excludes: list[str], sparsity: SparsitySpec) -> None:
    globs = [("exclude", pat) for pat in excludes]
    globs += [("sparsity", pat) for pat in sparsity] if isinstance(sparsity, Mapping) else []
    for what, pat in globs:
        if not any(fnmatch.fnmatchcase(name, pat) for name, _ in candidates):
            warnings.warn(f"sparsify: {what} pattern {pat!r} matches no convertible layer", stacklevel=4)


def _plan_layers(
    model: nn.Module, candidates: list[tuple[str, nn.Module]], skipped: list[tuple[str, str]], args: SparsifyArgs
) -> tuple[list[LayerPlan], int]:
    """(the plans of the layers to convert, the weights a distribution keeps dense); the layers left
    dense are appended to `skipped` with their reason."""
    base, distribution = args.pattern, args.distribution
    roles = _dense_by_role(model, candidates) if args.keep_first_last else {}
    chosen: list[tuple[int, str, nn.Module, float]] = []
    for index, (name, module) in enumerate(candidates):
        if (why := _kept_dense(name, roles, args.excludes)) is not None:
            skipped.append((name, why))
        elif (requested := _sparsity_for(args.sparsity, name, module)) is None:
            skipped.append((name, "no sparsity given for it"))
        else:
            chosen.append((index, name, module, requested))

    def for_layer(module: nn.Module, sparsity: float | None = None) -> Pattern:
        """The pattern a layer is planned with: under "hw", RBGP4 asked for row groups that run fast;
        `finer`: the calibrated default's finer plan."""
        layer = base
        if args.finer and sparsity is not None and isinstance(layer, RBGP4):
            layer = calibrated_pattern(layer, _shape(module), sparsity)
        if distribution == "hw" and isinstance(layer, RBGP4) and layer.min_group_rows == 1:
            layer = layer.replace(min_group_rows=hw_group_rows(_shape(module)[0]))
        return layer

    dense_kept = 0
    if distribution != "uniform":
        densities = distribute(
            [_shape(m) for _, _, m, _ in chosen],
            float(args.sparsity),  # type: ignore[arg-type]  # a float: checked with the distribution
            distribution,
            lambda i, d: _realisable_density(chosen[i][2], d, for_layer(chosen[i][2])),
        )
        for (_, name, module, _), (asked, built) in zip(chosen, densities):
            if built >= 1.0:
                skipped.append(
                    (
                        name,
                        f"kept dense by distribution={distribution!r}"
                        if asked >= 1.0
                        else _feasible_sparsity(module, 1.0 - asked, base, "nearest", name)[2],
                    )
                )
                dense_kept += _weight_matrix(module).numel()
        chosen = [
            (i, name, m, 1.0 - asked) for (i, name, m, _), (asked, built) in zip(chosen, densities) if built < 1.0
        ]
    plans: list[LayerPlan] = []
    for index, name, module, requested in chosen:
        layer_pattern = for_layer(module, requested)
        if (
            isinstance(layer_pattern, RBGP4)
            and args.shuffle
            and args.init in ("keep", "kaiming")
            and len(plans) % 2 == 1
        ):
            layer_pattern = _shuffled(layer_pattern)
        target, note, why_not = _feasible_sparsity(module, requested, layer_pattern, args.on_infeasible, name)
        if target is None:
            skipped.append((name, why_not))
        else:
            plans.append(LayerPlan(index, name, module, requested, layer_pattern, target, note))
    return plans, dense_kept


def _convert_sequentially(
    model: nn.Module, plans: list[LayerPlan], args: SparsifyArgs, routed: list[str]
) -> list[Converted]:
    """Every planned layer fitted to the calibration data, in the order the model runs them (each on
    the inputs of the layers converted before it); the model is as it was afterwards. Layers inside the
    `routed` modules (MoE experts: which tokens they see depends on the layers before) fit their own
    targets, their rows having no counterpart in the unconverted model's."""
    by_name = {plan.name: plan for plan in plans}
    done: dict[str, Converted] = {}

    def convert(name: str, module: nn.Module, stats: GramStats) -> nn.Module:
        plan = by_name[name]
        new, error, extra = _convert_calibrated(
            module,
            plan.sparsity,
            plan.pattern,
            args.seed + plan.index,
            args.backend,
            name,
            stats,
            args.saliency,
            args.damp,
        )
        done[name] = (plan, new, error, "; ".join(filter(None, [plan.note, extra])))
        return new

    if plans:
        sequential(
            model,
            [(p.name, p.module) for p in plans],
            args.calibration or [],
            convert,
            desc="sparsify (calibrated)",
            dense_targets=lambda name: args.targets == "dense" and not any(name.startswith(f"{r}.") for r in routed),
        )
    return [done[p.name] for p in plans if p.name in done]


def _swap_and_report(
    report: SparsifyReport,
    converted: list[Converted],
    skipped: list[tuple[str, str]],
    dense_kept: int,
    args: SparsifyArgs,
) -> SparsifyReport:
    """Swap the converted layers in (nothing before this touched the model, or it was put back) and
    fill in the report."""
    model = report.model
    assert model is not None  # set by _sparsify
    for plan, new, error, note in converted:
        report.layers.append(_layer_report(plan.name, plan.module, new, plan.requested, note, args.init))
        report.layers[-1].output_error = error
        set_module(model, plan.name, new)
    report.skipped = skipped
    report.params_after, report.bytes_after = count_parameters(model), count_bytes(model)
    report.dense_params = report.params_before - sum(r.params_before for r in report.layers)
    if converted:
        total = sum(r.params_before for r in report.layers) + dense_kept
        report.global_sparsity = 1 - (sum(r.params_after for r in report.layers) + dense_kept) / total
    report.recipe = recipe = _recipe(args)
    if recipe is not None:
        store_recipe(model, recipe)
    if not is_transformers_model(model):  # residual streams make stacked-layer coverage meaningless there
        _add_path_coverage(report, [new for _, new, _, _ in converted], args.seed)
    return report


def _shape(module: nn.Module) -> tuple[int, ...]:
    """The weight shape a layer is planned on ((out, in) for linear layers and Conv1D, (out, in, 1, k) for
    nn.Conv1d, which runs as a height-1 2-D conv)."""
    if isinstance(module, nn.Conv1d):
        out, inp, k = module.weight.shape
        return (out, inp, 1, k)
    return tuple(module.weight.shape) if isinstance(module, nn.Conv2d) else tuple(linear_weight(module)[0].shape)


def _realisable_density(module: nn.Module, density: float, pattern: Pattern) -> float:
    """The density `module` is built at when a distribution asks for `density`: the nearest feasible one,
    as on_infeasible="nearest" takes it (1.0: it stays dense); the distribution then re-solves the rest."""
    achieved = pattern.achieved_sparsity(_shape(module), 1.0 - density)
    return 1.0 if achieved is None or abs(achieved - (1.0 - density)) > MAX_NEAREST_MISS else 1.0 - achieved


def _feasible_sparsity(
    module: nn.Module, requested: float, pattern: Pattern, on_infeasible: str, name: str
) -> tuple[float | None, str, str]:
    """(sparsity to build at or None, note for the report, reason when None)."""
    shape = _shape(module)
    nearest = pattern.nearest_sparsity(shape, requested)
    if nearest == requested:
        return requested, "", ""
    m, n = matrix_shape(shape)
    if nearest is None:
        if on_infeasible == "error":
            raise ValueError(
                f"cannot sparsify layer {name!r} ({module}): no sparse {pattern.kind} structure fits its {m}x{n} weight"
            )
        return None, "", f"too small (no sparse {pattern.kind} structure fits a {m}x{n} weight)"
    message = (
        f"a {m}x{n} weight cannot be made {requested:g} sparse with {pattern.kind}; the nearest feasible "
        f"sparsity is {nearest:.4f}"
    )
    if on_infeasible == "error":
        raise ValueError(
            f"cannot sparsify layer {name!r} ({module}): {message} (on_infeasible='nearest' "
            f"takes it, 'skip' leaves the layer dense)"
        )
    if on_infeasible == "skip":
        return None, "", f"infeasible: {message}"
    if abs(nearest - requested) > MAX_NEAREST_MISS:
        return None, "", f"infeasible: {message}, more than {MAX_NEAREST_MISS:g} away"
    return nearest, f"nearest feasible (asked {requested:g})", ""


def _layer_report(name: str, module: nn.Module, new: nn.Module, requested: float, note: str, init: str) -> LayerReport:
    s = cast(SparseMask, new.structure)
    dense = _weight_matrix(module).numel()
    kept = bound = None
    if init != "kaiming":
        w = _weight_matrix(module).float().cpu().numpy()
        kept = kept_mass(w, s.array)
        bound = kept_mass(w, top_k_mask(w, s.sparsity))
    return LayerReport(
        name,
        list(s.weight_shape),
        s.kind,
        requested,
        s.sparsity,
        s.density,
        s.layout.rows_per_group if s.layout is not None else None,
        dense,
        values.numel() if isinstance(values := getattr(new, "values", None), torch.Tensor) else s.nnz,  # RBGP: padding
        s.nnz_per_row,
        s.structure_bytes,
        s.csr_bytes(),
        kept,
        bound,
        note,
        2 * dense,
        2 * s.nnz,
    )


def _add_path_coverage(report: SparsifyReport, swapped: list[nn.Module], seed: int) -> None:
    chains = _chains([_channel_mask(m) for m in swapped])
    report.path_coverage = _coverage(chains)
    if chains:
        rnd = [[_random_like(c, seed + i) for i, c in enumerate(ch)] for ch in chains]
        report.random_path_coverage = _coverage(rnd)


def _channel_mask(layer: nn.Module) -> np.ndarray:
    """The (out, in) connectivity of a layer, a conv's kernel taps collapsed."""
    mask = cast(SparseMask, layer.structure).weight_mask()
    return np.asarray(mask.reshape(mask.shape[0], mask.shape[1], -1).any(axis=2))


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


def _recipe(args: SparsifyArgs) -> dict[str, Any] | None:
    """The JSON-able sparsify arguments that rebuild the same structure, or None when they have no
    plain-data form (a callable sparsity, a custom pattern)."""
    from rbgp.patterns import PATTERNS

    sparsity, pattern = args.sparsity, args.pattern
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(pattern).items()}
    if (
        callable(sparsity)
        or type(pattern) not in PATTERNS.values()
        or not all(isinstance(v, (int, float, str, bool, list, type(None))) for v in kwargs.values())
    ):
        return None
    return {
        "sparsity": dict(sparsity) if isinstance(sparsity, Mapping) else sparsity,
        "pattern": pattern.kind,
        "pattern_kwargs": kwargs,
        "exclude": args.excludes,
        "keep_first_last": args.keep_first_last,
        "seed": args.seed,
        "init": args.init,
        "shuffle": args.shuffle,
        "backend": args.backend,
        "on_infeasible": args.on_infeasible,
        "distribution": args.distribution,
    }


def _random_like(mask: np.ndarray, seed: int) -> np.ndarray:
    """A random unstructured mask with `mask`'s shape and density (all ones when it is dense)."""
    if mask.all():
        return np.ones_like(mask)
    return Unstructured().build(mask.shape, 1.0 - mask.mean(), seed).array


def _shuffled(base: RBGP4, stride: int = 16) -> RBGP4:
    """`base` with a perfect shuffle of its input micro-blocks (measured: stride 8-16 mixes stacked
    layers as well as random masks do)."""
    return base.replace(input_shuffle=stride)


def _convert(
    module: nn.Module, sparsity: float, pattern: Pattern, seed: int, init: str, backend: str, name: str
) -> nn.Module:
    w = _weight_matrix(module)
    try:
        check_finite_weight(w.cpu().numpy())
        structure = (
            pattern.fit(w.float().cpu().numpy(), _shape(module), sparsity, seed) if init == "magnitude" else None
        )
        kwargs = dict(pattern=pattern, seed=seed, keep_weights=init != "kaiming", structure=structure)
        if family(pattern) == "rbgp":
            kwargs["backend"] = backend
        new = handler(pattern, module).from_dense(module, sparsity, **kwargs)  # type: ignore[union-attr]
        if init == "magnitude":  # data-free correction for the pruned mass: each row keeps its L1 norm
            new.scale_rows_(_row_l1_ratio(w, new.dense_weight().detach().reshape(w.shape)))
        _check_converted(new)
    except ValueError as err:
        raise ValueError(f"cannot sparsify layer {name!r} ({module}): {err}") from err
    return new


def _convert_calibrated(
    module: nn.Module,
    sparsity: float,
    pattern: Pattern,
    seed: int,
    backend: str,
    name: str,
    stats: GramStats,
    kind: str,
    damp: float,
) -> tuple[nn.Module, float | None, str]:
    """(the RBGP layer fitted to the calibration statistics, its relative output error, a note).
    A layer the model never called on the calibration data is converted data-free (init="magnitude")."""
    if stats.rows == 0:
        return (
            _convert(module, sparsity, pattern, seed, "magnitude", backend, name),
            None,
            "not called on the calibration data: fitted to |W| (data-free)",
        )
    w = _weight_matrix(module)
    bias = cast(Union[torch.Tensor, None], module.bias)
    b = bias.detach() if bias is not None else None
    try:
        check_finite_weight(w.cpu().numpy())
        if not all(bool(torch.isfinite(g).all()) for g in (stats.gram, stats.cross, stats.dense_gram) if g is not None):
            raise ValueError(
                "its inputs on the calibration data (in the model as converted so far, or unconverted) hold inf/NaN"
            )
        # the structure and the weights are linear in (w, b) and invariant to scaling the Gram matrix: both are
        # scaled by powers of two (exact) into [1, 2), so that no magnitude overflows the float32 ranking
        unit, scale = power_of_two_unit(w), power_of_two_unit(stats.gram.diagonal())
        gram, cross = stats.gram / scale, None if stats.cross is None else stats.cross / scale
        w, b = w / unit, None if b is None else b / unit
        structure = fit_calibrated(
            pattern,
            w,
            gram[:-1, :-1],
            _shape(module),
            sparsity,
            seed,
            kind,
            damp,
            cross=None if cross is None else cross[:-1, :-1],
        )
        new = handler(pattern, module).from_dense(  # type: ignore[union-attr]
            module, sparsity, pattern=pattern, seed=seed, keep_weights=False, backend=backend, structure=structure
        )
        values, bias = solve_grouped(w, b, gram, new.row_index, new.col_index, damp, cross=cross)
        with torch.no_grad():
            new.values.copy_(values * unit)
            if bias is not None:
                new.bias.copy_(bias * unit)
        _check_converted(new)
    except ValueError as err:
        raise ValueError(f"cannot sparsify layer {name!r} ({module}): {err}") from err
    with torch.no_grad():
        dense_gram = None if stats.dense_gram is None else stats.dense_gram / scale
        error = output_error(
            w * unit, None if b is None else b * unit, new.dense_matrix(), new.bias, gram, cross, dense_gram
        )
    return new, error, ""


def _check_converted(new: nn.Module) -> None:
    """Refuse converted weights that overflowed their dtype (dense weights near its largest value)."""
    for pname, p in new.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"its converted {pname} overflow {p.dtype} (the dense weights are too close to the largest "
                f"{p.dtype} value, {torch.finfo(p.dtype).max:.3g})"
            )


def _row_l1_ratio(dense: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Per output row, sum |dense| / sum |kept| (1 where nothing is kept): the factor that gives each
    row of the pruned weight its original L1 norm back."""
    full, part = dense.abs().sum(dim=1), kept.abs().sum(dim=1)
    return torch.where(part > 0, full / part.clamp_min(torch.finfo(part.dtype).tiny), torch.ones_like(full))
