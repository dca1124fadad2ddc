"""`rbgp reproduce`: the paper's CIFAR accuracy experiment (VGG19-bn / WRN-40-4).

Trains the model dense, then with unstructured, block (16x16) and RBGP4 masks at each sparsity,
all with the paper's recipe (``rbgp.experiments.recipes``), and writes the accuracy table as JSON and
markdown. Each run lives in its own folder with checkpoints, so an interrupted reproduction picks
up where it stopped (finished runs are skipped, the current one resumes). ``smoke`` runs the
whole path for a couple of steps on synthetic CIFAR-shaped data, for CI.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbgp.experiments.checkpoint import CHECKPOINT_NAME
from rbgp.experiments.config import TrainConfig
from rbgp.experiments.loop import train
from rbgp.experiments.recipes import get_recipe
from rbgp.files import write_json, write_text

__all__ = ["PAPER_SPARSITIES", "REPRODUCE_PATTERNS", "ReproduceSettings", "run_reproduce"]

PAPER_SPARSITIES: tuple[float, ...] = (0.5, 0.75, 0.875, 0.9375)
REPRODUCE_PATTERNS: tuple[str, ...] = ("unstructured", "block", "rbgp4")
REPRODUCE_MODELS: tuple[str, ...] = ("vgg19", "wrn40_4")
# WRN-40-4's first shortcut is a 64x16 1x1 conv: too small for 1/16 density with 16-wide RBGP4
# micro-blocks, so it stays dense for every method (1,024 weights) to keep the comparison fair.
_EXCLUDE = {"vgg19": [], "wrn40_4": ["blocks.0.shortcut"]}
_PATTERN_KWARGS = {"block": {"block": [16, 16]}}
RESULT_NAME = "result.json"


@dataclass
class ReproduceSettings:
    """What to run; ``None`` fields take the paper's recipe (or the smoke settings)."""

    model: str = "vgg19"
    dataset: str = "cifar10"
    data_dir: str | None = None
    sparsities: Sequence[float] = PAPER_SPARSITIES
    patterns: Sequence[str] = REPRODUCE_PATTERNS
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    max_steps: int | None = None
    seed: int = 0
    precision: str = "fp32"
    smoke: bool = False
    keep_checkpoints: bool = False

    def configs(self) -> list[tuple[str, TrainConfig]]:
        """(run name, config) for dense and every pattern x sparsity."""
        if self.model not in REPRODUCE_MODELS:
            raise ValueError(f"reproduce runs {', '.join(REPRODUCE_MODELS)}, not {self.model!r}")
        bad = [p for p in self.patterns if p not in REPRODUCE_PATTERNS]
        if bad:
            raise ValueError(f"unknown pattern(s) {bad}; valid: {', '.join(REPRODUCE_PATTERNS)}")
        if not self.sparsities or any(not 0 < s < 1 for s in self.sparsities):
            raise ValueError(f"sparsities must be in (0, 1), got {list(self.sparsities)}")
        recipe = get_recipe("paper", self.model)
        extra: dict[str, Any] = {}
        if self.smoke:
            recipe = recipe.with_overrides(epochs=1, batch_size=8)
            extra = {
                "dataset": "synthetic_cifar10",
                "data_dir": None,
                "max_steps": 2,
                "limit_train": 32,
                "limit_test": 32,
                "eval_batch_size": 32,
            }
        recipe = recipe.with_overrides(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        base = {
            "model": self.model,
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "exclude": _EXCLUDE[self.model],
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "lr": recipe.lr,
            "momentum": recipe.momentum,
            "nesterov": recipe.nesterov,
            "weight_decay": recipe.weight_decay,
            "schedule": recipe.schedule,
            "milestones": list(recipe.milestones),
            "gamma": recipe.gamma,
            "seed": self.seed,
            "precision": self.precision,
            "max_steps": self.max_steps,
            "distribution": "uniform",
            **extra,  # the paper: every layer at one sparsity
        }
        if self.max_steps is not None:  # an explicit cap wins over the smoke default
            base["max_steps"] = self.max_steps
        runs = [("dense", TrainConfig(**base, pattern="dense"))]
        for pattern in self.patterns:
            for sp in self.sparsities:
                runs.append(
                    (
                        f"{pattern}_{sp:g}",
                        TrainConfig(
                            **base, pattern=pattern, sparsity=float(sp), pattern_kwargs=_PATTERN_KWARGS.get(pattern, {})
                        ),
                    )
                )
        return runs


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _finished(run_dir: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The stored result of a completed run with the same settings, if there is one."""
    path = run_dir / RESULT_NAME
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored if stored.get("config") == cfg.to_dict() else None


def run_reproduce(settings: ReproduceSettings, out_dir: str | Path, quiet: bool = False) -> dict[str, Any]:
    """Run (or pick up) every run and write reproduce.json / reproduce.md under ``out_dir``."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes
    results: list[dict[str, Any]] = []
    for name, cfg in settings.configs():
        run_dir = out / name
        done = None if settings.smoke else _finished(run_dir, cfg)
        if done is None:
            _log(f"[rbgp reproduce] {name}: training ({cfg.epochs} epochs)", quiet)
            t0 = time.perf_counter()
            res = train(cfg, None if settings.smoke else run_dir, resume=not settings.smoke, quiet=quiet)
            h = res.history
            done = {
                "run": name,
                "pattern": cfg.pattern,
                "sparsity": None if cfg.pattern == "dense" else cfg.sparsity,
                "final_acc": h[-1]["test_acc"],
                "best_acc": max(r["test_acc"] for r in h),
                "epochs": len(h),
                "params": sum(p.numel() for p in res.model.parameters()),
                "sparse_params": res.report.params_after if res.report else None,
                "wall_s": time.perf_counter() - t0,
                "config": cfg.to_dict(),
            }
            if is_main and not settings.smoke:
                write_json(run_dir / RESULT_NAME, done)
                if not settings.keep_checkpoints:
                    (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        _log(f"[rbgp reproduce] {name}: final test acc {done['final_acc']:.2f}%", quiet)
        results.append(done)
    report = {
        "kind": "rbgp-reproduce",
        "model": settings.model,
        "dataset": "synthetic_cifar10" if settings.smoke else settings.dataset,
        "smoke": settings.smoke,
        "sparsities": [float(s) for s in settings.sparsities],
        "patterns": list(settings.patterns),
        "runs": results,
        "wall_s": time.perf_counter() - t_start,
    }
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "reproduce.json", report)
        write_text(out / "reproduce.md", reproduce_markdown(report) + "\n")
        if not quiet:
            print(reproduce_markdown(report))
    return report


def reproduce_markdown(report: dict[str, Any]) -> str:
    """Rows: methods; columns: sparsities; cells: final (best) test accuracy in %."""
    sps = report["sparsities"]
    runs = report["runs"]
    first = runs[0]["config"]
    smoke = " (SMOKE: a few steps, not a result)" if report["smoke"] else ""
    head = (
        f"{report['model']} on {report['dataset']}{smoke}: test accuracy %, final (best) "
        f"after {first['epochs']} epochs, batch {first['batch_size']}, SGD lr {first['lr']:g} "
        f"Nesterov, wd {first['weight_decay']:g}, lr x{first['gamma']:g} at {first['milestones']}."
    )
    lines = [head, "", "| method | " + " | ".join(f"{s:g}" for s in sps) + " |", "|---|" + "---|" * len(sps)]

    def cell(r: dict[str, Any]) -> str:
        return f"{r['final_acc']:.2f} ({r['best_acc']:.2f})"

    dense = next(r for r in runs if r["pattern"] == "dense")
    lines.append("| dense | " + " | ".join(cell(dense) for _ in sps) + " |")
    for pattern in report["patterns"]:
        cells = []
        for s in sps:
            r = next((r for r in runs if r["pattern"] == pattern and r["sparsity"] == s), None)
            cells.append(cell(r) if r else "")
        lines.append(f"| {pattern} | " + " | ".join(cells) + " |")
    if first.get("exclude"):
        lines += ["", f"Kept dense in every run besides the first and last layers: {', '.join(first['exclude'])}."]
    lines += ["", f"Wall time: {report['wall_s']:.0f} s."]
    return "\n".join(lines)
