"""`rbgp demo` (table, sweep) and `rbgp reproduce --smoke` on tiny inputs."""

from __future__ import annotations

import json

import pytest
import torch

from rbgp.cli import main
from rbgp.nn import sparsify
from rbgp.experiments.demo import inference_ms_per_batch, model_counts
from rbgp.experiments.loop import build_run_model
from rbgp.experiments.models import MLP
from rbgp.experiments.reproduce import ReproduceSettings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_writes_table_json_markdown_png(tmp_path, fake_fashion, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--hidden", "128,128,128", "--epochs", "1", "--batch-size", "32",
            "--sparsity", "0.875", "--seeds", "2", "--timing-rounds", "2", "--out-dir", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "demo.json").read_text())
    methods = [r["method"] for r in report["rows"]]
    assert methods == ["dense", "rbgp4", "unstructured", "block16x16", "hbsnn32/4"]
    rows = {r["method"]: r for r in report["rows"]}
    dense, rbgp = rows["dense"], rows["rbgp4"]
    assert all(r["seeds"] == 2 and r["acc_std"] >= 0 for r in rows.values())
    assert all(r["train_ms_per_batch"] > 0 and r["infer_ms_per_batch"] > 0 for r in rows.values())
    assert dense["acc_mean"] > 60  # 4 easy classes: the pipeline really trains
    assert dense["structure_bytes"] == 0 and rbgp["structure_bytes"] > 0
    # RBGP stores only its non-zeros; the masked baselines store dense weights
    assert rbgp["params"] == rbgp["nonzeros"] < dense["params"]
    assert rows["unstructured"]["params"] == dense["params"] > rows["unstructured"]["nonzeros"]
    assert rbgp["structure_bytes"] < rows["unstructured"]["structure_bytes"]
    md = (out / "demo.md").read_text()
    assert "| rbgp4 |" in md and "infer ms/batch" in md
    assert (out / "demo.png").read_bytes()[:8] == PNG_MAGIC


def test_demo_sweep_curve(tmp_path, fake_fashion):
    out = tmp_path / "curve"
    argv = ["demo", "--hidden", "64,64,64", "--epochs", "1", "--batch-size", "64",
            "--sweep", "0.5,0.75", "--out-dir", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "curve.json").read_text())
    assert [(p["pattern"], p["sparsity"]) for p in report["points"]] == [
        ("rbgp4", 0.5), ("rbgp4", 0.75), ("unstructured", 0.5), ("unstructured", 0.75)]
    assert "| rbgp4 |" in (out / "curve.md").read_text()
    assert (out / "curve.png").read_bytes()[:8] == PNG_MAGIC


def test_demo_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RBGP_FASHION_MNIST", str(tmp_path / "missing"))
    assert main(["demo", "--out-dir", str(tmp_path), "--quiet"]) == 2
    assert "Fashion-MNIST file" in capsys.readouterr().err
    assert main(["demo", "--methods", "dense,magic", "--quiet"]) == 2
    assert "unknown demo method(s) ['magic']" in capsys.readouterr().err


def test_counts_and_inference_timer():
    model = MLP(32, [64, 64], 4)
    dense = model_counts(model)
    assert dense["params"] == dense["nonzeros"] and dense["structure_bytes"] == 0
    sparsify(model, 0.75, "unstructured")
    c = model_counts(model)
    assert c["params"] == dense["params"] and c["nonzeros"] == dense["params"] - 64 * 64 * 3 // 4
    assert inference_ms_per_batch(model, torch.randn(8, 32), warmup=1, reps=3) > 0


@pytest.mark.slow
def test_reproduce_smoke(tmp_path, capsys):
    out = tmp_path / "repro"
    argv = ["reproduce", "--model", "vgg19", "--smoke", "--sparsities", "0.5,0.9375",
            "--out-dir", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "reproduce.json").read_text())
    assert report["smoke"] and report["dataset"] == "synthetic_cifar10"
    runs = {r["run"]: r for r in report["runs"]}
    assert set(runs) == {"dense"} | {f"{p}_{s}" for p in ("unstructured", "block", "rbgp4")
                                     for s in ("0.5", "0.9375")}
    assert all(r["epochs"] == 1 and r["config"]["max_steps"] == 2 for r in runs.values())
    assert all(r["config"]["momentum"] == 0.9 and r["config"]["nesterov"] for r in runs.values())
    assert runs["rbgp4_0.9375"]["sparse_params"] < runs["dense"]["params"] / 8
    md = (out / "reproduce.md").read_text()
    assert "SMOKE" in md and "| rbgp4 |" in md and "| 0.5 | 0.9375 |" in md
    assert not any(p.is_dir() for p in out.iterdir())  # smoke runs leave no checkpoints
    assert main(["reproduce", "--model", "vgg19"]) == 2
    assert "--data-dir is required" in capsys.readouterr().err


def test_reproduce_configs_build_for_wrn():
    """WRN-40-4 at 1/16 density: every method builds (the tiny first shortcut stays dense)."""
    settings = ReproduceSettings(model="wrn40_4", sparsities=[0.9375], smoke=True)
    configs = dict(settings.configs())
    assert configs["dense"].milestones == [60, 120, 160] and configs["dense"].gamma == 0.2
    _, report = build_run_model(configs["rbgp4_0.9375"], 10, (3, 32, 32))
    assert ("blocks.0.shortcut", "excluded") in report.skipped
    assert all(abs(layer.density - 0.0625) < 0.01 for layer in report.layers)
    with pytest.raises(ValueError, match="reproduce runs vgg19, wrn40_4"):
        ReproduceSettings(model="mlp").configs()
    with pytest.raises(ValueError, match="unknown pattern"):
        ReproduceSettings(patterns=["hbsnn"]).configs()
