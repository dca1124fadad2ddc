"""`rbgp demo`: dense vs RBGP4 vs the baselines on Fashion-MNIST, in minutes on a laptop CPU.

The same network (an MLP 784-1024-1024-1024-10 by default, its hidden-to-hidden layers sparse;
``model="cnn"`` for the small CNN) is trained dense and at one sparsity with each mask, with one
recipe and the same seeds, and reported as one table: test accuracy (mean and std over seeds),
stored parameters, non-zeros, structure bytes, and train / inference time per batch. Times are
taken through each layer's own forward (the fast grouped CPU path for RBGP layers, dense GEMMs
on a masked weight for the baselines). ``sweep`` instead traces accuracy against sparsity for
RBGP4 and unstructured masks.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from rbgp.experiments.config import TrainConfig
from rbgp.experiments.data import LoadedDataset, get_dataset
from rbgp.experiments.loop import TrainResult, sparse_layers, train
from rbgp.experiments.recipes import get_recipe
from rbgp.files import save_figure, write_json, write_text
from rbgp.nn.distribution import DEFAULT_DISTRIBUTION
from rbgp.nn.masked import rezero_masked_
from rbgp.patterns import SparseMask
from rbgp.precision import bf16_autocast

__all__ = [
    "CURVE_SPARSITIES",
    "DEMO_METHODS",
    "DemoMethod",
    "DemoSettings",
    "inference_ms_per_batch",
    "model_counts",
    "run_demo",
    "run_sweep",
    "time_models",
    "train_ms_per_batch",
]


@dataclass(frozen=True)
class DemoMethod:
    """A named mask recipe: pattern name and its parameters."""

    name: str
    pattern: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def demo_methods(model: str) -> list[DemoMethod]:
    """Dense, RBGP4 and the three baselines; HBsNN blocks sized to tile the model's layers."""
    hb = {"block": [32, 32], "sub_block": [4, 4]} if model == "mlp" else {"block": [16, 16], "sub_block": [4, 4]}
    return [
        DemoMethod("dense", "dense"),
        DemoMethod("rbgp4", "rbgp4"),
        DemoMethod("unstructured", "unstructured"),
        DemoMethod("block16x16", "block", {"block": [16, 16]}),
        DemoMethod(f"hbsnn{hb['block'][0]}/{hb['sub_block'][0]}", "hbsnn", hb),
    ]


DEMO_METHODS: tuple[str, ...] = ("dense", "rbgp4", "unstructured", "block", "hbsnn")
# The CNN's 32x144 conv matrix has no 0.9-sparse RBGP4 layout with 16-wide micro-blocks.
DEFAULT_SPARSITY = {"mlp": 0.9, "cnn": 0.875}
CURVE_SPARSITIES: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def model_counts(model: nn.Module) -> dict[str, int]:
    """Stored parameters, effective non-zeros (masked-out entries not counted), structure bytes."""
    params = sum(p.numel() for p in model.parameters())
    masked_out = 0
    structure = 0
    for m in sparse_layers(model):
        s = cast(SparseMask, m.structure)
        structure += int(s.structure_bytes)
        stored = cast(torch.Tensor, m.values if hasattr(m, "values") else m.weight).numel()
        masked_out += stored - int(s.nnz)
    return {"params": params, "nonzeros": params - masked_out, "structure_bytes": structure}


@torch.no_grad()
def inference_ms_per_batch(
    model: nn.Module, x: torch.Tensor, warmup: int = 3, reps: int = 20, precision: str = "fp32"
) -> float:
    """Median wall time (ms) of ``model(x)`` in eval mode, after ``warmup`` calls."""
    was_training = model.training
    model.eval()
    times = []
    try:
        with bf16_autocast(x.device, precision == "bf16"):
            for i in range(warmup + reps):
                t0 = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1e3 * statistics.median(times)


