"""sparsify on models we did not write: Hugging Face transformers (tiny configs, random init, nothing
downloaded), torch.nn.TransformerEncoder, CNNs with the usual padding modes, tied weights; and the
memory a large sparse layer holds."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import rbgp
from rbgp.nn import MaskedConv2d, RBGPConv2d, RBGPLinear, count_parameters, load_state, sparsify

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB = 1000


def _tiny(name: str) -> nn.Module:
    t = transformers
    torch.manual_seed(0)
    if name == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=128, n_layer=2, n_head=4,
                                                         bos_token_id=0, eos_token_id=0))
    if name == "bert":
        return t.BertForMaskedLM(t.BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=512,
                                              max_position_embeddings=64))
    return t.LlamaForCausalLM(t.LlamaConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                                            max_position_embeddings=64))


HF_MODELS = ["gpt2", "bert", "llama"]


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", HF_MODELS)
def test_transformers_sparsify_train_save_reload(name, tmp_path):
    model = _tiny(name)
    before = count_parameters(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent surprises
        report = sparsify(model, 0.9)
    assert len(report.layers) >= 6 and report.params_before == before
    assert report.params_after == count_parameters(model) < 0.6 * before
    assert abs(report.global_sparsity - 0.9) < 0.01  # the default distribution ("hw") meets the global budget
    assert model.config.rbgp["sparsity"] == 0.9
    ids = _ids()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):  # forward and backward through the sparse layers; the loss must go down
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(m.values.grad is not None for m in model.modules() if isinstance(m, RBGPLinear))
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "hf")
    again = rbgp.from_pretrained(type(model), tmp_path / "hf")
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, ref)
    safetensors_torch.save_model(model, str(tmp_path / "model.safetensors"))
    twin = _tiny(name)
    sparsify(twin, 0.9)
    load_state(twin, tmp_path / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(twin.eval()(input_ids=ids).logits, ref)


@pytest.mark.parametrize("name", HF_MODELS)
def test_transformers_inference_matches_the_densified_model(name):
    """The inference path (no autograd node, gather index and row strides kept per layer) on a
    model we did not write, under no_grad and inference_mode, two batch sizes, against its
    densified twin."""
    model = _tiny(name)
    sparsify(model, 0.9)
    model.eval()
    dense = rbgp.densify(model, inplace=False)
    for ids in (_ids(1), torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(2)), _ids(1)):
        with torch.no_grad():
            ref = dense(input_ids=ids).logits
            got = model(input_ids=ids).logits
        with torch.inference_mode():
            got_inference = model(input_ids=ids).logits
        assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(got_inference, got)


def test_gpt2_conv1d_converted_and_tied_head_kept():
    model = _tiny("gpt2")
    report = sparsify(model, 0.9)
    converted = {r.name for r in report.layers}
    assert "transformer.h.0.mlp.c_fc" in converted and "transformer.h.1.attn.c_attn" in converted
    skipped = dict(report.skipped)
    assert "tied weight" in skipped["lm_head"] and "tied weight" in skipped["transformer.wte"]
    assert model.lm_head.weight is model.transformer.wte.weight  # never untied
    # Conv1D stores (in, out): the RBGP layer computes x W + b with W its transpose, on the pattern
    layer = model.transformer.h[1].mlp.c_fc
    x = torch.randn(3, 128)
    assert torch.allclose(layer(x), x @ layer.weight.t() + layer.bias, atol=1e-5)


def test_conv1d_from_dense_keeps_weights_on_pattern():
    conv1d = transformers.pytorch_utils.Conv1D(96, 64)  # nf=96 outputs, nx=64 inputs, weight (64, 96)
    layer = RBGPLinear.from_dense(conv1d, 0.75)
    mask = layer.mask
    assert layer.weight.shape == (96, 64)
    assert torch.equal(layer.weight[mask], conv1d.weight.t()[mask].detach())


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_transformers_generate_resize_and_compile(name):
    model = _tiny(name)
    sparsify(model, 0.9)
    model.eval()
    ids = _ids(1)
    out = model.generate(ids[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long), max_new_tokens=5,
                         do_sample=False, pad_token_id=0)
    assert out.shape == (2, 9)
    with torch.no_grad():
        eager = model(input_ids=ids).logits
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(input_ids=ids).logits, eager, atol=1e-5)
    model.resize_token_embeddings(VOCAB + 8)
    assert model(input_ids=ids).logits.shape[-1] == VOCAB + 8


def test_transformer_encoder_eval_fast_path_and_train():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    report = sparsify(enc, 0.9, keep_first_last=False)
    assert {r.name for r in report.layers} == {f"layers.{i}.linear{j}" for i in range(2) for j in (1, 2)}
    assert all("MultiheadAttention" in why for name, why in report.skipped if name.endswith("out_proj"))
    x = torch.randn(3, 10, 128)
    enc.train()
    y_train = enc(x)  # the sparse layers' own forward (slow path)
    y_train.sum().backward()
    assert enc.layers[0].linear1.values.grad is not None
    enc.eval()
    with torch.no_grad():
        y_eval = enc(x)  # the fast path reads linear1.weight / linear2.weight
    assert torch.allclose(y_eval, y_train.detach(), atol=1e-4)


def test_weight_is_a_read_only_dense_view():
    layer = RBGPLinear(128, 64, 0.75)
    w = layer.weight
    assert w.shape == (64, 128) and torch.equal(w, layer.dense_weight())
    assert bool(((w != 0) <= layer.mask).all())
    with pytest.raises(AttributeError, match="read-only"):
        layer.weight = torch.zeros(64, 128)


def _convs():
    return [nn.Conv2d(16, 32, 3, padding="same", padding_mode="reflect"),
            nn.Conv2d(16, 32, 3, padding=1, padding_mode="replicate"),
            nn.Conv2d(16, 32, 3, padding=2, dilation=2, padding_mode="circular"),
            nn.Conv2d(16, 32, (2, 4), padding="same"),  # even kernel: asymmetric padding
            nn.Conv2d(16, 32, 3, stride=2, padding="valid")]


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("pattern", ["rbgp4", "unstructured"])
def test_padding_modes_compute_exactly_what_the_dense_conv_computes(index, pattern):
    torch.manual_seed(index)
    conv = _convs()[index]
    model = nn.Sequential(nn.Identity(), conv)
    report = sparsify(model, 0.75, pattern, keep_first_last=False, init="keep", block=(1, 4)) \
        if pattern == "rbgp4" else sparsify(model, 0.75, pattern, keep_first_last=False, init="keep")
    sparse = model[1]
    assert isinstance(sparse, (RBGPConv2d, MaskedConv2d)) and len(report.layers) == 1
    ref = nn.Conv2d(16, 32, conv.kernel_size, conv.stride, conv.padding, conv.dilation, padding_mode=conv.padding_mode)
    with torch.no_grad():
        ref.weight.copy_(sparse.dense_weight())
        ref.bias.copy_(sparse.bias)
    x = torch.randn(2, 16, 9, 11)
    assert torch.allclose(sparse(x), ref(x), atol=1e-5)


def test_depthwise_grouped_and_mha_out_proj_are_reported():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 32, 1)
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
            self.gc = nn.Conv2d(32, 32, 3, padding=1, groups=4)
            self.b = nn.Conv2d(32, 128, 1)
            self.attn = nn.MultiheadAttention(128, 4, batch_first=True)
            self.c = nn.Linear(128, 128)

    skipped = dict(sparsify(Net(), 0.75, keep_first_last=False).skipped)
    assert skipped["dw"] == "depthwise conv (groups=32)" and skipped["gc"] == "grouped conv (groups=4)"
    assert "MultiheadAttention" in skipped["attn.out_proj"]


def test_tied_head_is_skipped_and_stays_tied():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(256, 64)
            self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64))
            self.head = nn.Linear(64, 256, bias=False)
            self.head.weight = self.emb.weight

    lm = LM()
    before = count_parameters(lm)
    report = sparsify(lm, 0.75, keep_first_last=False)
    assert dict(report.skipped)["head"].startswith("tied weight (shared with emb)")
    assert lm.head.weight is lm.emb.weight
    assert report.params_before == before and report.params_after == count_parameters(lm) < before


def test_traps():
    def net():
        return nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 128), nn.Linear(128, 128), nn.Linear(128, 10))

    model = net()
    report = sparsify(model, 0.75, exclude="2")  # one name, not the characters of a string
    assert [r.name for r in report.layers] == ["1"] and dict(report.skipped)["2"] == "excluded"
    square = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128))
    sparsify(square, 0.75, keep_first_last=False)
    with pytest.warns(UserWarning, match=r"nothing left to convert \(2 layers are already sparse\)"):
        again = sparsify(square, 0.75, keep_first_last=False)
    assert not again.layers and again.params_after == again.params_before
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['blok'\].*valid: \['block'"):
        sparsify(net(), 0.75, blok=(1, 16))
    with pytest.warns(UserWarning, match=r"'\*mlp\*' matches no"):
        sparsify(net(), 0.75, exclude="*mlp*")
    with pytest.raises(ValueError, match="on_infeasible"):
        sparsify(net(), 0.75, on_infeasible="maybe")


def test_submodules_are_attributes():
    code = "import rbgp, sys; assert rbgp.nn.RBGPLinear and rbgp.patterns.RBGP4 and 'nn' in dir(rbgp); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_six_large_layers_hold_little_more_than_their_values():
    """Six 4096x4096 layers at 0.9: the process grows by at most 1.3x the bytes of their values
    (no dense mask is kept), measured as resident memory in a fresh interpreter."""
    code = textwrap.dedent("""
        import gc, os
        from rbgp.nn import RBGPLinear
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        RBGPLinear(256, 256, 0.9)
        gc.collect(); r0 = rss()
        layers = [RBGPLinear(4096, 4096, 0.9, seed=i) for i in range(6)]
        gc.collect(); r1 = rss()
        values = sum(l.values.numel() * l.values.element_size() for l in layers)
        print(values, r1 - r0)
    """)
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc to read resident memory")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    values, grown = map(int, out.stdout.split())
    assert grown <= 1.3 * values, f"{grown / 1e6:.1f} MB held for {values / 1e6:.1f} MB of values"


def test_layout_moves_with_the_layer():
    layer = RBGPLinear(128, 64, 0.75).to(torch.float64)
    moved = layer.to("meta")
    assert all(t.device.type == "meta" for t in moved.layout.buffers.values())
    assert set(layer.state_dict()) == {"values", "bias", "structure_id"}
