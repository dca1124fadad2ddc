"""Whole-model benchmarks: CIFAR CNNs dense against the same model after `rbgp.sparsify`.

For each model (VGG19-bn, ResNet-18, WRN-40-4, shaped for 32x32 inputs) and synthetic data, times
inference (eval mode, no grad) and one full training step (forward, cross-entropy, backward, SGD
Nesterov step) of the dense model and of its sparsified copy, in the same run: on the CPU the two
alternate within every repeat, so that the machine's slow spells hit both alike.
Mixed precision through `torch.autocast` (bf16 by default on CUDA: fp32 master weights, bf16 GEMM
inputs), optionally also under `torch.compile` (inductor); a variant that fails is recorded as
"unsupported: <reason>" rather than stopping the run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from rbgp.nn.distribution import DEFAULT_DISTRIBUTION

MODELS = ("vgg19", "resnet18", "wrn40_4")
PHASES = ("infer", "train")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def _unsupported(e: BaseException) -> str:
    return f"unsupported: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _timer(device: str, quick: bool) -> Callable[[dict[str, Callable[[], Any]]], dict[str, dict[str, float]]]:
    """Medians in ms of each of a dict of functions: do_bench (CUDA events) one after the other on a
    GPU; on the CPU wall clock, the functions run in turn within every repeat (`time_interleaved`)."""
    if device.startswith("cuda"):
        from triton.testing import do_bench

        def one(fn):
            med, q20, q80 = do_bench(
                fn, warmup=50 if quick else 200, rep=200 if quick else 1000, quantiles=[0.5, 0.2, 0.8]
            )
            return {"median_ms": float(med), "q20_ms": float(q20), "q80_ms": float(q80)}

        return lambda fns: {name: one(fn) for name, fn in fns.items()}
    from rbgp.experiments.bench.timing import time_interleaved

    return lambda fns: time_interleaved(fns, repeats=3 if quick else 10, warmup=1)


def model_pair(
    name: str, sparsity: float, device: str, seed: int = 0, distribution: str = DEFAULT_DISTRIBUTION
) -> tuple[nn.Module, nn.Module, Any]:
    """(dense model, sparsified copy, sparsify report), both models on `device`; layers whose shape
    cannot meet the sparsity exactly take the nearest feasible one (the report says which)."""
    from rbgp.experiments.models import build_model
    from rbgp.nn import sparsify

    torch.manual_seed(seed)
    dense = build_model(name, num_classes=10, in_channels=3)
    sparse = copy.deepcopy(dense)
    report = sparsify(sparse, sparsity, seed=seed, init="kaiming", distribution=distribution)
    return dense.to(device), sparse.to(device), report


def layer_breakdown(
    dense: nn.Module,
    sparse: nn.Module,
    report: Any,
    x: torch.Tensor,
    bench: Callable[[dict[str, Callable[[], Any]]], dict[str, dict[str, float]]],
) -> list[dict[str, Any]]:
    """Every converted layer timed alone on its input shape in the model (captured with forward hooks):
    the dense layer against its sparse replacement, forward and forward+backward (input and weight
    gradients)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:  # returns None: the output is left as it is
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    hooks = [sparse.get_submodule(r.name).register_forward_hook(record(r.name)) for r in report.layers]
    with torch.no_grad():
        sparse.eval()(x)
    for h in hooks:
        h.remove()
    rows = []
    for r in report.layers:
        xi = torch.randn(shapes[r.name], device=x.device, requires_grad=True)
        row = {
            "name": r.name,
            "weight_shape": r.weight_shape,
            "sparsity": r.sparsity,
            "rows_per_group": r.rows_per_group,
            "input_shape": list(shapes[r.name]),
        }
        fns: dict[str, dict[str, Callable[[], Any]]] = {"fwd_ms": {}, "fwd_bwd_ms": {}}
        for variant, layer in (("dense", dense.get_submodule(r.name)), ("rbgp", sparse.get_submodule(r.name))):
            weight = layer.values if hasattr(layer, "values") else layer.weight
            with torch.no_grad():
                dy = torch.randn_like(layer(xi))

            def fwd(layer=layer, xi=xi):
                with torch.no_grad():
                    return layer(xi)

            def fwd_bwd(layer=layer, weight=weight, dy=dy, xi=xi):
                return torch.autograd.grad(layer(xi), (xi, weight), dy)

            fns["fwd_ms"][variant], fns["fwd_bwd_ms"][variant] = fwd, fwd_bwd
        times = {phase: bench(f) for phase, f in fns.items()}
        for variant in ("dense", "rbgp"):
            row[variant] = {phase: times[phase][variant]["median_ms"] for phase in fns}
        for phase in ("fwd_ms", "fwd_bwd_ms"):
            row[f"speedup_{phase[:-3]}"] = row["dense"][phase] / row["rbgp"][phase]
        rows.append(row)
    return rows