def train_ms_per_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    warmup: int = 1,
    reps: int = 5,
    lr: float = 1e-3,
    precision: str = "fp32",
) -> float:
    """Median wall time (ms) of one SGD step (forward, loss, backward, update) on ``(x, y)``.

    The model's weights change (by a tiny step); call it on a trained model or a copy.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    model.train()
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with bf16_autocast(x.device, precision == "bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        rezero_masked_(model)  # as the training loop does
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_models(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    rounds: int = 7,
    precision: str = "fp32",
) -> dict[str, dict[str, float]]:
    """Train-step and inference time per batch of every model, interleaved over ``rounds``.

    Each round times every model once, in a rotating order, and the median over rounds is
    reported, so a burst of load from other processes hits all methods alike.
    """
    names = list(models)
    samples: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer": []} for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name]["train"].append(train_ms_per_batch(models[name], x, y, precision=precision))
            samples[name]["infer"].append(inference_ms_per_batch(models[name], x, reps=10, precision=precision))
    return {
        n: {"train_ms_per_batch": statistics.median(s["train"]), "infer_ms_per_batch": statistics.median(s["infer"])}
        for n, s in samples.items()
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


@dataclass
class DemoSettings:
    """Knobs of a demo run; the defaults fit in a few minutes on 2 CPU cores."""

    model: str = "mlp"
    sparsity: float | None = None  # 0.9 for the MLP, 0.875 for the CNN (RBGP4 can't do 0.9 there)
    epochs: int | None = None
    seeds: int = 1
    batch_size: int | None = None
    lr: float | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    hidden: list[int] | None = None
    data_dir: str | None = None
    methods: list[str] | None = None
    precision: str = "fp32"
    timing_rounds: int = 7
    distribution: str = DEFAULT_DISTRIBUTION

    def check(
        self, sweep: Sequence[float] | None = None, patterns: Sequence[str] = (), distributions: Sequence[str] = ()
    ) -> TrainConfig:
        """Every setting checked before minutes of training (a table, or a sweep over `sweep` with
        `patterns` and `distributions`); the base config. ValueError naming the first bad value."""
        base = self.base_config()
        _select_methods(self.model, self.methods)
        if sweep is not None:
            if not sweep or any(not 0 < s < 1 for s in sweep):
                raise ValueError(f"sweep sparsities must be in (0, 1), got {list(sweep)}")
            bad = [p for p in patterns if p not in DEMO_METHODS or p == "dense"]
            if bad or not patterns:
                raise ValueError(f"sweep patterns {bad or '(none)'}: valid are {', '.join(DEMO_METHODS[1:])}")
        for d in distributions:
            TrainConfig.from_dict({**base.to_dict(), "distribution": d})
        return base

    def base_config(self) -> TrainConfig:
        recipe = get_recipe("demo").with_overrides(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if self.model not in ("mlp", "cnn"):
            raise ValueError(f"the demo runs model 'mlp' or 'cnn', got {self.model!r}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.timing_rounds < 1:
            raise ValueError(f"timing_rounds must be >= 1, got {self.timing_rounds}")
        model_kwargs: dict[str, Any] = {}
        if self.hidden:
            model_kwargs = {"hidden" if self.model == "mlp" else "channels": list(self.hidden)}
        return TrainConfig(
            model=self.model,
            dataset="fashion_mnist",
            data_dir=self.data_dir,
            pattern="dense",
            sparsity=self.sparsity if self.sparsity is not None else DEFAULT_SPARSITY[self.model],
            model_kwargs=model_kwargs,
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
            schedule=recipe.schedule,
            milestones=list(recipe.milestones),
            gamma=recipe.gamma,
            precision=self.precision,
            augment=False,
            limit_train=self.limit_train,
            limit_test=self.limit_test,
            distribution=self.distribution,
        )


def _select_methods(model: str, names: Sequence[str] | None) -> list[DemoMethod]:
    methods = demo_methods(model)
    if not names:
        return methods
    unknown = [n for n in names if n not in DEMO_METHODS]
    if unknown:
        raise ValueError(f"unknown demo method(s) {unknown}; valid: {', '.join(DEMO_METHODS)}")
    return [m for m in methods if m.pattern in names]


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _train_one(
    cfg: TrainConfig, data: tuple[LoadedDataset, LoadedDataset], quiet: bool, label: str
) -> tuple[TrainResult, float]:
    t0 = time.perf_counter()
    result = train(cfg, None, quiet=True, data=data)
    wall = time.perf_counter() - t0
    _log(
        f"[rbgp demo] {label}: test acc {result.final['test_acc']:.2f}% "
        f"({wall:.0f} s, {result.final['train_ms_per_batch_median']:.1f} ms/batch)",
        quiet,
    )
    return result, wall


def _load(settings: DemoSettings) -> tuple[LoadedDataset, LoadedDataset]:
    return (
        get_dataset("fashion_mnist", settings.data_dir, "train"),
        get_dataset("fashion_mnist", settings.data_dir, "test"),
    )


def _environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "threads": torch.get_num_threads(),
    }


def run_demo(
    settings: DemoSettings, out_dir: str | Path = "runs/demo", quiet: bool = False, command: str | None = None
) -> dict[str, Any]:
    """Train every method for every seed; write demo.json, demo.md and demo.png to ``out_dir``."""
    t_start = time.perf_counter()
    base = settings.check()
    methods = _select_methods(settings.model, settings.methods)
    data = _load(settings)
    per_method: dict[str, dict[str, Any]] = {}
    timed: dict[str, nn.Module] = {}
    for seed in range(settings.seeds):
        for method in methods:
            cfg = TrainConfig.from_dict(
                {**base.to_dict(), "pattern": method.pattern, "pattern_kwargs": method.kwargs, "seed": seed}
            )
            result, wall = _train_one(cfg, data, quiet, f"{method.name} seed {seed}")
            entry = per_method.setdefault(
                method.name, {"pattern": method.pattern, "pattern_kwargs": method.kwargs, "runs": []}
            )
            entry["runs"].append(
                {
                    "seed": seed,
                    "test_acc": result.final["test_acc"],
                    "test_loss": result.final["test_loss"],
                    "train_loss": result.final["train_loss"],
                    "loop_train_ms_per_batch": statistics.median(
                        h["train_ms_per_batch_median"] for h in result.history
                    ),
                    "wall_s": wall,
                    **model_counts(result.model),
                }
            )
            if seed == 0:
                timed[method.name] = result.model
    _log("[rbgp demo] timing train steps and inference, methods interleaved", quiet)
    n = base.batch_size
    timings = time_models(
        timed, data[1].x[:n], data[1].y[:n], precision=settings.precision, rounds=settings.timing_rounds
    )
    for name, entry in per_method.items():
        entry.update(timings[name])
    rows = [_summarise(name, e) for name, e in per_method.items()]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    for r in rows:
        r["acc_vs_dense"] = r["acc_mean"] - dense["acc_mean"] if dense else None
        r["train_speedup_vs_dense"] = dense["train_ms_per_batch"] / r["train_ms_per_batch"] if dense else None
        r["infer_speedup_vs_dense"] = dense["infer_ms_per_batch"] / r["infer_ms_per_batch"] if dense else None
    report = {
        "kind": "rbgp-demo",
        "command": command,
        "settings": {
            **base.to_dict(),
            "pattern": None,
            "seeds": settings.seeds,
            "methods": [m.name for m in methods],
            "timing_rounds": settings.timing_rounds,
        },
        "environment": _environment(),
        "rows": rows,
        "runs": per_method,
        "wall_s": time.perf_counter() - t_start,
    }
    _write_outputs(Path(out_dir), "demo", report, demo_markdown(report), _plot_demo)
    if not quiet:
        print(demo_markdown(report))
    return report


def _summarise(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    runs = entry["runs"]
    acc_mean, acc_std = _mean_std([r["test_acc"] for r in runs])
    return {
        "method": name,
        "pattern": entry["pattern"],
        "seeds": len(runs),
        "acc_mean": acc_mean,
        "acc_std": acc_std,
        "params": runs[0]["params"],
        "nonzeros": runs[0]["nonzeros"],
        "structure_bytes": runs[0]["structure_bytes"],
        "train_ms_per_batch": entry["train_ms_per_batch"],
        "infer_ms_per_batch": entry["infer_ms_per_batch"],
        "loop_train_ms_per_batch": statistics.median(r["loop_train_ms_per_batch"] for r in runs),
        "wall_s_per_run": statistics.fmean(r["wall_s"] for r in runs),
    }


def demo_markdown(report: dict[str, Any]) -> str:
    """The demo table as markdown, with the settings it was made with."""
    s = report["settings"]
    width = s["model_kwargs"].get("hidden") or s["model_kwargs"].get("channels")
    model = s["model"] + (f" {width}" if width else "")
    lines = [f"Command: `{report['command']}`", ""] if report.get("command") else []
    lines += [
        f"Fashion-MNIST, {model}, sparse layers at {s['sparsity']:g} global sparsity, distribution "
        f"{s.get('distribution', 'uniform')} (first/last dense), {s['epochs']} epochs, batch {s['batch_size']}, "
        f"SGD lr {s['lr']:g} "
        f"({s['schedule']}), {s['seeds']} seed(s), {s['precision']}, "
        f"{report['environment']['threads']} CPU threads, torch {report['environment']['torch']}.",
        "",
        "| method | test acc % (mean ± std) | vs dense | params | non-zeros | structure B "
        "| train ms/batch | infer ms/batch | train speed-up | infer speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        delta = "" if r["acc_vs_dense"] is None else f"{r['acc_vs_dense']:+.2f}"
        tsu = "" if r["train_speedup_vs_dense"] is None else f"{r['train_speedup_vs_dense']:.2f}x"
        isu = "" if r["infer_speedup_vs_dense"] is None else f"{r['infer_speedup_vs_dense']:.2f}x"
        lines.append(
            f"| {r['method']} | {r['acc_mean']:.2f} ± {r['acc_std']:.2f} | {delta} | "
            f"{r['params']:,} | {r['nonzeros']:,} | {r['structure_bytes']:,} | "
            f"{r['train_ms_per_batch']:.2f} | {r['infer_ms_per_batch']:.2f} | {tsu} | {isu} |"
        )
    lines += [
        "",
        f"Times per batch of {s['batch_size']} ({s['precision']}), measured after training on the "
        f"seed-0 models through each layer's own forward (RBGP: grouped gather + batched GEMM; "
        f"baselines: dense GEMM on the masked weight): median over {s['timing_rounds']} "
        f"interleaved rounds of 5 SGD steps (train) and 10 eval forwards (infer). Non-zeros "
        f"count every parameter in effect "
        f"(biases and dense layers included); structure B: bytes of sparsity metadata (RBGP: "
        f"factor-graph index lists; unstructured: CSR indices; block/HBsNN: block indices).",
        "",
        f"Total wall time: {report['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def _plot_demo(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["method"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        ax1.errorbar(r["train_ms_per_batch"], r["acc_mean"], yerr=r["acc_std"], fmt="o", capsize=3, label=r["method"])
        ax1.annotate(
            r["method"], (r["train_ms_per_batch"], r["acc_mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    ax1.set_xlabel("train time per batch (ms)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("accuracy vs training cost (up-left is better)")
    ax1.grid(alpha=0.3)
    pos = range(len(rows))
    w = 0.4
    ax2.bar([p - w / 2 for p in pos], [r["train_ms_per_batch"] for r in rows], w, label="train")
    ax2.bar([p + w / 2 for p in pos], [r["infer_ms_per_batch"] for r in rows], w, label="inference")
    ax2.set_xticks(list(pos), names, rotation=20)
    ax2.set_ylabel("ms per batch")
    ax2.set_title(f"time per batch of {report['settings']['batch_size']}")
    ax2.legend()
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Fashion-MNIST {report['settings']['model']}, {report['settings']['sparsity']:g} sparsity")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _write_outputs(out: Path, stem: str, report: dict[str, Any], markdown: str, plot) -> None:
    write_json(out / f"{stem}.json", report)
    write_text(out / f"{stem}.md", markdown + "\n")
    plot(report, out / f"{stem}.png")


# ----------------------------------------------------------------------------------------------
# Accuracy vs sparsity
# ----------------------------------------------------------------------------------------------


def run_sweep(
    settings: DemoSettings,
    sparsities: Sequence[float],
    out_dir: str | Path = "runs/demo",
    quiet: bool = False,
    patterns: Sequence[str] = ("rbgp4", "unstructured"),
    distributions: Sequence[str] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Accuracy vs global sparsity for every pattern and distribution (plus dense); writes
    curve.json/.md/.png. `distributions` defaults to the settings' one."""
    distributions = list(distributions or [settings.distribution])
    base = settings.check(sparsities, patterns, distributions)  # before hours of training
    t_start = time.perf_counter()
    kwargs = {m.pattern: m.kwargs for m in demo_methods(settings.model)}
    data = _load(settings)
    dense_accs = []
    for seed in range(settings.seeds):
        cfg = TrainConfig.from_dict({**base.to_dict(), "seed": seed})
        dense_accs.append(_train_one(cfg, data, quiet, f"dense seed {seed}")[0].final["test_acc"])
    points = []
    for pattern in patterns:
        for dist in distributions:
            for sp in sparsities:
                accs, ms, got = [], [], []
                for seed in range(settings.seeds):
                    cfg = TrainConfig.from_dict(
                        {
                            **base.to_dict(),
                            "pattern": pattern,
                            "sparsity": sp,
                            "seed": seed,
                            "pattern_kwargs": kwargs[pattern],
                            "distribution": dist,
                        }
                    )
                    res, _ = _train_one(cfg, data, quiet, f"{pattern} {dist} {sp:g} seed {seed}")
                    assert res.report is not None  # sweep patterns are never "dense" (settings.check)
                    accs.append(res.final["test_acc"])
                    ms.append(statistics.median(h["train_ms_per_batch_median"] for h in res.history))
                    got.append(res.report.global_sparsity)
                    layers = res.report.layers
                mean, std = _mean_std(accs)
                points.append(
                    {
                        "pattern": pattern,
                        "distribution": dist,
                        "sparsity": sp,
                        "acc_mean": mean,
                        "acc_std": std,
                        "accs": accs,
                        # None only where sparsify converted no layer (then fmean fails, as before)
                        "global_sparsity": statistics.fmean(cast("list[float]", got)),
                        "layer_sparsity": {r.name: r.sparsity for r in layers},
                        "loop_train_ms_per_batch": statistics.median(ms),
                    }
                )
    dmean, dstd = _mean_std(dense_accs)
    report = {
        "kind": "rbgp-demo-sweep",
        "command": command,
        "settings": {
            **base.to_dict(),
            "pattern": None,
            "sparsity": None,
            "distribution": None,
            "seeds": settings.seeds,
            "sparsities": list(sparsities),
            "patterns": list(patterns),
            "distributions": distributions,
        },
        "environment": _environment(),
        "dense": {"acc_mean": dmean, "acc_std": dstd, "accs": dense_accs},
        "points": points,
        "wall_s": time.perf_counter() - t_start,
    }
    _write_outputs(Path(out_dir), "curve", report, sweep_markdown(report), _plot_sweep)
    if not quiet:
        print(sweep_markdown(report))
    return report


