"""`rbgp methods`: the sparse training methods side by side on Fashion-MNIST.

For each target sparsity, AutoSparse runs first (its thresholds start at the target's |W| quantile);
the sparsity it learns (global over the layers `sparsify` converts) is then the budget of every other
row of that seed, so all rows compare at the same total non-zeros: static random unstructured
(uniform), gradual magnitude pruning (per layer), RBGP4 uniform, RBGP4 ERK, and RBGP4 at AutoSparse's
learnt per-layer sparsities ("budgeted"). Every row reports its accuracy, its real global sparsity,
its per-layer sparsities, and its training and inference FLOPs against dense (`rbgp.train.flops`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rbgp.experiments.config import TrainConfig
from rbgp.experiments.demo import DemoSettings, _environment, _load, _log, _mean_std, _write_outputs
from rbgp.experiments.loop import TrainResult, build_run_model, train
from rbgp.nn import convertible_layers
from rbgp.train.flops import layer_nnz
from rbgp.train.methods.budgeted import budget_from_layers

__all__ = ["METHOD_ROWS", "MethodsSettings", "methods_markdown", "run_methods"]

METHOD_ROWS: tuple[str, ...] = (
    "dense",
    "unstructured",
    "magnitude",
    "autosparse",
    "rbgp4-uniform",
    "rbgp4-erk",
    "rbgp4-budgeted",
)
TARGETS: tuple[float, ...] = (0.8, 0.9, 0.95)


# Weight decay on AutoSparse's thresholds per target sparsity (the decay pulls T towards 0, raising
# the threshold). Tuned on seed 0 with this table's defaults (3 epochs, 20000 images, thresholds
# starting at the target's |W| quantile), where they gave 0.824, 0.892 and 0.947.
AUTOSPARSE_DECAY: dict[float, float] = {0.8: 0.008, 0.9: 0.02, 0.95: 0.07}


def autosparse_threshold_decay(target: float) -> float:
    """AUTOSPARSE_DECAY at `target`, interpolated (or extrapolated) linearly in log(decay) vs
    log(density) between the two nearest tuned targets."""
    points = sorted((math.log(1 - t), math.log(d)) for t, d in AUTOSPARSE_DECAY.items())
    x = math.log(1 - target)
    (x0, y0), (x1, y1) = (points[0], points[1]) if x <= points[1][0] else (points[-2], points[-1])
    return float(math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0)))


@dataclass
class MethodsSettings:
    """Knobs of the methods table; the defaults run in under 30 minutes on 2 CPU cores."""

    model: str = "cnn"
    targets: tuple[float, ...] = TARGETS
    seeds: int = 3
    epochs: int = 3
    limit_train: int | None = 20000
    limit_test: int | None = None
    data_dir: str | None = None
    rows: tuple[str, ...] = METHOD_ROWS

    def check(self) -> None:
        bad = [r for r in self.rows if r not in METHOD_ROWS]
        if bad:
            raise ValueError(f"unknown row(s) {bad}; valid: {', '.join(METHOD_ROWS)}")
        if not self.targets or not all(0 < t < 1 for t in self.targets):
            raise ValueError(f"targets must be sparsities in (0, 1), got {list(self.targets)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        needs_autosparse = {"unstructured", "magnitude", "rbgp4-uniform", "rbgp4-erk", "rbgp4-budgeted"}
        if needs_autosparse & set(self.rows) and "autosparse" not in self.rows:
            raise ValueError("the sparse rows are compared at AutoSparse's learnt sparsity: keep the 'autosparse' row")


def _configs(base: TrainConfig, row: str, target: float, learnt: dict[str, Any] | None) -> TrainConfig:
    """The run of `row` at `target` (at the sparsity AutoSparse learnt, once it has run)."""
    s = learnt["sparsity"] if learnt else target
    common = dict(base.to_dict(), distribution="uniform")
    if row == "autosparse":
        return TrainConfig(
            **{
                **common,
                "method": "autosparse",
                "method_kwargs": {"init_sparsity": target, "threshold_decay": autosparse_threshold_decay(target)},
            }
        )
    if row == "magnitude":
        return TrainConfig(**{**common, "method": "magnitude", "sparsity": s})
    if row == "unstructured":
        return TrainConfig(**{**common, "pattern": "unstructured", "sparsity": s})
    if row == "rbgp4-uniform":
        return TrainConfig(**{**common, "pattern": "rbgp4", "sparsity": s})
    if row == "rbgp4-erk":
        return TrainConfig(**{**common, "pattern": "rbgp4", "sparsity": s, "distribution": "erk"})
    if row == "rbgp4-budgeted":
        assert learnt is not None  # run_methods' settings.check keeps the autosparse row before this one
        budget = budget_from_layers(learnt["layer_sparsity"])
        return TrainConfig(
            **{
                **common,
                "pattern": "rbgp4",
                "method": "budgeted",
                "method_kwargs": {"budget": budget, "source": "autosparse"},
            }
        )
    raise ValueError(f"unknown row {row!r}")


def _measure(result: TrainResult, names: list[str]) -> dict[str, Any]:
    """Accuracy, global and per-layer sparsity over the convertible layers `names`, FLOPs vs dense."""
    modules = dict(result.model.named_modules())
    counts = {n: layer_nnz(modules[n]) for n in names}
    nnz, total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    f = result.final
    return {
        "test_acc": f["test_acc"],
        "sparsity": 1 - nnz / total,
        "layer_sparsity": {n: 1 - k / t for n, (k, t) in counts.items()},
        "infer_flops_ratio": f["infer_flops"] / f["infer_flops_dense"],
        "train_flops_ratio": f["train_flops"] / f["train_flops_dense"],
    }


def run_methods(
    settings: MethodsSettings, out_dir: str | Path = "runs/methods", quiet: bool = False, command: str | None = None
) -> dict[str, Any]:
    """Train every row at every target for every seed; write methods.json, .md and .png."""
    settings.check()
    t_start = time.perf_counter()
    demo = DemoSettings(
        model=settings.model,
        epochs=settings.epochs,
        limit_train=settings.limit_train,
        limit_test=settings.limit_test,
        data_dir=settings.data_dir,
    )
    data = _load(demo)
    runs: list[dict[str, Any]] = []
    for seed in range(settings.seeds):
        base = replace(demo.base_config(), seed=seed)
        model, _ = build_run_model(base, data[0].num_classes, data[0].input_shape)
        names = [n for n, _ in convertible_layers(model)]

        def one(
            row: str, target: float | None, cfg: TrainConfig, seed: int = seed, names: list[str] = names
        ) -> dict[str, Any]:
            t0 = time.perf_counter()
            result = train(cfg, None, quiet=True, data=data)
            entry = {
                "row": row,
                "target": target,
                "seed": seed,
                **_measure(result, names),
                "wall_s": time.perf_counter() - t0,
                "config": cfg.to_dict(),
            }
            _log(
                f"[rbgp methods] {row} target {target} seed {seed}: test acc {entry['test_acc']:.2f}% at "
                f"sparsity {entry['sparsity']:.3f} ({entry['wall_s']:.0f} s)",
                quiet,
            )
            runs.append(entry)
            return entry

        if "dense" in settings.rows:
            one("dense", None, base)
        for target in settings.targets:
            learnt = (
                one("autosparse", target, _configs(base, "autosparse", target, None))
                if "autosparse" in settings.rows
                else None
            )
            for row in settings.rows:
                if row not in ("dense", "autosparse"):
                    one(row, target, _configs(base, row, target, learnt))
    report = {
        "kind": "methods",
        "command": command,
        "settings": asdict(settings),
        "recipe": {
            k: v
            for k, v in demo.base_config().to_dict().items()
            if k in ("epochs", "batch_size", "lr", "momentum", "schedule", "weight_decay")
        },
        "environment": _environment(),
        "runs": runs,
        "summary": _summarise(runs, settings),
        "wall_s": time.perf_counter() - t_start,
    }
    _write_outputs(Path(out_dir), "methods", report, methods_markdown(report), _plot)
    if not quiet:
        print(methods_markdown(report))
    return report


def _summarise(runs: list[dict[str, Any]], settings: MethodsSettings) -> list[dict[str, Any]]:
    out = []
    for row in settings.rows:
        for target in [None] if row == "dense" else settings.targets:
            rs = [r for r in runs if r["row"] == row and r["target"] == target]
            if not rs:
                continue
            acc, acc_std = _mean_std([r["test_acc"] for r in rs])
            out.append(
                {
                    "row": row,
                    "target": target,
                    "acc_mean": acc,
                    "acc_std": acc_std,
                    "seeds": len(rs),
                    **{
                        k: _mean_std([r[k] for r in rs])[0]
                        for k in ("sparsity", "infer_flops_ratio", "train_flops_ratio")
                    },
                    "layer_sparsity": rs[0]["layer_sparsity"],
                }
            )
    return out


def methods_markdown(report: dict[str, Any]) -> str:
    s, summary = report["settings"], report["summary"]
    targets = s["targets"]
    rec = report["recipe"]
    lines = [
        f"Command: `{report['command'] or 'rbgp methods'}`",
        "",
        f"Fashion-MNIST, {s['model']}, {rec['epochs']} epochs of SGD (lr {rec['lr']}, {rec['schedule']}) "
        f"on {s['limit_train'] or 'all 60000'} training images, test on "
        f"{s['limit_test'] or 'all 10000'}; mean ± std over {s['seeds']} seed(s). Every sparse row of a "
        f"seed is trained at the global sparsity AutoSparse learnt for that target (over the layers "
        f"sparsify converts; first and last layers dense). Cells: test accuracy %, (global sparsity, "
        f"training FLOPs / dense, inference FLOPs / dense).",
        "",
        "| method | " + " | ".join(f"target {t:g}" for t in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for row in s["rows"]:
        cells = []
        for t in [None] * len(targets) if row == "dense" else targets:
            e = next((x for x in summary if x["row"] == row and x["target"] == t), None)
            cells.append(
                ""
                if e is None
                else f"{e['acc_mean']:.2f} ± {e['acc_std']:.2f} ({e['sparsity']:.3f}, "
                f"{e['train_flops_ratio']:.2f}x, {e['infer_flops_ratio']:.2f}x)"
            )
            if row == "dense":
                cells = cells[:1] + ["same"] * (len(targets) - 1)
                break
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    first: dict[str, Any] = next(iter(summary), {})
    layers = list(first.get("layer_sparsity", {}))
    if layers:
        lines += [
            "",
            "Per-layer sparsity (seed 0):",
            "",
            "| method | target | " + " | ".join(layers) + " |",
            "|---|---|" + "---|" * len(layers),
        ]
        for e in summary:
            if e["row"] != "dense":
                lines.append(
                    f"| {e['row']} | {e['target']:g} | "
                    + " | ".join(f"{e['layer_sparsity'][n]:.3f}" for n in layers)
                    + " |"
                )
    lines += ["", f"Total wall time: {report['wall_s']:.0f} s."]
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rbgp.files import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in report["settings"]["rows"]:
        pts = [e for e in report["summary"] if e["row"] == row]
        if row == "dense" and pts:
            ax.axhline(pts[0]["acc_mean"], color="gray", ls="--", label="dense")
        elif pts:
            ax.errorbar(
                [e["sparsity"] for e in pts],
                [e["acc_mean"] for e in pts],
                yerr=[e["acc_std"] for e in pts],
                marker="o",
                capsize=3,
                label=row,
            )
    ax.set_xlabel("global sparsity of the converted layers")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST {report['settings']['model']}: sparse training methods")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def parse_rows(names: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(names) if names else METHOD_ROWS
