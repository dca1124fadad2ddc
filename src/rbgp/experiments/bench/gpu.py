"""GPU layer benchmarks: RBGP (Triton) against dense cuBLAS, cuSPARSE CSR, torch BSR and 2:4 sparsity.

`run_gpu_bench(out_dir, dtype, quick)` times forward and forward+backward of every method with
`triton.testing.do_bench` (median and 20/80% quantiles, ms) on

- square linear layers 4096^2 and 8192^2 at batch 4096 and 8192, densities 1/2, 1/4, 1/8, 1/16;
- the 3x3 conv layers of VGG19 and WRN-40-4 on CIFAR (32x32) at batch 128 and 256, 90% sparse, as
  im2col GEMMs (rows = batch * output pixels, K = c_in * 9); first convs (c_in = 3) stay dense.

and writes `gpu-<device>.json`, `.md` and `.png` to out_dir. Methods, all at the RBGP layer's density:

| method | forward | grad-input | grad-weight |
|---|---|---|---|
| dense | F.linear (cuBLAS) | autograd | autograd |
| csr | mm(W_csr, x^T) (cuSPARSE SpMM) | mm(W^T_csr, dy^T) | sampled_addmm on W's pattern (SDDMM) |
| bsr16 | F.linear(x, W_bsr) (torch's Triton BSR kernel for 16-bit) | F.linear(dy, W^T_bsr) | BSR sampled_addmm* |
| 2:4 | F.linear(x, W_2:4) (CUTLASS/cuSPARSELt), density 1/2 only | 2:4 W^T (timing only) | dense GEMM |
| rbgp | Triton forward kernel | transposed-pattern kernel | sampled kernel |

(*) torch's Triton BSR sampled_addmm, or a dense GEMM where it fails (the JSON says which).
CSR gets its input pre-transposed (feature-major) for free. Every method is wrapped so a failure is
recorded as "unsupported: <reason>" instead of stopping the run. TF32 is off for fp32 (cuBLAS and
RBGP's "ieee" dots compare like with like). Importing this module needs neither CUDA nor triton.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

Timing = dict[str, float] | str  # {"median_ms", "q20_ms", "q80_ms"} or "unsupported: <reason>"
PHASES = ("fwd", "fwd_bwd")
METHODS = ("dense", "csr", "bsr16", "2:4", "rbgp")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class GpuCase:
    """One GEMM-shaped layer: y (rows, out) = x (rows, in) W^T with W at `density`."""

    kind: str  # "linear" or "conv"
    rows: int  # batch (linear) or batch * output pixels (conv)
    in_features: int  # K of the GEMM (c_in * 9 for a 3x3 conv)
    out_features: int
    density: float
    model: str = ""  # "vgg19" / "wrn40_4" for convs
    batch: int = 0  # images (convs)
    hw: int = 0  # output spatial size (convs)
    count: int = 1  # layers of the model with this shape

    @property
    def label(self) -> str:
        d = f"d=1/{round(1 / self.density)}" if self.density < 1 else "d=1"
        if self.kind == "linear":
            return f"linear {self.out_features}x{self.in_features} b{self.rows} {d}"
        return (
            f"{self.model} conv {self.in_features // 9}->{self.out_features} {self.hw}x{self.hw} "
            f"b{self.batch} x{self.count} {d}"
        )


def conv_layers(model: str) -> list[tuple[int, int, int, int]]:
    """(c_in, c_out, output hw, count) of the 3x3, groups=1 convs of a CIFAR model ("vgg19", "wrn40_4"),
    first conv (c_in = 3) excluded; found by a forward pass on the meta device (no memory, no compute)."""
    from rbgp.experiments.models import build_model

    with torch.device("meta"):
        net = build_model(model, num_classes=10, in_channels=3)
        seen: dict[tuple[int, int, int], int] = {}

        def hook(mod, _inp, out):
            if mod.kernel_size == (3, 3) and mod.groups == 1 and mod.in_channels > 3:
                key = (mod.in_channels, mod.out_channels, out.shape[-1])
                seen[key] = seen.get(key, 0) + 1

        handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        net.eval()(torch.empty(1, 3, 32, 32))
        for h in handles:
            h.remove()
    return [(ci, co, hw, n) for (ci, co, hw), n in seen.items()]


def gpu_cases(quick: bool = False, only: str | None = None) -> list[GpuCase]:
    """The benchmark's layer list; quick: one small linear and one conv per model (a smoke run);
    only: "linear" or "conv" to keep one kind."""
    batches: tuple[int, ...]
    if quick:
        cases = [GpuCase("linear", 1024, 1024, 1024, d) for d in (1 / 2, 1 / 8)]
        convs = {m: conv_layers(m)[:1] for m in ("vgg19", "wrn40_4")}
        batches = (32,)
    else:
        cases = [
            GpuCase("linear", b, n, n, d)
            for n in (4096, 8192)
            for b in (4096, 8192)
            for d in (1 / 2, 1 / 4, 1 / 8, 1 / 16)
        ]
        convs = {m: conv_layers(m) for m in ("vgg19", "wrn40_4")}
        batches = (128, 256)
    for model, layers in convs.items():
        for batch in batches:
            cases += [
                GpuCase("conv", batch * hw * hw, ci * 9, co, 0.1, model, batch, hw, n) for ci, co, hw, n in layers
            ]
    if only not in (None, "linear", "conv"):
        raise ValueError(f"only must be 'linear', 'conv' or None, got {only!r}")
    return [c for c in cases if only is None or c.kind == only]


# ---- methods -----------------------------------------------------------------------------------------------

Methods = dict[str, tuple[Callable[[], Any], Callable[[], Any]]]


def _rbgp_layout(out: int, inp: int, density: float, device: str, seed: int = 0):
    """The RBGP4 layout nearest the density (widening tol / narrowing blocks for awkward conv shapes)."""
    from rbgp.ops import LayoutTensors
    from rbgp.patterns import RBGP4

    err = None
    for kw in ({}, {"tol": 0.03}, {"block": (1, 8), "tol": 0.03}, {"block": (1, 8), "group_rows": 32, "tol": 0.05}):
        try:
            mask = RBGP4(**kw).build((out, inp), 1 - density, seed)
            assert mask.layout is not None  # an RBGP4 mask always has its grouped layout
            return LayoutTensors.from_layout(mask.layout, device), mask.density, kw
        except ValueError as e:
            err = e
    raise ValueError(f"no RBGP4 layout for {out}x{inp} at density {density:g}: {err}")


def _unsupported(e: BaseException) -> str:
    return f"unsupported: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def build_methods(
    case: GpuCase, dtype: torch.dtype, device: str = "cuda", seed: int = 0, block: int = 16
) -> tuple[Methods, dict[str, str], dict[str, Any]]:
    """(closures per method, "unsupported: ..." per method that failed to build, layer notes)."""
    from rbgp.ops import dense_weight

    gen = torch.Generator(device).manual_seed(seed)
    n, inp, out = case.rows, case.in_features, case.out_features
    x = torch.randn(n, inp, generator=gen, device=device).to(dtype)
    dy = torch.randn(n, out, generator=gen, device=device).to(dtype)
    methods: Methods = {}
    failed: dict[str, str] = {}
    notes: dict[str, Any] = {}

    def add(name: str, make: Callable[[], tuple[Callable, Callable]]) -> None:
        try:
            methods[name] = make()
        except Exception as e:  # one baseline failing must not stop the run
            failed[name] = _unsupported(e)

    layout, density, plan_kw = _rbgp_layout(out, inp, case.density, device, seed)
    values = torch.randn(layout.values_shape, generator=gen, device=device).to(dtype)
    w_rbgp = dense_weight(values, layout)  # the same mask for CSR
    notes.update({"rbgp_density": density, "rbgp_values_shape": list(layout.values_shape), "rbgp_planner": plan_kw})

    def dense():
        w = torch.randn(out, inp, generator=gen, device=device).to(dtype)
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        return (lambda: F.linear(x, w), lambda: torch.autograd.grad(F.linear(xr, wr), (xr, wr), dy))

    def csr():
        w_csr = w_rbgp.to_sparse_csr()
        w_t = w_rbgp.t().contiguous().to_sparse_csr()
        xt, dyt = x.t().contiguous(), dy.t().contiguous()

        def fwd_bwd():
            y = torch.mm(w_csr, xt)
            torch.mm(w_t, dyt)
            torch.sparse.sampled_addmm(w_csr, dyt, x)
            return y

        fwd_bwd()  # fail at build time, not while timing
        return (lambda: torch.mm(w_csr, xt)), fwd_bwd

    def bsr():
        return _bsr_method(x, dy, out, inp, block, density, seed, gen, notes)

    def semi():
        return _semi_method(x, dy, out, inp, density, gen)

    def rbgp():
        from rbgp.ops.triton_ops import triton_linear

        xr, vr = x.clone().requires_grad_(), values.clone().requires_grad_()
        return (
            lambda: triton_linear(x, values, layout),
            lambda: torch.autograd.grad(triton_linear(xr, vr, layout), (xr, vr), dy),
        )

    for name, make in (("dense", dense), ("csr", csr), (f"bsr{block}", bsr), ("2:4", semi), ("rbgp", rbgp)):
        add(name, make)
    return methods, failed, notes


def _bsr_method(
    x: torch.Tensor,
    dy: torch.Tensor,
    out: int,
    inp: int,
    block: int,
    density: float,
    seed: int,
    gen: torch.Generator,
    notes: dict[str, Any],
) -> tuple[Callable, Callable]:
    """torch BSR (block x block blocks at the RBGP layer's density): (forward, forward + backward)."""
    from rbgp.patterns import Block

    device, dtype = x.device, x.dtype
    mask = Block((block, block)).build((out, inp), 1 - density, seed)
    notes["bsr_density"] = mask.density
    w = torch.randn(out, inp, generator=gen, device=device).to(dtype) * torch.as_tensor(mask.array, device=device)
    w_bsr, w_t = w.to_sparse_bsr((block, block)), w.t().contiguous().to_sparse_bsr((block, block))
    try:
        from torch.sparse._triton_ops import sampled_addmm as bsr_sampled

        bsr_sampled(w_bsr, dy.t(), x)
        grad_w = lambda: bsr_sampled(w_bsr, dy.t(), x)
        notes["bsr_grad_weight"] = "triton sampled_addmm"
    except Exception as e:
        grad_w = lambda: torch.mm(dy.t(), x)
        notes["bsr_grad_weight"] = f"dense GEMM ({_unsupported(e)})"

    def fwd_bwd():
        y = F.linear(x, w_bsr)
        F.linear(dy, w_t)
        grad_w()
        return y

    fwd_bwd()
    return (lambda: F.linear(x, w_bsr)), fwd_bwd


def _semi_method(
    x: torch.Tensor, dy: torch.Tensor, out: int, inp: int, density: float, gen: torch.Generator
) -> tuple[Callable, Callable]:
    """torch 2:4 semi-structured sparsity (density 1/2 only): (forward, forward + backward)."""
    device, dtype = x.device, x.dtype
    if abs(density - 0.5) > 0.02:
        raise ValueError(f"2:4 sparsity is density 1/2 only (layer density {density:.3g})")
    from torch.sparse import to_sparse_semi_structured

    def two_four(rows: int, cols: int) -> torch.Tensor:
        keep = torch.tensor([1, 1, 0, 0], device=device, dtype=dtype).repeat(rows, cols // 4)
        return torch.randn(rows, cols, generator=gen, device=device).to(dtype) * keep

    w_s = to_sparse_semi_structured(two_four(out, inp))
    w_t = to_sparse_semi_structured(two_four(inp, out))

    def fwd_bwd():
        y = F.linear(x, w_s)
        F.linear(dy, w_t)
        torch.mm(dy.t(), x)
        return y

    fwd_bwd()
    return (lambda: F.linear(x, w_s)), fwd_bwd


# ---- timing ------------------------------------------------------------------------------------------------


def _do_bench(fn: Callable[[], Any], quick: bool) -> dict[str, float]:
    from triton.testing import do_bench

    med, q20, q80 = do_bench(fn, warmup=10 if quick else 20, rep=30 if quick else 60, quantiles=[0.5, 0.2, 0.8])
    return {"median_ms": float(med), "q20_ms": float(q20), "q80_ms": float(q80)}


def summarize(case: GpuCase, timings: dict[str, dict[str, Timing]], notes: dict[str, Any]) -> dict[str, Any]:
    """One result row: timings plus speedups over dense and RBGP's ratio to every other method
    (None where either side is unsupported)."""

    def ms(method: str, phase: str) -> float | None:
        t = timings.get(method, {}).get(phase)
        return t["median_ms"] if isinstance(t, dict) else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    row: dict[str, Any] = {"case": case.label, **asdict(case), **notes, "timings": timings}
    for phase in PHASES:
        base, rb = ms("dense", phase), ms("rbgp", phase)
        row[f"speedup_{phase}"] = {m: ratio(base, ms(m, phase)) for m in timings}
        row[f"rbgp_vs_{phase}"] = {m: ratio(ms(m, phase), rb) for m in timings}
    return row


def bench_case(
    case: GpuCase,
    dtype: torch.dtype,
    device: str = "cuda",
    quick: bool = False,
    bench: Callable[[Callable[[], Any], bool], dict[str, float]] = _do_bench,
) -> dict[str, Any]:
    """Time every method on one case; failures become "unsupported: <reason>" entries."""
    methods, failed, notes = build_methods(case, dtype, device)
    timings: dict[str, dict[str, Timing]] = {m: {p: r for p in PHASES} for m, r in failed.items()}
    for name, (fwd, fwd_bwd) in methods.items():
        timings[name] = {}
        for phase, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
            try:
                with torch.no_grad() if phase == "fwd" else torch.enable_grad():
                    timings[name][phase] = bench(fn, quick)
            except Exception as e:
                timings[name][phase] = _unsupported(e)
    order = [m for m in ("dense", "csr", "bsr16", "2:4", "rbgp") if m in timings] + [
        m for m in timings if m not in METHODS
    ]
    return summarize(case, {m: timings[m] for m in order}, notes)


# ---- reports -----------------------------------------------------------------------------------------------


def _cell(t: Timing) -> str:
    if isinstance(t, dict):
        return f"{t['median_ms']:.3f}"
    return "n/a"


def _ratio(v: float | None) -> str:
    return f"{v:.2f}x" if v else "n/a"


def gpu_markdown_table(data: dict[str, Any]) -> str:
    """Medians (ms) per method and phase, RBGP's speedup over dense, CSR and BSR; n/a = unsupported
    (the reasons are listed under the table)."""
    env = data["environment"]
    lines = [
        f"Command: `{data['command']}`  ",
        f"Device: {env.get('device_name', env.get('device'))}, torch {env['torch']}, triton "
        f"{env.get('triton', '?')}, dtype {data['dtype']}, date {env['date']}; do_bench medians "
        f"(20/80% quantiles in the JSON)",
        "",
    ]
    methods: list[str] = []
    for r in data["results"]:
        methods += [m for m in r["timings"] if m not in methods]
    others = [m for m in methods if m not in ("dense", "rbgp")]
    head = (
        ["case", "phase"]
        + [f"{m} ms" for m in methods]
        + ["RBGP vs dense"]
        + [f"RBGP vs {m}" for m in others]
        + ["x ideal (1/density)"]
    )
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reasons: dict[str, str] = {}
    for r in data["results"]:
        for phase in PHASES:
            cells = []
            for m in methods:
                t = r["timings"].get(m, {}).get(phase, "unsupported: not run")
                cells.append(_cell(t))
                if not isinstance(t, dict):
                    reasons.setdefault(f"{m} ({phase})", t.removeprefix("unsupported: "))
            sp = r[f"speedup_{phase}"].get("rbgp")
            ideal = f"{sp * r.get('rbgp_density', r['density']):.2f}" if sp else "n/a"
            lines.append(
                f"| {r['case']} | {phase} | "
                + " | ".join(cells)
                + f" | {_ratio(sp)} | "
                + " | ".join(_ratio(r[f"rbgp_vs_{phase}"].get(m)) for m in others)
                + f" | {ideal} |"
            )
    if reasons:
        lines += ["", "Unsupported (first reason seen per method and phase):", ""]
        lines += [f"- {k}: {v}" for k, v in reasons.items()]
    return "\n".join(lines) + "\n"


def plot_gpu(data: dict[str, Any], path: str | Path) -> None:
    """Speedup over dense: against density for each linear shape, per layer for each conv model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rbgp.files import save_figure

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in data["results"]:
        key = (
            f"linear {r['out_features']}x{r['in_features']} b{r['rows']}"
            if r["kind"] == "linear"
            else f"{r['model']} convs b{r['batch']}"
        )
        groups.setdefault(key, []).append(r)
    cols = min(4, len(groups))
    fig, axes = plt.subplots(
        math.ceil(len(groups) / cols), cols, figsize=(5 * cols, 4 * math.ceil(len(groups) / cols)), squeeze=False
    )
    for ax, (key, rows) in zip(axes.flat, groups.items()):
        linear = rows[0]["kind"] == "linear"
        xs = [r["density"] for r in rows] if linear else list(range(len(rows)))
        if linear:
            ax.plot(xs, [1 / d for d in xs], "k--", lw=1, label="ideal 1/density")
        for m in rows[0]["timings"]:
            for phase, style in (("fwd", "o-"), ("fwd_bwd", "s:")):
                ys = [r[f"speedup_{phase}"].get(m) for r in rows]
                pts = [(x, y) for x, y in zip(xs, ys) if y]
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{m} {phase}")
        if linear:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("density")
        else:
            ax.set_xticks(xs, [f"{r['in_features'] // 9}->{r['out_features']}\n{r['hw']}px" for r in rows], fontsize=6)
            ax.axhline(1.0, color="k", lw=0.5)
        ax.set_yscale("log", base=2)
        ax.set_ylabel("speedup over dense")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    fig.suptitle(f"{data['environment'].get('device_name', 'GPU')}, {data['dtype']}")
    save_figure(fig, path)
    plt.close(fig)


def device_stem(env: dict[str, Any]) -> str:
    """File stem gpu-<device name>, e.g. gpu-nvidia-h100-80gb-hbm3."""
    return "gpu-" + env.get("device_name", "cuda").replace(" ", "-").lower()


def run_gpu_bench(
    out_dir: str | Path = "benchmarks",
    dtype: str | torch.dtype = "bf16",
    quick: bool = False,
    command: str = "rbgp bench --device cuda",
    progress: bool = True,
    only: str | None = None,
    stem: str | None = None,
) -> dict[str, Any]:
    """Run the GPU benchmark, write <out_dir>/<stem>.json, .md and .png; return the data. The default
    stem is gpu-<device>[-<dtype unless bf16>][-<only>][-quick]; the JSON is rewritten after every case,
    so an interrupted run keeps what it measured.

    dtype: "fp32", "bf16", "fp16" or a torch dtype. Raises ValueError without CUDA or triton.
    """
    from rbgp.experiments.bench.kernels import environment
    from rbgp.files import write_json, write_text

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    name = next((k for k, v in DTYPES.items() if v == dtype), None)
    if name is None:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype}")
    if not torch.cuda.is_available():
        raise ValueError("run_gpu_bench needs a CUDA device; torch sees none")
    try:
        import triton
    except ImportError as e:
        raise ValueError("run_gpu_bench needs triton (pip install 'rbgp[triton]')") from e
    env = environment("cuda")
    env["triton"] = triton.__version__
    env["cuda"] = torch.version.cuda
    stem = stem or (
        device_stem(env)
        + ("" if name == "bf16" else f"-{name}")
        + (f"-{only}" if only else "")
        + ("-quick" if quick else "")
    )
    out = Path(out_dir)
    data: dict[str, Any] = {"command": command, "dtype": name, "tf32": False, "environment": env, "results": []}
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cases = gpu_cases(quick, only)
        for i, case in enumerate(cases):
            if progress:
                print(f"[{i + 1}/{len(cases)}] {case.label}", flush=True)
            try:
                data["results"].append(bench_case(case, dtype, "cuda", quick))
            except Exception as e:  # e.g. no RBGP plan or out of memory for this case
                data["results"].append(summarize(case, {m: {p: _unsupported(e) for p in PHASES} for m in METHODS}, {}))
            write_json(out / f"{stem}.json", data)
            torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    write_text(out / f"{stem}.md", gpu_markdown_table(data))
    plot_gpu(data, out / f"{stem}.png")
    return data