def step_functions(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None
) -> dict[str, Callable[[], Any]]:
    """{"infer": eval-mode forward without grad, "train": one SGD step}, under autocast(dtype)."""
    device = x.device.type
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def infer():
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            return model(x)

    def train():
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return {"infer": infer, "train": train}


def bench_model(
    name: str,
    batch: int,
    dtype: str,
    device: str,
    sparsity: float,
    compiled: bool,
    quick: bool = False,
    distribution: str = DEFAULT_DISTRIBUTION,
    per_layer: bool = False,
) -> dict[str, Any]:
    """One result row: per variant (dense, rbgp) and phase, the timing or the reason it failed; with
    `per_layer`, every converted layer timed alone too."""
    dense, sparse, report = model_pair(name, sparsity, device, distribution=distribution)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen, device=device)
    y = torch.randint(0, 10, (batch,), generator=gen, device=device)
    bench = _timer(device, quick)
    models = {"dense": dense, "rbgp": sparse}
    # torch.compile returns an OptimizedModule (an nn.Module) for a module; its stubs say a Callable
    runs = {v: cast(nn.Module, torch.compile(m)) if compiled else m for v, m in models.items()}
    fns = {v: step_functions(run, x, y, AUTOCAST[dtype]) for v, run in runs.items()}
    timings: dict[str, dict[str, Any]] = {v: {} for v in models}
    for phase in PHASES:
        working = {}
        for variant, model in models.items():
            model.train(phase == "train")
            try:
                fns[variant][phase]()  # a first run (and compilation): one variant failing must not stop the run
                working[variant] = fns[variant][phase]
            except Exception as e:
                timings[variant][phase] = _unsupported(e)
        for variant, t in bench(working).items():
            timings[variant][phase] = t
    del runs, fns
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    row: dict[str, Any] = {
        "model": name,
        "batch": batch,
        "compiled": compiled,
        "timings": timings,
        "distribution": distribution,
        "converted_layers": len(report.layers),
        "global_sparsity": report.global_sparsity,
        "params_dense": report.params_before,
        "params_rbgp": report.params_after,
        "layers": [
            {"name": r.name, "weight_shape": r.weight_shape, "sparsity": r.sparsity, "rows_per_group": r.rows_per_group}
            for r in report.layers
        ],
        "kept_dense": [n for n, why in report.skipped if "distribution" in why],
    }
    if per_layer and not compiled:
        row["per_layer"] = layer_breakdown(dense, sparse, report, x, bench)
    for phase in PHASES:
        d, s = timings["dense"][phase], timings["rbgp"][phase]
        row[f"speedup_{phase}"] = (
            d["median_ms"] / s["median_ms"] if isinstance(d, dict) and isinstance(s, dict) else None
        )
    return row