def _curves(report: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, points by sparsity) per pattern and distribution of a sweep (older files: uniform)."""
    s = report["settings"]
    dists = s.get("distributions") or ["uniform"]
    out = []
    for pattern in s["patterns"]:
        for dist in dists:
            pts = [p for p in report["points"] if p["pattern"] == pattern and p.get("distribution", "uniform") == dist]
            out.append((pattern if len(dists) == 1 else f"{pattern} {dist}", pts))
    return out


def sweep_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    sps = s["sparsities"]
    dists = s.get("distributions") or ["uniform"]
    lines = [f"Command: `{report['command']}`", ""] if report.get("command") else []
    lines += [
        f"Fashion-MNIST, {s['model']}, test accuracy % (mean ± std over {s['seeds']} seed(s)) vs the global "
        f"sparsity of the sparse layers, spread by distribution {', '.join(dists)}; {s['epochs']} epochs, "
        f"batch {s['batch_size']}, lr {s['lr']:g}. Dense: {report['dense']['acc_mean']:.2f} ± "
        f"{report['dense']['acc_std']:.2f}. In brackets: the global sparsity the layers really have.",
        "",
        "| pattern | " + " | ".join(f"{sp:g}" for sp in sps) + " |",
        "|---|" + "---|" * len(sps),
    ]
    for label, pts in _curves(report):
        cells = []
        for sp in sps:
            p = next(p for p in pts if p["sparsity"] == sp)
            got = f" ({p['global_sparsity']:.3f})" if "global_sparsity" in p else ""
            cells.append(f"{p['acc_mean']:.2f} ± {p['acc_std']:.2f}{got}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Total wall time: {report['wall_s']:.0f} s."]
    return "\n".join(lines)


def _plot_sweep(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, pts in _curves(report):
        ax.errorbar(
            [p["sparsity"] for p in pts],
            [p["acc_mean"] for p in pts],
            yerr=[p["acc_std"] for p in pts],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.axhline(report["dense"]["acc_mean"], color="gray", ls="--", label="dense")
    ax.set_xlabel("global sparsity of the sparse layers")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST {report['settings']['model']}: accuracy vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
