"""Layer benchmarks: RBGP against dense, torch CSR and torch BSR at the same density.

Every case times forward and forward+backward of each method in the same run and reports speedups
over dense. Baselines use the best path torch offers on the device: CSR forward `mm`, grad-input
with the pre-transposed CSR and grad-weight by `sampled_addmm` on the non-zeros; BSR (square blocks,
what torch's CPU kernels accept) forward and grad-input by `mm`, grad-weight as a dense GEMM (torch
has no block-sampled one). Convs run the sparse formats on the im2col matrix.
"""

from __future__ import annotations

import datetime
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rbgp.allocator import allocator_state
from rbgp.experiments.bench.timing import cpu_name, time_fn
from rbgp.nn import RBGPConv2d, RBGPLinear
from rbgp.patterns import Block


@dataclass(frozen=True)
class Case:
    """One benchmark shape: a linear (batch, in, out) or a 3x3 conv (batch, c_in, c_out, hw)."""

    kind: str  # "linear" or "conv"
    batch: int
    in_features: int
    out_features: int
    density: float
    hw: int = 0

    @property
    def label(self) -> str:
        if self.kind == "linear":
            return f"linear {self.out_features}x{self.in_features} b{self.batch} d=1/{round(1 / self.density)}"
        return (
            f"conv3x3 {self.in_features}->{self.out_features} {self.hw}x{self.hw} b{self.batch} "
            f"d=1/{round(1 / self.density)}"
        )


def default_cases(quick: bool = False) -> list[Case]:
    """The issue's shapes: 4096^2 linear at batch 256, VGG19-CIFAR 3x3 convs at batch 64."""
    if quick:
        return [Case("linear", 64, 512, 512, 1 / 8), Case("conv", 8, 64, 64, 1 / 8, hw=8)]
    cases = [Case("linear", 256, 4096, 4096, d) for d in (1 / 4, 1 / 8, 1 / 16)]
    cases += [Case("conv", 64, c, c, 0.1, hw=hw) for c, hw in ((256, 8), (512, 4), (512, 8))]
    return cases


def _csr_methods(w: torch.Tensor) -> tuple[Callable, Callable]:
    """Forward and forward+backward closures on (in, N) feature-major inputs for a CSR weight."""
    csr = w.to_sparse_csr()  # torch warns CSR is beta (filtered where benchmarks run)
    csr_t = w.t().contiguous().to_sparse_csr()

    def fwd(xt):
        return torch.mm(csr, xt)

    def fwd_bwd(xt):
        y = torch.mm(csr, xt)
        dy = torch.ones_like(y)
        torch.mm(csr_t, dy)  # grad input
        torch.sparse.sampled_addmm(csr, dy, xt.t())  # grad weight on the non-zeros
        return y

    return fwd, fwd_bwd


def _bsr_methods(w: torch.Tensor, block: int) -> tuple[Callable, Callable]:
    bsr = w.to_sparse_bsr((block, block))
    bsr_t = w.t().contiguous().to_sparse_bsr((block, block))

    def fwd(xt):
        return torch.mm(bsr, xt)

    def fwd_bwd(xt):
        y = torch.mm(bsr, xt)
        dy = torch.ones_like(y)
        torch.mm(bsr_t, dy)
        torch.mm(dy, xt.t())  # grad weight: dense GEMM (no block-sampled kernel in torch)
        return y

    return fwd, fwd_bwd


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run():
        module.zero_grad(set_to_none=True)
        y = module(x)
        y.backward(torch.ones_like(y))

    return run


def _im2col(x: torch.Tensor) -> torch.Tensor:
    cols = F.unfold(x, 3, padding=1)  # (N, C*9, L)
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C*9, N*L)


def run_case(
    case: Case, device: str = "cpu", dtype=torch.float32, repeats: int = 10, block: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Time dense, CSR, BSR and RBGP on one case; ratios are against dense from this same run."""
    torch.manual_seed(seed)
    sparsity = 1.0 - case.density
    kw = {"device": device, "dtype": dtype}
    dense: nn.Module
    sparse: RBGPLinear | RBGPConv2d
    if case.kind == "linear":
        dense = nn.Linear(case.in_features, case.out_features, bias=False, **kw)
        sparse = RBGPLinear(case.in_features, case.out_features, sparsity, seed=seed, bias=False, **kw)
        x = torch.randn(case.batch, case.in_features, **kw)
        to_matrix = lambda t: t.t().contiguous()
    else:
        dense = nn.Conv2d(case.in_features, case.out_features, 3, padding=1, bias=False, **kw)
        sparse = RBGPConv2d(
            case.in_features, case.out_features, 3, padding=1, sparsity=sparsity, seed=seed, bias=False, **kw
        )
        x = torch.randn(case.batch, case.in_features, case.hw, case.hw, **kw)
        to_matrix = _im2col
    xr = x.clone().requires_grad_(True)
    w_rbgp = sparse.dense_matrix().detach()
    w_block = torch.randn(*w_rbgp.shape, **kw) * torch.as_tensor(
        Block((block, block)).build(tuple(w_rbgp.shape), sparsity, seed).array, device=device
    )
    results: dict[str, Any] = {
        "case": case.label,
        **case.__dict__,
        "rbgp_structure": {
            "nnz_per_row": sparse.nnz_per_row,
            "groups": sparse.values.shape[0],
            "rows_per_group": sparse.values.shape[1],
            "density": sparse.density,
        },
    }
    timings: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        timings["dense"] = {"fwd": time_fn(lambda: dense(x), repeats, device=device)}
        timings["rbgp"] = {"fwd": time_fn(lambda: sparse(x), repeats, device=device)}
        csr_f, csr_fb = _csr_methods(w_rbgp)
        bsr_f, bsr_fb = _bsr_methods(w_block, block)
        timings["csr"] = {"fwd": time_fn(lambda: csr_f(to_matrix(x)), repeats, device=device)}
        timings[f"bsr{block}"] = {"fwd": time_fn(lambda: bsr_f(to_matrix(x)), repeats, device=device)}
        timings["csr"]["fwd_bwd"] = time_fn(lambda: csr_fb(to_matrix(x)), repeats, device=device)
        timings[f"bsr{block}"]["fwd_bwd"] = time_fn(lambda: bsr_fb(to_matrix(x)), repeats, device=device)
    timings["dense"]["fwd_bwd"] = time_fn(_fwd_bwd(dense, xr), repeats, device=device)
    timings["rbgp"]["fwd_bwd"] = time_fn(_fwd_bwd(sparse, xr), repeats, device=device)
    results["timings"] = timings
    for phase in ("fwd", "fwd_bwd"):
        base = timings["dense"][phase]["median_ms"]
        results[f"speedup_{phase}"] = {name: base / t[phase]["median_ms"] for name, t in timings.items()}
        rb = timings["rbgp"][phase]["median_ms"]
        results[f"rbgp_vs_{phase}"] = {name: t[phase]["median_ms"] / rb for name, t in timings.items()}
    results["speedup_per_ideal"] = {p: results[f"speedup_{p}"]["rbgp"] * case.density for p in ("fwd", "fwd_bwd")}
    return results


def environment(device: str) -> dict[str, Any]:
    """Machine, versions and date, recorded with every result file."""
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": cpu_name(),
        "threads": torch.get_num_threads(),
        "device": device,
        "allocator": allocator_state(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name()
    return env