def markdown_table(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [
        f"Command: `{data['command']}`  ",
        f"Device: {env.get('device_name', env['device'])}, torch {env['torch']}, "
        f"triton {env.get('triton', '-')}, autocast {data['dtype']}, allocator {env.get('allocator', 'default')}, "
        f"global sparsity {data['sparsity']} over the converted layers (RBGP4; first and last layers dense), "
        f"date {env['date']}; medians{' of dense and RBGP timed alternately' if env.get('interleaved') else ''}",
        "",
        "| model | distribution | batch | global sparsity | compiled | phase | dense ms | RBGP ms | RBGP vs dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    reasons, breakdowns = [], []
    for r in data["results"]:
        for phase in PHASES:
            cells = []
            for v in ("dense", "rbgp"):
                t = r["timings"][v][phase]
                cells.append(f"{t['median_ms']:.2f}" if isinstance(t, dict) else "n/a")
                if not isinstance(t, dict):
                    reasons.append(f"- {r['model']} {v} {phase} compiled={r['compiled']}: {t}")
            sp = r[f"speedup_{phase}"]
            sparsity = f"{r['global_sparsity']:.3f}" if "global_sparsity" in r else "-"
            lines.append(
                f"| {r['model']} | {r.get('distribution', 'uniform')} | {r['batch']} | {sparsity} | "
                f"{'yes' if r['compiled'] else 'no'} | {phase} | "
                + " | ".join(cells)
                + f" | {f'{sp:.2f}x' if sp else 'n/a'} |"
            )
        if r.get("per_layer"):
            breakdowns += [
                "",
                f"Per layer, {r['model']}, distribution {r['distribution']}, batch {r['batch']} "
                f"(each layer alone on its input shape; dense ms / RBGP ms):",
                "",
                "| layer | weight | input | sparsity | rows/group | fwd | fwd speedup | fwd+bwd | fwd+bwd speedup |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            breakdowns += [
                f"| {p['name']} | {'x'.join(map(str, p['weight_shape']))} | "
                f"{'x'.join(map(str, p['input_shape']))} | {p['sparsity']:.3f} | {p['rows_per_group']} | "
                f"{p['dense']['fwd_ms']:.2f} / {p['rbgp']['fwd_ms']:.2f} | {p['speedup_fwd']:.2f}x | "
                f"{p['dense']['fwd_bwd_ms']:.2f} / {p['rbgp']['fwd_bwd_ms']:.2f} | "
                f"{p['speedup_fwd_bwd']:.2f}x |"
                for p in r["per_layer"]
            ]
            if r.get("kept_dense"):
                breakdowns.append(f"\nKept dense by the distribution: {', '.join(r['kept_dense'])}")
    if reasons:
        lines += ["", "Not measured:", ""] + reasons
    return "\n".join(lines + breakdowns) + "\n"


def plot_models(data: dict[str, Any], path: str | Path) -> None:
    """Bars: RBGP speedup over dense per model, phase and compile mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rbgp.files import save_figure

    rows = data["results"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    width = 0.8 / len(PHASES)
    for i, phase in enumerate(PHASES):
        ax.bar(
            [j + i * width for j in range(len(rows))], [r[f"speedup_{phase}"] or 0 for r in rows], width, label=phase
        )
    ax.set_xticks(
        [j + width * (len(PHASES) - 1) / 2 for j in range(len(rows))],
        [f"{r['model']}\n{r.get('distribution', 'uniform')}, {'compiled' if r['compiled'] else 'eager'}" for r in rows],
        fontsize=8,
    )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("RBGP speedup over dense")
    ax.set_title(
        f"{data['environment'].get('device_name', data['environment']['device'])}, "
        f"{data['dtype']}, sparsity {data['sparsity']}",
        fontsize=9,
    )
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def run_model_bench(
    out_dir: str | Path = "benchmarks",
    device: str = "cuda",
    dtype: str = "bf16",
    models: tuple[str, ...] = MODELS,
    batch: int = 128,
    sparsity: float = 0.9,
    compile_modes: tuple[bool, ...] = (False,),
    quick: bool = False,
    stem: str | None = None,
    command: str = "rbgp bench --suite models",
    distributions: tuple[str, ...] = ("uniform",),
    per_layer: bool = False,
) -> dict[str, Any]:
    """Benchmark every model in every compile mode; write <stem>.json, .md, .png (the JSON after each
    model, so an interrupted run keeps what it measured)."""
    from rbgp.experiments.bench.kernels import environment
    from rbgp.files import write_json, write_text

    if dtype not in AUTOCAST:
        raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {dtype!r}")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; valid: {', '.join(MODELS)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    env = environment(device)
    env["interleaved"] = not device.startswith("cuda")
    if device.startswith("cuda"):
        import triton

        env["triton"], env["cuda"] = triton.__version__, torch.version.cuda
    stem = stem or ("models-" + env.get("device_name", device).replace(" ", "-").lower())
    out = Path(out_dir)
    data: dict[str, Any] = {"command": command, "dtype": dtype, "sparsity": sparsity, "environment": env, "results": []}
    for compiled, name, dist in ((c, n, d) for c in compile_modes for n in models for d in distributions):
        print(f"[models] {name} {dist} batch {batch} {'compiled' if compiled else 'eager'}", flush=True)
        try:
            data["results"].append(bench_model(name, batch, dtype, device, sparsity, compiled, quick, dist, per_layer))
        except Exception as e:  # e.g. out of memory: record and go on
            reason = _unsupported(e)
            data["results"].append(
                {
                    "model": name,
                    "batch": batch,
                    "compiled": compiled,
                    "distribution": dist,
                    "timings": {v: {p: reason for p in PHASES} for v in ("dense", "rbgp")},
                    **{f"speedup_{p}": None for p in PHASES},
                }
            )
        write_json(out / f"{stem}.json", data)
        if device.startswith("cuda"):
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    write_text(out / f"{stem}.md", markdown_table(data))
    plot_models(data, out / f"{stem}.png")
    return data
