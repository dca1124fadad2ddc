"""The user-facing sparsify API: sparsity specs, on_infeasible, roles, inplace, densify, magnitude fitting,
and transformers shapes that used to fail (LLaMA intermediate 688, GPT-2 vocabularies 1000 and 50257)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rbgp
from rbgp.nn import MaskedLinear, RBGPConv2d, RBGPLinear, densify, load_state, sparsify
from rbgp.patterns.fit import kept_mass


def mlp(widths=(64, 128, 128, 128, 10), seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _fit_steps(model, x, y, steps=25, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_on_infeasible_modes_and_untouched_on_error():
    spec = {"4": 0.999, "*": 0.9}  # layer 4 (128x128) cannot be 0.999 sparse; the first matching glob wins
    model = mlp()
    with pytest.raises(ValueError, match=r"cannot sparsify layer '4'.*nearest feasible sparsity is 0\.9"):
        sparsify(model, spec, on_infeasible="error")
    assert all(type(m) is nn.Linear for m in model if not isinstance(m, nn.ReLU))  # layer 2 was planned, not swapped
    report = sparsify(mlp(), spec, on_infeasible="skip")
    assert dict(report.skipped)["4"].startswith("infeasible: a 128x128 weight cannot be made 0.999 sparse")
    report = sparsify(mlp(), spec)  # "nearest" is the default
    by_name = {r.name: r for r in report.layers}
    assert by_name["4"].requested_sparsity == 0.999 and 0.95 < by_name["4"].sparsity < 0.999
    assert by_name["4"].note == "nearest feasible (asked 0.999)"
    assert by_name["2"].note == "" and abs(by_name["2"].sparsity - 0.9) <= 0.01
    with pytest.raises(ValueError, match="on_infeasible must be one of"):
        sparsify(mlp(), 0.9, on_infeasible="maybe")


def test_too_far_nearest_stays_dense():
    report = sparsify(nn.Sequential(nn.Linear(64, 3), nn.Linear(3, 64), nn.Linear(64, 8)), 0.9)
    assert dict(report.skipped)["1"].startswith(("infeasible", "too small"))
    assert not report.layers


def test_dict_and_callable_sparsity():
    model = mlp((64, 128, 128, 128, 128, 10))
    with pytest.warns(UserWarning, match=r"sparsity pattern 'nothing\*' matches no"):
        report = sparsify(model, {"2": 0.75, "4": None, "nothing*": 0.5}, init="kaiming")
    assert [r.name for r in report.layers] == ["2"] and report.layers[0].sparsity == pytest.approx(0.75)
    assert dict(report.skipped)["4"] == dict(report.skipped)["6"] == "no sparsity given for it"
    assert report.recipe["sparsity"] == {"2": 0.75, "4": None, "nothing*": 0.5}
    model = mlp((64, 128, 128, 128, 128, 10))
    report = sparsify(model, lambda name, m: 0.5 if m.out_features == 128 and name != "4" else None,
                      keep_first_last=False)
    assert [r.name for r in report.layers] == ["0", "2", "6"] and report.recipe is None
    with pytest.raises(ValueError, match=r"layer '2': sparsity must be a number in \(0, 1\)"):
        sparsify(mlp(), lambda name, m: 1.5)
    with pytest.raises(ValueError, match="sparsity"):
        sparsify(mlp(), {"2": 2.0})


def test_inplace_false_returns_a_converted_copy():
    model = mlp()
    report = sparsify(model, 0.75, inplace=False)
    assert type(model[2]) is nn.Linear and isinstance(report.model[2], RBGPLinear)
    x = torch.randn(4, 64)
    assert report.model(x).shape == (4, 10)
    assert sparsify(model, 0.75).model is model


@pytest.mark.parametrize("pattern", ["rbgp4", "unstructured"])
def test_densify_round_trip_gives_the_same_outputs(pattern):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, padding_mode="reflect"),
                          nn.ReLU(), nn.Conv2d(64, 64, 3, padding="same"), nn.Flatten(), nn.Linear(64 * 16, 128),
                          nn.ReLU(), nn.Linear(128, 10))
    sparsify(model, 0.75, pattern)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        sparse_out = model(x)
    dense = densify(model, inplace=False)
    assert not any(isinstance(m, (RBGPLinear, RBGPConv2d, MaskedLinear)) for m in dense.modules())
    assert type(dense[2]) is nn.Conv2d and dense[2].padding_mode == "reflect" and dense[4].padding == "same"
    with torch.no_grad():
        torch.testing.assert_close(dense(x), sparse_out, rtol=1e-5, atol=1e-5)
    assert isinstance(model[2], (RBGPConv2d, nn.Conv2d)) and rbgp.densify(model) is model


def test_roles_keep_heads_dense_not_the_first_attention_projection():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=512, max_position_embeddings=64, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg)
    report = sparsify(model, 0.9)
    converted = {r.name for r in report.layers}
    for part in ("query", "key", "value"):
        assert f"bert.encoder.layer.0.attention.self.{part}" in converted
    skipped = dict(report.skipped)
    assert skipped["classifier"].startswith("output head / classifier")
    assert skipped["bert.pooler.dense"].startswith("output head / classifier")
    assert "path coverage" not in report.table()  # meaningless with residual streams: not printed
    logits = model(input_ids=torch.randint(0, 1000, (2, 8))).logits
    assert logits.shape == (2, 3)


def test_magnitude_keeps_more_mass_and_its_structure_survives_save_and_load(tmp_path):
    from safetensors.torch import save_model

    torch.manual_seed(0)
    trained = mlp((64, 256, 256, 256, 10))
    with torch.no_grad():  # give the weights the structure training leaves: important inputs and outputs
        for m in trained:
            if isinstance(m, nn.Linear):
                m.weight.mul_(torch.exp(torch.randn(m.in_features)) * torch.exp(0.5 * torch.randn(m.out_features, 1)))
    keep = sparsify(trained, 0.9, init="keep", inplace=False)
    fit = sparsify(trained, 0.9, inplace=False)  # init="magnitude" is the default
    for k, f in zip(keep.layers, fit.layers):
        assert f.kept_mass > k.kept_mass + 0.02 and f.kept_mass <= f.top_k_mass + 1e-9
        assert f.sparsity == k.sparsity
    layer = fit.model[2]
    w = trained[2].weight.detach().numpy()
    assert kept_mass(w, layer.structure.array) == pytest.approx(fit.layers[0].kept_mass)
    kept = trained[2].weight * layer.mask  # kept on the mask, each row rescaled to its dense L1 norm
    scale = trained[2].weight.abs().sum(1, keepdim=True) / kept.abs().sum(1, keepdim=True)
    torch.testing.assert_close(layer.dense_weight(), kept * scale)
    assert "Kept |W| mass of the converted layers" in fit.table()
    path = tmp_path / "fit.safetensors"
    save_model(fit.model, str(path))
    fresh = sparsify(mlp((64, 256, 256, 256, 10), seed=1), 0.9, init="kaiming", inplace=False).model
    assert not torch.equal(fresh[2].row_index, layer.row_index) or not torch.equal(fresh[2].col_index, layer.col_index)
    load_state(fresh, path)  # adopts the saved (fitted) structures
    x = torch.randn(5, 64)
    torch.testing.assert_close(fresh(x), fit.model(x))
    assert torch.equal(fresh[2].structure_id, layer.structure_id)
    bad = {k: v.clone() for k, v in fit.model.state_dict().items()}
    bad["2.row_index"][0, 0] = 10_000
    with pytest.raises(RuntimeError, match=r"layer '2': the saved structure \(row_index, col_index\) is not valid"):
        fresh.load_state_dict(bad)


def test_magnitude_fit_trains_and_keeps_exact_zeros():
    model = mlp()
    sparsify(model, 0.9)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    losses = _fit_steps(model, x, y, steps=80)
    assert losses[-1] < 0.5 * losses[0]
    w = model[2].dense_weight()
    assert torch.all(w[~model[2].mask] == 0)


def test_unknown_keyword_and_second_call_and_string_exclude():
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['group'\].*valid:"):
        sparsify(mlp(), 0.9, group=8)
    model = mlp()
    sparsify(model, 0.9, keep_first_last=False)
    with pytest.warns(UserWarning, match="nothing left to convert"):
        sparsify(model, 0.9)
    with pytest.warns(UserWarning, match=r"exclude pattern '\*mlp\*' matches no"):
        report = sparsify(mlp(), 0.9, exclude="*mlp*")
    assert [r.name for r in report.layers] == ["2", "4"]


transformers = pytest.importorskip("transformers")


def _train_lm(model, vocab, steps=12):
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_llama_intermediate_688_plans_and_trains():
    t = transformers
    torch.manual_seed(0)
    model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=688,
                                             max_position_embeddings=64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = sparsify(model, 0.9, distribution="uniform")  # every layer at 0.9: the 688 shape planned
    names = {r.name: r for r in report.layers}
    for proj in ("gate_proj", "up_proj", "down_proj"):
        r = names[f"model.layers.0.mlp.{proj}"]
        assert abs(r.sparsity - 0.9) <= 0.01, r
    assert dict(report.skipped)["lm_head"].startswith("output head")
    losses = _train_lm(model, 1000)
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("vocab", [1000, 50257])
def test_gpt2_vocabularies_plan_and_train(vocab):
    t = transformers
    torch.manual_seed(0)
    model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=64, n_layer=1, n_head=4,
                                           tie_word_embeddings=False))
    report = sparsify(model, 0.9, keep_first_last=False, distribution="uniform")  # the head too, at 0.9
    head = {r.name: r for r in report.layers}["lm_head"]
    assert abs(head.sparsity - 0.9) <= 0.01 and head.weight_shape == [vocab, 64]
    assert model.lm_head.layout.padded_rows == (-vocab % head.rows_per_group)
    losses = _train_lm(model, vocab, steps=8)
    assert losses[-1] < losses[0] - 0.5
    assert np.isfinite(losses).all()


@pytest.mark.parametrize("sparsity", [0.8, 0.95, 0.97])
def test_pointwise_conv_32_to_128_converts_at_common_sparsities(sparsity):
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 128, 1), nn.Conv2d(128, 32, 1),
                          nn.Conv2d(32, 10, 1))
    report = sparsify(model, sparsity, init="kaiming", distribution="uniform")
    assert [r.name for r in report.layers] == ["1", "2"]
    for r in report.layers:
        assert abs(r.sparsity - sparsity) <= 0.05 and (r.note == "") == (abs(r.sparsity - sparsity) <= 0.01)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10, 8, 8)


@pytest.mark.parametrize("kw,message", [
    ({"exclude": 5}, "exclude must be a glob or a list of globs"),
    ({"exclude": ["0", 3]}, "exclude must be a glob or a list of globs"),
    ({"keep_first_last": "no"}, "keep_first_last must be True or False, got 'no'"),
    ({"seed": "0"}, "seed must be an integer >= 0, got '0'"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"inplace": 1}, "inplace must be True or False"),
])
def test_wrongly_typed_arguments_name_themselves(kw, message):
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.Linear(64, 8))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=message):
        sparsify(model, 0.9, **kw)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing changed


def test_exclude_takes_any_iterable_of_globs():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.Linear(64, 8))
    report = sparsify(model, 0.9, keep_first_last=False, exclude=(g for g in ["0"]))
    assert isinstance(model[0], nn.Linear) and not isinstance(model[2], nn.Linear)
    assert report is not None
