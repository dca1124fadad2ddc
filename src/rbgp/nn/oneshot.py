"""The field's one-shot pruning methods, as baselines for calibrated RBGP conversion: magnitude, Wanda and
SparseGPT, unstructured or n:m (2:4), each a small reference implementation on one (out, in) weight.

`prune_oneshot(model, sparsity, calibration, method)` applies one of them to the layers `sparsify`
would convert, sequentially on calibration data as the papers do, leaving zeros in the dense weights
(the hand-off format of those methods), so a user can compare them with `sparsify(..., calibration=...)`
on the same model and data.

- magnitude: the smallest |w| of the whole layer are zeroed (no data).
- Wanda (Sun et al. 2023): score |w_ij| * ||x_j||, the lowest scores of each output row zeroed; no update.
- SparseGPT (Frantar & Alistarh 2023): columns processed left to right in blocks of 128; in each block
  the weights of lowest w^2 / [H^-1]_jj^2 are zeroed and the error is spread over the columns not yet
  processed through the Cholesky factor of H^-1 (Optimal Brain Surgeon updates).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from rbgp.nn.calibration import TARGETS, GramStats, sequential
from rbgp.nn.reconstruct import DAMP, damped, output_error, solve_grouped

METHODS = ("magnitude", "wanda", "sparsegpt")


def _check(sparsity: float, nm: tuple[int, int] | None, cols: int) -> None:
    if nm is None:
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        return
    n, m = nm
    if not 0 < n < m:
        raise ValueError(f"nm=(n, m) keeps n of every m weights with 0 < n < m, got {nm!r}")
    if cols % m:
        raise ValueError(f"nm={nm!r} needs the input width to be a multiple of {m}, got {cols}")


def _lowest(score: torch.Tensor, count: int, dim: int | None) -> torch.Tensor:
    """Boolean mask of the `count` lowest scores (over all entries, or along `dim`), ties broken by position."""
    if dim is None:
        mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
        mask[torch.argsort(score.reshape(-1), stable=True)[:count]] = True
        return mask.view_as(score)
    idx = torch.argsort(score, dim=dim, stable=True).narrow(dim, 0, count)
    return torch.zeros_like(score, dtype=torch.bool).scatter_(dim, idx, True)


def _nm_pruned(score: torch.Tensor, nm: tuple[int, int]) -> torch.Tensor:
    """Mask of the weights pruned by n:m: in every run of m inputs of a row, the m - n lowest scores."""
    n, m = nm
    out, cols = score.shape
    return _lowest(score.reshape(out, cols // m, m), m - n, dim=2).reshape(out, cols)


def magnitude_prune(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """`weight` with its smallest |w| zeroed: round(sparsity * size) over the layer, or n:m per row."""
    _check(sparsity, nm, weight.shape[1])
    score = weight.abs()
    pruned = _nm_pruned(score, nm) if nm else _lowest(score, int(round(sparsity * weight.numel())), None)
    return weight.masked_fill(pruned, 0)


def wanda_prune(
    weight: torch.Tensor, gram: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None
) -> torch.Tensor:
    """Wanda: |w_ij| * ||x_j|| (||x_j||^2 = H_jj), the lowest int(sparsity * in) of every row zeroed, or n:m."""
    _check(sparsity, nm, weight.shape[1])
    score = weight.abs().double() * gram.double().diagonal().clamp_min(0).sqrt()
    pruned = _nm_pruned(score, nm) if nm else _lowest(score, int(sparsity * weight.shape[1]), dim=1)
    return weight.masked_fill(pruned, 0)


def sparsegpt_prune(
    weight: torch.Tensor,
    gram: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    damp: float = DAMP,
) -> torch.Tensor:
    """SparseGPT: the pruned weight (same shape and dtype) with OBS updates on the weights kept."""
    _check(sparsity, nm, weight.shape[1])
    w = weight.detach().double().clone()
    h = gram.double()
    dead = h.diagonal() <= 0
    w[:, dead] = 0
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped(h, damp))), upper=True)
    cols = w.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        score = w1**2 / h1.diagonal() ** 2
        pruned = torch.zeros_like(w1, dtype=torch.bool) if nm else _lowest(score, int(score.numel() * sparsity), None)
        for i in range(i2 - i1):
            if nm and i % nm[1] == 0:  # n:m decided on the updated weights, run by run
                part = w1[:, i : i + nm[1]] ** 2 / h1.diagonal()[i : i + nm[1]] ** 2
                pruned[:, i : i + nm[1]] = _nm_pruned(part, nm)
            col = w1[:, i]
            q = col.masked_fill(pruned[:, i], 0)
            e = (col - q) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype)


@dataclass
class PruneReport:
    """Per layer: name, achieved sparsity, and the relative output error on the calibration inputs."""

    layers: list[tuple[str, float, float]]

    def __str__(self) -> str:
        rows = [f"| {n} | {s:.4f} | {e:.4g} |" for n, s, e in self.layers]
        return "\n".join(["| layer | sparsity | calibration output error |", "|---|---|---|", *rows])


def prune_oneshot(
    model: nn.Module,
    sparsity: float,
    calibration: Iterable | None = None,
    method: str = "sparsegpt",
    nm: tuple[int, int] | None = None,
    *,
    exclude: str | tuple[str, ...] | list[str] = (),
    keep_first_last: bool = True,
    damp: float = DAMP,
    targets: str = "layer",
) -> PruneReport:
    """Prune the layers `sparsify` would convert (same `exclude` and `keep_first_last`) in place, with
    `method` ("magnitude", "wanda" or "sparsegpt"), unstructured at `sparsity` or n:m (`nm=(2, 4)`).
    Wanda and SparseGPT need `calibration` (see `rbgp.nn.calibration`) and run layer by layer on it.
    targets: "layer" (the papers' choice) or "dense", as in `sparsify`: the method is then applied to the
    full least-squares fit of the unconverted model's outputs, ||X W'^T - X_d W^T||^2 = ||X (W' - W*)^T||^2
    + const, and the bias is re-fitted with it (the layers are replaced by pruned copies)."""
    from rbgp.nn.sparsify import _weight_matrix, convertible_layers

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    if method != "magnitude" and calibration is None:
        raise ValueError(f"method={method!r} needs calibration data (calibration=[batch, ...])")
    layers = convertible_layers(model, exclude, keep_first_last)
    if not layers:
        raise ValueError("model has no layer to prune (see rbgp.sparsify's report for why each is left alone)")
    report = PruneReport([])

    def prune(name: str, module: nn.Module, stats: GramStats | None) -> nn.Module | None:
        keep = targets == "dense" and stats is not None  # the unconverted layer stays for the dense passes
        module = copy.deepcopy(module) if keep else module
        w = _weight_matrix(module)  # a view of the weight (Conv1D's transposed), written below
        b = cast("torch.Tensor | None", module.bias)
        with torch.no_grad():
            dense_w, dense_b = w.clone(), None if b is None else b.clone()
            if stats is not None and stats.cross is not None:
                full = torch.arange(max(w.shape))
                values, new_b = solve_grouped(
                    w, b, stats.gram, full[None, : w.shape[0]], full[None, : w.shape[1]], damp, cross=stats.cross
                )
                w.copy_(values[0])
                if b is not None and new_b is not None:
                    b.copy_(new_b)
            if method == "magnitude":
                new = magnitude_prune(w, sparsity, nm)
            elif method == "wanda":
                assert stats is not None  # measured by `sequential`
                new = wanda_prune(w, stats.inputs, sparsity, nm)
            else:
                assert stats is not None  # measured by `sequential`
                new = sparsegpt_prune(w, stats.inputs, sparsity, nm, damp=damp)
            error = float("nan")
            if stats is not None:
                error = output_error(dense_w, dense_b, new, b, stats.gram, stats.cross, stats.dense_gram)
            w.copy_(new)
        report.layers.append((name, float((new == 0).double().mean()), error))
        return module if keep else None

    if method == "magnitude":
        for name, module in layers:
            prune(name, module, None)
    else:
        assert calibration is not None  # checked above: every other method needs it
        sequential(model, layers, calibration, prune, desc=method, dense_targets=targets == "dense")
    return report
