"""Calibrated conversion: statistics collected layer by layer on the model as it is converted, the exact
per-group reconstruction inside sparsify, on models we did not write, and bad calibration data."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rbgp
from rbgp.nn import RBGPConv2d, RBGPLinear, sparsify
from rbgp.nn.calibration import CalibrationError, GramStats, _waves, layer_inputs, sequential

transformers = pytest.importorskip("transformers")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 4))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, bias=False),
                         nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding="same", padding_mode="reflect"),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2,
                                                                n_head=4, bos_token_id=0, eos_token_id=0)).eval()


def _llama() -> nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32)).eval()


def _ids(n: int = 8, seq: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 4, (3, 2), stride=2, dilation=(1, 2)),
                                  nn.Conv2d(2, 3, 3, padding="same", padding_mode="circular")])
def test_conv_rows_are_the_im2col_patches(conv):
    x = torch.randn(2, conv.in_channels, 9, 8)
    rows = layer_inputs(conv, x)
    ref = conv(x) - conv.bias[:, None, None]
    y = (rows @ conv.weight.reshape(conv.out_channels, -1).t()).view(2, -1, conv.out_channels)
    torch.testing.assert_close(y, ref.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_gram_accumulates_the_augmented_inputs_in_float64():
    stats = GramStats(torch.zeros(4, 4, dtype=torch.float64))
    x = torch.randn(10, 3, dtype=torch.bfloat16)
    stats.add(x[:6])
    stats.add(x[6:])
    xa = torch.cat([x.double(), torch.ones(10, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(stats.gram, xa.t() @ xa)
    assert stats.rows == 10 and stats.gram.dtype == torch.float64


@pytest.mark.parametrize("width", [1023, 1024, 1300])
def test_wide_gram_by_blocks_is_the_whole_product(width):
    """Inputs of 2 * SYMMETRIC_BLOCK columns or more take their Gram matrix by block rows from the diagonal
    on, mirrored: equal to the whole product within float32 rounding and symmetric, the ones column as
    before; a pair of different inputs (dense targets) still takes the whole product."""
    g = torch.Generator().manual_seed(width)
    x, d = torch.randn(300, width, generator=g), torch.randn(300, width, generator=g)
    stats = GramStats(torch.zeros(width + 1, width + 1, dtype=torch.float64))
    stats.add_pair(x, d)
    for acc, a, b in ((stats.gram, x, x), (stats.cross, x, d), (stats.dense_gram, d, d)):
        a1 = torch.cat([a.double(), torch.ones(300, 1, dtype=torch.float64)], 1)
        b1 = torch.cat([b.double(), torch.ones(300, 1, dtype=torch.float64)], 1)
        torch.testing.assert_close(acc, a1.t() @ b1, rtol=1e-5, atol=1e-3)
    for acc in (stats.gram, stats.dense_gram):
        torch.testing.assert_close(acc, acc.t(), rtol=0, atol=1e-9 * float(acc.abs().max()))


def test_layers_reading_one_input_share_a_wave():
    model = _llama()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in n]
    names = [[layers[i][0].split(".", 3)[-1] for i in w] for w in _waves(model, layers, _ids(2))]
    assert names[:4] == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                         ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    assert len(names) == 8


def test_later_layers_see_the_converted_layers_outputs():
    model = _mlp()
    x = torch.randn(64, 32)
    layers = [("2", model[2]), ("4", model[4])]
    seen = {}

    def convert(name, module, stats):
        seen[name] = stats.inputs.clone()
        return nn.Linear(128, 128) if name == "2" else None  # a different layer 2

    sequential(model, layers, [x], convert)
    h = torch.relu(model[2](torch.relu(model[0](x)))).double()
    torch.testing.assert_close(seen["4"], h.t() @ h, rtol=1e-5, atol=1e-5)  # measured after layer 2 was replaced


def test_dense_targets_pair_the_converted_inputs_with_the_unconverted_models():
    model = _mlp()
    x = torch.randn(64, 32)
    h1 = torch.relu(model[2](torch.relu(model[0](x)))).double()  # layer 4's input in the unconverted model
    replacement = nn.Linear(128, 128)
    seen = {}

    def convert(name, module, stats):
        seen[name] = stats
        return replacement if name == "2" else None

    sequential(model, [("2", model[2]), ("4", model[4])], list(x.split(16)), convert, dense_targets=True)
    assert seen["2"].cross is None  # nothing converted before layer 2: its inputs are the dense ones
    assert model[2] is replacement  # put back after each dense pass
    hs = torch.relu(replacement(torch.relu(model[0](x)))).double()
    ones = torch.ones(64, 1, dtype=torch.float64)
    hsa, hda = torch.cat([hs, ones], 1), torch.cat([h1, ones], 1)
    stats = seen["4"]
    torch.testing.assert_close(stats.gram, hsa.t() @ hsa, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats.cross, hsa.t() @ hda, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats.dense_gram, hda.t() @ hda, rtol=1e-5, atol=1e-4)


def test_rows_routed_differently_are_not_paired():
    """A layer that sees other rows once earlier layers change (data-dependent routing, as MoE experts) is
    measured on its own inputs only: no cross products from rows that do not correspond."""

    class Routed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = self.a(x)
            return self.b(h[h[:, 0] > 0])

    torch.manual_seed(0)
    model, x = Routed(), torch.randn(64, 8)
    flipped = nn.Linear(8, 8)
    with torch.no_grad():
        flipped.weight.copy_(-model.a.weight)
        flipped.bias.copy_(-model.a.bias)
    seen = {}

    def convert(name, module, stats):
        seen[name] = stats
        return flipped if name == "a" else None

    sequential(model, [("a", model.a), ("b", model.b)], [x], convert, dense_targets=True)
    h = flipped(x)
    rows = h[h[:, 0] > 0].double()
    assert seen["b"].cross is None and seen["b"].dense_gram is None and seen["b"].rows == len(rows)
    torch.testing.assert_close(seen["b"].inputs, rows.t() @ rows, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("targets", ["dense", "layer"])
def test_inputs_that_overflow_inside_the_model_are_refused_by_layer(targets):
    """Finite calibration data whose activations overflow to inf before a layer: that layer is named."""

    class Blowup(nn.Module):
        def forward(self, x):
            return x * 1e30 * 1e30

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), Blowup(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"cannot sparsify layer '2'.*hold inf/NaN"):
        sparsify(model, 0.5, calibration=[torch.randn(8, 16)], keep_first_last=False, targets=targets)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and isinstance(model[0], nn.Linear)


def test_dense_targets_correct_the_errors_of_earlier_layers():
    """Fitting each layer to the unconverted model's outputs lands closer to the dense model than fitting it
    to the dense layer on converted inputs (SparseGPT's targets); both are deterministic."""
    model = _mlp()
    x = torch.randn(512, 32) @ torch.randn(32, 32)
    batches = list(x.split(128))
    ref = model(x).detach()
    errors = {
        t: _error(sparsify(model, 0.9, inplace=False, distribution="uniform", calibration=batches, targets=t).model,
                  ref, batches)
        for t in ("dense", "layer")
    }
    assert errors["dense"] < 0.9 * errors["layer"]
    with pytest.raises(ValueError, match="targets must be one of .*'dense'.*got 'outputs'"):
        sparsify(model, 0.9, calibration=batches, targets="outputs")


def test_an_error_puts_every_replaced_layer_back():
    model = _mlp()
    before = list(model)

    def convert(name, module, stats):
        if name == "4":
            raise RuntimeError("boom")
        return nn.Identity()

    with pytest.raises(RuntimeError, match="boom"):
        sequential(model, [("2", model[2]), ("4", model[4])], [torch.randn(8, 32)], convert)
    assert list(model) == before


def _error(model, ref, batches):
    with torch.no_grad():
        out = torch.cat([model(b) for b in batches])
    return float((out - ref).pow(2).mean() / ref.pow(2).mean())


def test_calibrated_mlp_beats_data_free_and_keeps_micro_blocks():
    model = _mlp()
    x = torch.randn(512, 32) @ torch.randn(32, 32)  # correlated inputs
    batches = list(x.split(128))
    ref = model(x).detach()
    free = sparsify(model, 0.75, inplace=False, distribution="uniform").model
    report = sparsify(model, 0.75, inplace=False, distribution="uniform", calibration=batches)
    sparse = report.model
    assert _error(sparse, ref, batches) < 0.5 * _error(free, ref, batches)
    for layer in (sparse[2], sparse[4]):
        assert isinstance(layer, RBGPLinear) and layer.block_width >= 8
    assert all(r.output_error is not None and 0 <= r.output_error < 1 for r in report.layers)
    assert "output error" in report.table() and report.recipe["init"] == "calibrated"
    again = sparsify(model, 0.75, inplace=False, distribution="uniform", calibration=batches).model
    assert all(torch.equal(a, b) for a, b in zip(sparse.state_dict().values(), again.state_dict().values()))
    out = sparse(x)
    dense = rbgp.densify(sparse)  # the converted layers compute what their densified weights compute
    torch.testing.assert_close(dense(x), out, rtol=1e-4, atol=1e-5)


def test_calibrated_cnn():
    model = _cnn().eval()
    x = torch.randn(16, 3, 12, 12)
    ref = model(x).detach()
    free = sparsify(model, 0.75, inplace=False, distribution="uniform").model
    sparse = sparsify(model, 0.75, inplace=False, distribution="uniform", calibration=[(x[:8], 0), (x[8:], 1)]).model
    assert isinstance(sparse[2], RBGPConv2d) and isinstance(sparse[5], RBGPConv2d)
    assert sparse[5].block_width == 9  # whole channels
    assert _error(sparse, ref, [x]) < _error(free, ref, [x])
    out = sparse(x)
    torch.testing.assert_close(rbgp.densify(sparse).eval()(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [_gpt2, _llama])
def test_calibrated_transformers_save_and_reload(make, tmp_path):
    model = make()
    ids = _ids(16)
    ref = model(input_ids=ids).logits.detach()
    calibration = [{"input_ids": ids[:8]}, {"input_ids": ids[8:]}]
    free = sparsify(model, 0.5, inplace=False, distribution="uniform").model
    report = sparsify(model, 0.5, distribution="uniform", calibration=calibration)
    assert len(report.layers) == (8 if make is _gpt2 else 14)
    assert all(model.get_submodule(r.name).block_width >= 8 for r in report.layers)
    # the calibrated plan has finer row groups than the data-free one: the reload adopts other shapes
    assert any(model.get_submodule(r.name).values.shape != free.get_submodule(r.name).values.shape
               for r in report.layers)
    out = model(input_ids=ids).logits.detach()
    free_out = free(input_ids=ids).logits.detach()
    assert F.mse_loss(out, ref) < 0.5 * F.mse_loss(free_out, ref)
    model.save_pretrained(tmp_path)
    loaded = rbgp.from_pretrained(type(model), tmp_path)
    torch.testing.assert_close(loaded(input_ids=ids).logits, out)


def test_layers_the_model_never_calls_are_converted_data_free():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.unused, self.head = (nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 64),
                                                     nn.Linear(64, 2))

        def forward(self, x):
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))

    report = sparsify(Net(), {"b": 0.75, "unused": 0.75}, calibration=[torch.randn(32, 16)], keep_first_last=False)
    notes = {r.name: r.note for r in report.layers}
    assert "not called on the calibration data" in notes["unused"] and notes["b"] == ""


