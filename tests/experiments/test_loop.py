"""Tests for rbgp.experiments.loop: training, metrics files, masks, bf16, config checks, `rbgp train`."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from rbgp.cli import main
from rbgp.nn import MaskedLinear, RBGPLinear
from rbgp.experiments import METRIC_FIELDS, TrainConfig, train
from rbgp.experiments.recipes import Recipe, get_recipe


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mlp", dataset="synthetic_cifar10", model_kwargs={"hidden": [128, 128]},
                epochs=2, batch_size=32, limit_train=256, limit_test=128, lr=0.05,
                schedule="constant")
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_and_metrics_written(tmp_path):
    res = train(_cfg(pattern="rbgp4", sparsity=0.875, epochs=3), tmp_path, quiet=True)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0]
    assert res.final["test_acc"] > 50.0  # 10 classes: chance is 10%
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(METRIC_FIELDS) and len(table) == 3
    assert float(table[-1]["test_acc"]) == rows[-1]["test_acc"]
    for r in rows:
        assert r["train_ms_per_batch"] > 0 and r["epoch_time_s"] > 0 and r["steps"] == 8
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["pattern"] == "rbgp4" and run["sparsify"]["layers"]


def test_masks_stay_exact_after_steps():
    res = train(_cfg(pattern="unstructured", sparsity=0.9, weight_decay=1e-3), quiet=True)
    masked = [m for m in res.model.modules() if isinstance(m, MaskedLinear)]
    assert masked
    for m in masked:
        assert torch.all(m.weight[~m.mask.bool()] == 0)  # stored weights, not only weight*mask
        assert torch.count_nonzero(m.dense_weight()) <= m.structure.nnz
    res = train(_cfg(pattern="rbgp4", sparsity=0.875), quiet=True)
    layers = [m for m in res.model.modules() if isinstance(m, RBGPLinear)]
    assert layers
    for m in layers:
        assert torch.all(m.dense_weight()[~m.mask] == 0)
        assert m.values.numel() == m.structure.nnz


def test_bf16_keeps_fp32_master_weights():
    res = train(_cfg(pattern="rbgp4", sparsity=0.875, precision="bf16"), quiet=True)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    losses = [h["train_loss"] for h in res.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    rbgp = next(m for m in res.model.modules() if isinstance(m, RBGPLinear))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the sparse GEMMs really run in bf16
        assert rbgp(torch.randn(4, rbgp.in_features)).dtype == torch.bfloat16
        assert res.model(torch.randn(4, 3, 32, 32)).dtype == torch.bfloat16


def test_max_steps_and_dense_run_without_out_dir():
    res = train(_cfg(max_steps=3, epochs=1), quiet=True)
    assert res.out_dir is None and res.report is None and res.final["steps"] == 3


@pytest.mark.parametrize("field, value, match", [
    ("model", "resnet", "unknown model 'resnet'"),
    ("pattern", "random", "unknown pattern 'random'"),
    ("precision", "fp16", "unknown precision 'fp16'"),
    ("sparsity", 1.0, "sparsity must be in"),
    ("epochs", 0, "epochs must be >= 1"),
    ("milestones", [3, 2], "milestones must be increasing"),
    ("model_kwargs", {"channels": [8]}, "not supported for model 'mlp'"),
    # wrong types, as a config read from a crafted file may hold: named, never a TypeError
    ("sparsity", "0.9", "field 'sparsity' must be a number, got '0.9'"),
    ("epochs", "3", "field 'epochs' must be an integer"),
    ("exclude", 5, "field 'exclude' must be a list of strings"),
    ("model_kwargs", [1], "field 'model_kwargs' must be a mapping"),
    ("milestones", "ab", "field 'milestones' must be a list of integers"),
    ("augment", "no", "field 'augment' must be true or false"),
    ("seed", True, "field 'seed' must be an integer"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**{field: value})


def test_recipes():
    vgg, wrn = get_recipe("paper", "vgg19"), get_recipe("paper", "wrn40_4")
    assert (vgg.lr, vgg.batch_size, vgg.epochs, vgg.milestones, vgg.gamma) == (0.1, 256, 160, (80, 120), 0.1)
    assert (wrn.lr, wrn.batch_size, wrn.epochs, wrn.milestones, wrn.gamma) == (
        0.1, 128, 200, (60, 120, 160), 0.2)
    assert vgg.nesterov and vgg.momentum == 0.9 and vgg.weight_decay == 1e-4
    assert vgg.with_overrides(epochs=3, lr=None).epochs == 3
    with pytest.raises(ValueError, match="paper has recipes"):
        get_recipe("paper", "mlp")
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("fast")
    with pytest.raises(ValueError, match="unknown schedule"):
        Recipe(lr=0.1, batch_size=1, epochs=1, schedule="step")


def test_cli_train_and_errors(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--dataset", "synthetic_cifar10", "--hidden", "64",
            "--epochs", "1", "--batch-size", "64", "--limit-train", "128", "--limit-test", "64",
            "--pattern", "block", "--sparsity", "0.75", "--out-dir", str(run), "--quiet"]
    assert main(argv) == 0
    cfg = json.loads((run / "run.json").read_text())["config"]
    assert cfg["pattern_kwargs"] == {"block": [16, 16]} and cfg["lr"] == 0.05  # demo recipe
    assert main(argv) == 2  # refuses to clobber an existing run
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(argv[:-3] + ["--group-rows", "8", "--quiet"]) == 2
    assert "--group-rows applies to rbgp4 only" in capsys.readouterr().err


def test_init_from_a_dense_checkpoint_converts_fine_tunes_and_resumes(tmp_path, capsys):
    from rbgp.experiments import build_run_model, load_checkpoint

    train(_cfg(epochs=2, model_kwargs={"hidden": [256, 256, 256]}), tmp_path / "dense", quiet=True)
    start = str(tmp_path / "dense" / "checkpoint.pt")
    cfg = _cfg(pattern="rbgp4", sparsity=0.9, init="magnitude", init_from=start, epochs=2,
               model_kwargs={"hidden": [256, 256, 256]})
    model, report = build_run_model(cfg, 10, (3, 32, 32))
    dense_state = load_checkpoint(start)["model"]
    layer = model.net[3]
    assert isinstance(layer, RBGPLinear) and "fitted" in layer.structure.info
    kept = dense_state["net.3.weight"] * layer.mask  # weights kept, rows rescaled to their dense L1 norm
    torch.testing.assert_close(layer.dense_weight().abs().sum(1), dense_state["net.3.weight"].abs().sum(1))
    torch.testing.assert_close(layer.dense_weight() / layer.dense_weight().abs().sum(1, keepdim=True),
                               kept / kept.abs().sum(1, keepdim=True))
    assert report.layers[0].kept_mass > 0.1
    train(cfg, tmp_path / "ft", quiet=True, stop_after_epoch=1)
    resumed = train(cfg, tmp_path / "ft", quiet=True, resume=True)  # the fitted structure comes back
    full = train(cfg, tmp_path / "ft2", quiet=True)
    def numbers(res):
        return [(h["train_loss"], h["test_acc"]) for h in res.history]

    assert numbers(resumed) == numbers(full)
    # The converted run is self-contained: with the dense run moved away, its checkpoint and compressed
    # file still load (the fitted structure is in them) and it resumes.
    (tmp_path / "dense").rename(tmp_path / "moved")
    assert main(["compress", str(tmp_path / "ft"), str(tmp_path / "ft.rbgp"), "--quantize", "int8"]) == 0
    assert main(["infer", str(tmp_path / "ft.rbgp"), "--data", "synthetic", "--samples", "8"]) == 0
    longer = dataclasses.replace(cfg, epochs=3)
    assert len(train(longer, tmp_path / "ft", quiet=True, resume=True).history) == 3
    (tmp_path / "moved").rename(tmp_path / "dense")
    with pytest.raises(ValueError, match="init_from needs the checkpoint of a dense run"):
        build_run_model(_cfg(pattern="rbgp4", init_from=str(tmp_path / "ft" / "checkpoint.pt"),
                             model_kwargs={"hidden": [256, 256, 256]}), 10, (3, 32, 32))
    with pytest.raises(ValueError, match="its model does not match this run's"):
        build_run_model(_cfg(pattern="rbgp4", init_from=start), 10, (3, 32, 32))
    with pytest.raises(ValueError, match="unknown init 'zero'"):
        _cfg(init="zero")
    assert main(["train", "--model", "mlp", "--dataset", "synthetic_cifar10", "--hidden", "256,256,256",
                 "--pattern", "rbgp4", "--init", "magnitude", "--init-from", start, "--epochs", "1",
                 "--limit-train", "128", "--limit-test", "64", "--out-dir", str(tmp_path / "cli"), "--quiet"]) == 0
