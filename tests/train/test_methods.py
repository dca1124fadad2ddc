"""Sparse training methods: Gradient Annealing, the schedules, pruning, budgets, FLOPs and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rbgp.cli import main
from rbgp.experiments import TrainConfig, build_run_model, train
from rbgp.train import make_method
from rbgp.train.flops import flops, layer_positions
from rbgp.train.methods import alpha_schedule, bake, budget_from_run, cubic_sparsity, ga_threshold
from rbgp.train.methods.budgeted import budget_from_layers
from rbgp.train.methods.magnitude import is_prune_step

_NUMBERS = ("train_loss", "train_acc", "test_loss", "test_acc", "sparsity", "train_flops", "epoch")


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mlp", dataset="synthetic_cifar10", model_kwargs={"hidden": [64, 64, 64]},
                epochs=3, batch_size=32, limit_train=192, limit_test=64, lr=0.05, weight_decay=1e-4)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------------------------
# Gradient Annealing
# ----------------------------------------------------------------------------------------------


def _grads(fn, w, t, upstream):
    w = w.clone().requires_grad_()
    t = t.clone().requires_grad_()
    out = fn(w, t)
    out.backward(upstream)
    return out.detach(), w.grad, t.grad


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("per_channel", [False, True])
def test_gradient_annealing_scales_masked_gradients_by_alpha(alpha, per_channel):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 9, generator=g, dtype=torch.float64) * 0.1
    t = torch.full((12, 1) if per_channel else (), -2.5, dtype=torch.float64)
    upstream = torch.randn(12, 9, generator=g, dtype=torch.float64)  # dL/dW_s
    ws, gw, _ = _grads(lambda w, t: ga_threshold(w, t, alpha), w, t, upstream)
    masked = w.abs() <= torch.sigmoid(t)
    assert 0 < masked.sum() < masked.numel()
    assert torch.equal(ws[masked], torch.zeros_like(ws[masked]))
    assert torch.equal(gw[masked], alpha * upstream[masked])  # exactly alpha times
    assert torch.equal(gw[~masked], upstream[~masked])


def test_alpha_zero_is_str():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64) * 0.2
    t = torch.full((7, 1, 1, 1), -1.8, dtype=torch.float64)
    upstream = torch.randn(w.shape, generator=g, dtype=torch.float64)

    def str_reference(w, t):  # Kusupati et al.: plain relu, zero gradient where masked
        return torch.sign(w) * F.relu(w.abs() - torch.sigmoid(t))

    ours = _grads(lambda w, t: ga_threshold(w, t, 0.0), w, t, upstream)
    ref = _grads(str_reference, w, t, upstream)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-15)


def test_alpha_schedule():
    assert alpha_schedule(0, 0.5, 10) == pytest.approx(0.5)
    assert alpha_schedule(5, 0.5, 10) == pytest.approx(0.25)  # both branches give 1/2 at t = T/2
    # past the middle the cosine branch wins: (1 + cos(0.8 pi)) / 2
    assert alpha_schedule(8, 1.0, 10) == pytest.approx(max((1 + math.cos(0.8 * math.pi)) / 2,
                                                           1 - 1 / (1 + math.exp(-(-6 + 9.6))))) 
    # before the middle the sigmoid branch wins: 1 - sigmoid(-6 + 12 * 0.2)
    assert alpha_schedule(2, 1.0, 10) == pytest.approx(1 - 1 / (1 + math.exp(6 - 2.4)))
    values = [alpha_schedule(e, 0.5, 10) for e in range(11)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(0.5 * (1 - 1 / (1 + math.exp(-6))))
    assert alpha_schedule(4, 0.5, 10, zero_epoch=4) == 0.0 and alpha_schedule(3, 0.5, 10, zero_epoch=4) > 0


# ----------------------------------------------------------------------------------------------
# Magnitude pruning
# ----------------------------------------------------------------------------------------------


def test_cubic_schedule_values():
    assert cubic_sparsity(0, 0.9, 10, 110) == 0.0
    assert cubic_sparsity(10, 0.9, 10, 110) == pytest.approx(0.0)
    assert cubic_sparsity(60, 0.9, 10, 110) == pytest.approx(0.9 - 0.9 * 0.5 ** 3)
    assert cubic_sparsity(35, 0.9, 10, 110, initial=0.2) == pytest.approx(0.9 + (0.2 - 0.9) * 0.75 ** 3)
    assert cubic_sparsity(110, 0.9, 10, 110) == 0.9 and cubic_sparsity(500, 0.9, 10, 110) == 0.9
    assert cubic_sparsity(7, 0.8, 7, 7) == 0.8  # one-shot
    assert [s for s in range(1, 30) if is_prune_step(s, 0, 20, 5)] == [5, 10, 15, 20]
    assert [s for s in range(1, 30) if is_prune_step(s, 3, 12, 4)] == [3, 7, 11, 12]
    assert [s for s in range(1, 30) if is_prune_step(s, 9, 9, 4)] == [9]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 50), st.integers(1, 60), st.integers(1, 100), st.floats(0.05, 0.99))
def test_cubic_schedule_is_monotone_and_ends_at_final(start, length, step, final):
    end = start + length
    s = [cubic_sparsity(t, final, start, end) for t in range(0, end + 3)]
    assert all(a <= b + 1e-12 for a, b in zip(s, s[1:]))
    assert s[end] == final and 0.0 <= min(s)


def _pruner(**kw):
    config = _cfg(method="magnitude", sparsity=0.8, method_kwargs=kw)
    model, _ = build_run_model(config, 10, (3, 32, 32))
    method = make_method(config)
    method.prepare(model, 100)
    return model, method


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_prune_reaches_the_target(scope):
    model, method = _pruner(scope=scope)
    method.prune(0.75)
    layers = method.sparse_layers(model)
    assert list(layers) == ["net.3", "net.5"]  # the first and last layers stay dense
    zeros = [int((m.weight == 0).sum()) for m in layers.values()]
    sizes = [m.weight.numel() for m in layers.values()]
    if scope == "layer":
        assert all(z == math.floor(0.75 * n) for z, n in zip(zeros, sizes))
    else:
        assert sum(zeros) == math.floor(0.75 * sum(sizes))
    kept = [m.weight[m.weight != 0].abs().min() for m in layers.values()]
    pruned_max = [m.parametrizations.weight.original[m.weight == 0].abs().max() for m in layers.values()]
    if scope == "global":  # one threshold: every kept weight outweighs every pruned one
        assert min(kept) >= max(pruned_max)
    else:
        assert all(k >= p for k, p in zip(kept, pruned_max))


def test_block_pruning_keeps_whole_blocks():
    model, method = _pruner(granularity="block", block=[4, 8])
    method.prune(0.5)
    for m in method.sparse_layers(model).values():
        mask = m.parametrizations.weight[0].mask
        blocks = mask.reshape(16, 4, 8, 8).float().mean(dim=(1, 3))
        assert set(blocks.unique().tolist()) <= {0.0, 1.0}
        assert blocks.mean().item() == pytest.approx(0.5)


def test_bake_leaves_plain_weights_with_zeros():
    model, method = _pruner()
    method.prune(0.6)
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    bake(model)
    assert not any("parametrizations" in k for k in model.state_dict())
    assert torch.equal(model(x), before)
    assert (model.net[3].weight == 0).float().mean().item() == pytest.approx(0.6, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# Runs: exact resume mid-schedule, metrics, budgets
# ----------------------------------------------------------------------------------------------


def _numbers(history):
    return [{k: h[k] for k in _NUMBERS} for h in history]


@pytest.mark.parametrize("method, kwargs", [
    ("magnitude", {"frequency": 2}),  # 18 steps, pruned every 2 up to step 12: crosses epochs 1-2
    ("autosparse", {"init_sparsity": 0.5, "per_channel": True, "threshold_decay": 1e-3}),
])
def test_resume_mid_method_is_exact(tmp_path, method, kwargs):
    config = _cfg(method=method, method_kwargs=kwargs, schedule="constant")
    full = train(config, tmp_path / "full", quiet=True)
    first = train(config, tmp_path / "cut", quiet=True, stop_after_epoch=1)
    assert first.stopped_early
    resumed = train(config, tmp_path / "cut", resume=True, quiet=True)
    assert _numbers(resumed.history) == _numbers(full.history)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    sparsities = [h["sparsity"] for h in full.history]
    if method == "magnitude":
        assert sparsities[0] < sparsities[1] == pytest.approx(0.9, abs=1e-3) == sparsities[2]
    else:
        assert [h["alpha"] for h in full.history] == [alpha_schedule(e, 0.5, 3) for e in range(3)]
        assert 0 < sparsities[-1] < 1
    longer = TrainConfig(**{**config.to_dict(), "epochs": 4})  # the schedule would move: refused
    with pytest.raises(ValueError, match=f"the {method} schedule depends on epochs"):
        train(longer, tmp_path / "cut", resume=True, quiet=True)
    row = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row["layer_sparsity"]) == {"net.3", "net.5"}
    assert row["infer_flops"] < row["infer_flops_dense"] and row["train_flops"] < row["train_flops_dense"]


def test_budgeted_realises_the_learnt_budget(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "layer_sparsity": {"net.3": 0.7, "net.5": 0.9, "net.7": 0.01}}) + "\n")
    budget = budget_from_run(tmp_path)
    assert budget == {"net.3": 0.7, "net.5": 0.9}  # nearly dense layers stay dense
    config = _cfg(method="budgeted", pattern="rbgp4", distribution="uniform", model_kwargs={"hidden": [64, 64, 64]},
                  method_kwargs={"budget": budget})
    _, report = build_run_model(config, 10, (3, 32, 32))
    got = {r.name: r.sparsity for r in report.layers}
    assert set(got) == {"net.3", "net.5"}
    assert all(abs(got[k] - budget[k]) <= 0.1 for k in got)


@pytest.mark.parametrize("kw, message", [
    (dict(method="magnitude", pattern="rbgp4"), "use pattern 'dense'"),
    (dict(method="autosparse", method_kwargs={"alpha": 0.5}), "unknown option(s) ['alpha']"),
    (dict(method="autosparse", method_kwargs={"alpha0": 2.0}), "alpha0 must be in [0, 1]"),
    (dict(method="magnitude", method_kwargs={"scope": "net"}), "scope must be one of layer, global"),
    (dict(method="budgeted", pattern="rbgp4", distribution="uniform"), "needs a budget"),
    (dict(method="budgeted", pattern="rbgp4", method_kwargs={"budget": {"a": 0.5}}), "distribution must be 'uniform'"),
    (dict(method="prune"), "unknown method 'prune'"),
])
def test_bad_method_settings_are_named(kw, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
                       .replace("]", r"\]")):
        _cfg(**kw)


def test_flops_of_a_dense_and_a_pruned_mlp():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    pos = layer_positions(model, (12,))
    assert pos == {"1": 1, "3": 1}
    f = flops(model, pos)
    assert f["infer_flops"] == f["infer_flops_dense"] == 2 * (12 * 8 + 8 * 4)
    assert f["train_flops_dense"] == 3 * f["infer_flops_dense"]
    with torch.no_grad():
        model[1].weight[:, :6] = 0
    f = flops(model, pos, dense_grad=["1"])
    assert f["infer_flops"] == 2 * (48 + 32)
    assert f["train_flops"] == 2 * (2 * 48 + 96) + 3 * 2 * 32
    assert layer_positions(conv, (3, 8, 8)) == {"0": 16, "2": 1}


def test_cli_methods(tmp_path, capsys):
    common = ["train", "--model", "mlp", "--dataset", "synthetic_cifar10", "--hidden", "32,32,32",
              "--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--quiet"]
    assert main([*common, "--method", "autosparse", "--prune-every", "5", "--out-dir", str(tmp_path / "a")]) == 2
    assert "--prune-every applies to --method magnitude, not autosparse" in capsys.readouterr().err
    assert main([*common, "--method", "magnitude", "--sparsity", "0.8", "--prune-end", "1",
                 "--out-dir", str(tmp_path / "m")]) == 0
    assert main([*common, "--method", "autosparse", "--init-sparsity", "0.7", "--out-dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--method", "budgeted", "--budget-from", str(tmp_path / "m"),
                 "--out-dir", str(tmp_path / "b")]) == 0
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["config"]["pattern"] == "rbgp4" and run["config"]["distribution"] == "uniform"
    assert run["config"]["method_kwargs"]["budget"] == {"net.3": pytest.approx(0.8, abs=1e-3),
                                                        "net.5": pytest.approx(0.8, abs=1e-3)}
    assert main([*common, "--method", "budgeted", "--out-dir", str(tmp_path / "c")]) == 2
    assert "needs a budget" in capsys.readouterr().err


def test_methods_table_runs_every_row(tmp_path, fake_fashion):
    out = tmp_path / "methods"
    argv = ["methods", "--targets", "0.8", "--seeds", "1", "--epochs", "1", "--limit-train", "0",
            "--out-dir", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "methods.json").read_text())
    rows = {(e["row"], e["target"]): e for e in report["summary"]}
    assert [r for r, _ in rows] == ["dense", "unstructured", "magnitude", "autosparse", "rbgp4-uniform",
                                    "rbgp4-erk", "rbgp4-budgeted"]
    learnt = rows["autosparse", 0.8]["sparsity"]
    for row in ("unstructured", "magnitude", "rbgp4-erk"):  # compared at AutoSparse's learnt budget
        assert rows[row, 0.8]["sparsity"] == pytest.approx(learnt, abs=0.02)
    budget = report["runs"][-1]["config"]["method_kwargs"]["budget"]
    assert budget == budget_from_layers(rows["autosparse", 0.8]["layer_sparsity"])
    assert all(0 < e["infer_flops_ratio"] <= 1 and 0 < e["train_flops_ratio"] <= 1 for e in rows.values())
    assert (out / "methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rbgp4-budgeted | 0.8 |" in (out / "methods.md").read_text()
    assert main(["methods", "--rows", "dense,rbgp4", "--out-dir", str(out)]) == 2


def test_methods_on_models_we_did_not_write():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                                                n_positions=16))
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 2, 64, batch_first=True), 2)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    cases = [(gpt2, lambda m: m(torch.randint(0, 64, (2, 8))).logits),
             (encoder, lambda m: m(torch.randn(2, 5, 32))),
             (cnn, lambda m: m(torch.randn(2, 3, 12, 12)))]
    for model, run in cases:
        for name, options in (("magnitude", {"sparsity": 0.8}), ("autosparse", {"init_sparsity": 0.5})):
            twin = __import__("copy").deepcopy(model)
            method = make_method(name, **options)
            method.prepare(twin, 10)
            opt = torch.optim.SGD(method.param_groups(twin), lr=0.01)
            method.on_epoch_start(1)
            run(twin).float().pow(2).mean().backward()
            opt.step()
            for step in range(1, 11):  # the whole (10-step) magnitude schedule: ends at the final sparsity
                method.after_step(twin, step)
            layers = method.sparse_layers(twin)
            assert layers and all(hasattr(m, "parametrizations") for m in layers.values())
            zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
            total = sum(m.weight.numel() for m in layers.values())
            expected = 0.8 if name == "magnitude" else 0.3  # AutoSparse: at least part of its start
            assert zeros / total >= expected - 0.01, (type(model).__name__, name, zeros / total)
            assert torch.isfinite(run(twin)).all()
            bake(twin)
            assert torch.isfinite(run(twin)).all()