def test_bad_calibration_gets_one_clear_error():
    model = _mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CalibrationError, match="calibration data is empty"):
        sparsify(model, 0.75, calibration=[])
    with pytest.raises(CalibrationError, match="not a single tensor"):
        sparsify(model, 0.75, calibration=torch.randn(4, 32))
    with pytest.raises(CalibrationError, match="got int"):
        sparsify(model, 0.75, calibration=[3])
    with pytest.raises(ValueError, match="init='kaiming'"):
        sparsify(model, 0.75, calibration=[torch.randn(4, 32)], init="kaiming")
    with pytest.raises(ValueError, match="prune_oneshot"):
        sparsify(model, 0.75, pattern="unstructured", calibration=[torch.randn(4, 32)])
    with pytest.raises(ValueError, match="saliency must be one of"):
        sparsify(model, 0.75, calibration=[torch.randn(4, 32)], saliency="grad")
    with pytest.raises(ValueError, match="needs calibration data"):
        sparsify(model, 0.75, init="calibrated")
    with pytest.raises(CalibrationError, match=r"the model failed on calibration batch 1 \(input float32 \(4, 31\)\): "
                                               r"RuntimeError: mat1 and mat2 shapes cannot be multiplied"):
        sparsify(model, 0.75, calibration=[torch.randn(4, 32), torch.randn(4, 31)])
    with pytest.raises(CalibrationError, match=r"calibration batch 1: input \(4, 32\) holds inf or NaN"):
        sparsify(model, 0.75, calibration=[torch.randn(4, 32), torch.randn(4, 32).index_fill(1, torch.tensor([3]), float("nan"))])
    assert all(isinstance(m, (nn.Linear, nn.ReLU)) for m in model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("batches,message", [
    ([_ids(), _ids().index_fill(1, torch.tensor([2]), 64)], r"batch 1: input \(8, 16\) holds token id 64, outside the "
                                                              r"model's vocabulary \(0..63\)"),
    ([{"input_ids": _ids().neg()}], r"batch 0: input_ids \(8, 16\) holds token id -\d+"),
    ([_ids(seq=33)], r"sequences of 33 tokens, longer than the model takes \(32 positions\)"),
    ([_ids().float()], r"the model failed on calibration batch 0 \(input float32 \(8, 16\)\): RuntimeError: "),
    ([{"inputs_embeds": torch.full((2, 4, 64), float("inf"))}], r"batch 0: inputs_embeds \(2, 4, 64\) holds inf or NaN"),
    ([_ids()[:0]], r"batch 0: input \(0, 16\) is empty"),
])
@pytest.mark.parametrize("make", [_gpt2, _llama])
def test_bad_calibration_of_a_transformer_leaves_it_untouched(make, batches, message):
    """Token ids out of the vocabulary, too long, wrongly typed, non-finite or empty: one line naming the batch,
    raised before any layer changes."""
    model = make()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    with pytest.raises(CalibrationError, match=message) as err:
        sparsify(model, 0.75, calibration=batches)
    assert len(str(err.value).splitlines()) == 1
    assert [type(m) for m in model.modules()] == types
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_gram_of_huge_activations_is_exact_and_finite():
    """Rows near the float32 limit: their Gram matrix overflows float32 products, not the (scaled) accumulation."""
    x = torch.randn(16, 3)
    small, huge = GramStats(torch.zeros(4, 4, dtype=torch.float64)), GramStats(torch.zeros(4, 4, dtype=torch.float64))
    small.add(x)
    huge.add(x * 2.0**100)
    assert torch.isfinite(huge.gram).all()
    # powers of two scale exactly: the inputs' block is 2^200 times the small one's, the column sums 2^100 times,
    # the corner counts the rows
    torch.testing.assert_close(huge.inputs, small.inputs * 2.0**200, rtol=0, atol=0)
    torch.testing.assert_close(huge.gram[-1, :-1], small.gram[-1, :-1] * 2.0**100, rtol=0, atol=0)
    assert huge.gram[-1, -1] == 16


@pytest.mark.parametrize("calibrated", [False, True])
def test_weights_of_any_magnitude_or_not_finite(calibrated):
    """Weights x1e20 convert (the fit and the solve are scale-free); NaN/inf weights and weights whose conversion
    overflows float32 are refused by layer and entry, the model untouched."""
    batches = [torch.randn(16, 32, generator=torch.Generator().manual_seed(1))] if calibrated else None
    ref = _mlp()
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(2.0**66)
        model[2].bias.mul_(2.0**66)
    sparsify(model, 0.75, calibration=batches)
    sparsify(ref, 0.75, calibration=batches)
    assert torch.isfinite(model[2].values).all()
    if calibrated:  # exactly 2^66 times the unscaled layer's weights: powers of two scale without rounding
        assert torch.equal(model[2].values, ref[2].values * 2.0**66)
    cases = [(lambda w: w.__setitem__((5, 7), float("nan")), r"holds 1 inf/NaN entries \(the first at \(5, 7\)\)")]
    if not calibrated:  # data-free: each row keeps its L1 norm, which overflows float32 here
        cases.append((lambda w: w.mul_(3e38), "its converted values overflow torch.float32"))
    for change, message in cases:
        model = _mlp()
        with torch.no_grad():
            change(model[2].weight)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=f"cannot sparsify layer '2'.*{message}"):
            sparsify(model, 0.75, calibration=batches)
        assert all(isinstance(m, (nn.Linear, nn.ReLU)) for m in model)
        assert all(torch.equal(v.nan_to_num(), state[k].nan_to_num()) for k, v in model.state_dict().items())
