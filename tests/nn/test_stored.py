"""Weights stored in bf16 or int8 for inference: RBGPLinear values and the dense layers a model keeps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rbgp
from rbgp.nn import RBGPLinear, StoredLinear
from rbgp.ops import native


@pytest.mark.parametrize("batch", [1, 4, 40])
def test_values_stored_in_bf16_compute_in_fp32(batch):

    torch.manual_seed(0)
    model = nn.Sequential(RBGPLinear(64, 256, 0.75), nn.ReLU(), RBGPLinear(256, 32, 0.75))
    x = torch.randn(batch, 64)
    with torch.no_grad():
        ref = model(x)
        assert rbgp.store_values_(model, torch.bfloat16) == 2
        assert model[0].values.dtype == torch.bfloat16 and model[0].bias.dtype == torch.float32
        y = model(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    # exactly the fp32 product of the rounded values
    widened = nn.Sequential(RBGPLinear(64, 256, 0.75), nn.ReLU(), RBGPLinear(256, 32, 0.75))
    widened.load_state_dict(model.state_dict())  # fp32 layers take the bf16 values, widened exactly
    with torch.no_grad():
        torch.testing.assert_close(y, widened(x), rtol=1e-5, atol=1e-5)
    model(x).sum().backward()  # the autograd path runs too (gradients in the values' dtype)
    assert model[0].values.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        rbgp.store_values_(model, torch.float16)


@pytest.mark.parametrize("batch", [1, 4, 17, 40])
def test_values_stored_in_int8_compute_in_fp32(batch):
    """int8 values with one scale per row: the exact fp32 product of the dequantised values, on the
    native kernel (small batches) and the torch path alike; error within half a scale step per weight."""
    from rbgp.ops import quantize_rows

    torch.manual_seed(0)
    model = nn.Sequential(RBGPLinear(64, 256, 0.75), nn.ReLU(), RBGPLinear(256, 40, 0.75))
    x = torch.randn(batch, 64)
    with torch.no_grad():
        ref = model(x)
        weights = [m.dense_weight() for m in (model[0], model[2])]
        assert rbgp.store_values_(model, torch.int8) == 2
        layer = model[0]
        assert layer.values.dtype == torch.int8 and not layer.values.requires_grad
        assert layer.value_scales.shape == layer.values.shape[:2] and layer.values.abs().max() == 127
        for w, m in zip(weights, (model[0], model[2])):
            step = m.value_scales.max().item()
            assert (m.dense_weight() - w).abs().max().item() <= step / 2 + 1e-7
        y = model(x)
        dequantised = nn.Sequential(RBGPLinear(64, 256, 0.75), nn.ReLU(), RBGPLinear(256, 40, 0.75))
        for src, dst in zip((model[0], model[2]), (dequantised[0], dequantised[2])):
            dst.values.copy_(src.sparse_weight.float_values())
            dst.bias.copy_(src.bias)
        torch.testing.assert_close(y, dequantised(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
        torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias), rtol=1e-5, atol=1e-5)
        state = model.state_dict()  # int8 values and their scales round-trip through a state dict
        assert state["0.value_scales"].dtype == torch.float32
        copy = nn.Sequential(RBGPLinear(64, 256, 0.75), nn.ReLU(), RBGPLinear(256, 40, 0.75))
        rbgp.store_values_(copy, torch.int8)
        copy.load_state_dict(state)
        torch.testing.assert_close(copy(x), y, rtol=0, atol=0)
        assert rbgp.store_values_(model, torch.float32) == 2  # back to trainable fp32 values
        assert model[0].values.requires_grad and not hasattr(model[0], "value_scales")
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_rows(torch.tensor([[[1.0, float("nan")]]]))



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
@pytest.mark.parametrize("batch", [1, 5, 16, 17, 40])
def test_stored_linear_is_the_widened_weight(dtype, batch):
    """fp32 out from fp32 in: exactly F.linear with the widened weight, on the native kernel (small
    batches) and F.linear alike; leading dims kept; no gradient to the weight, one to the input."""
    torch.manual_seed(0)
    linear = nn.Linear(48, 37)
    layer = StoredLinear(linear, dtype)
    assert layer.values.dtype == dtype and not layer.values.requires_grad
    assert (layer.value_scales is not None) == (dtype == torch.int8)
    x = torch.randn(batch, 3, 48)
    w = layer.weight
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (batch, 3, 37)
    torch.testing.assert_close(y, F.linear(x, w, layer.bias), rtol=1e-5, atol=1e-5)
    step = 2**-8 if dtype == torch.bfloat16 else 0.5 / 127
    assert ((w - linear.weight).abs() / linear.weight.abs().amax(1, keepdim=True)).max() <= step
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()  # a gradient wanted: F.linear, to the input only
    assert xg.grad is not None and layer.values.grad is None
    back = layer.to_linear()
    assert type(back) is nn.Linear
    torch.testing.assert_close(back.weight, w)
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.randn(2, 47))
    with pytest.raises(ValueError, match="dtype must be torch.bfloat16 or torch.int8"):
        StoredLinear(linear, torch.float16)


@pytest.mark.skipif(not native.available(), reason="no C compiler to build the native kernel")
def test_stored_linear_runs_the_native_kernel(monkeypatch):
    calls = []
    dense = native.dense_small
    monkeypatch.setattr(native, "dense_small", lambda *a: calls.append(a[0].shape[0]) or dense(*a))
    layer = StoredLinear(nn.Linear(32, 24), torch.int8)
    with torch.inference_mode():
        layer(torch.randn(native.MAX_BATCH, 32))
        layer(torch.randn(native.MAX_BATCH + 1, 32))
    assert calls == [native.MAX_BATCH]


def test_dense_layers_of_a_transformers_llama():
    """A tiny LLaMA (random init, no download): its sparse projections and its dense head stored in int8
    give the logits within the quantisation error; fp32 brings plain nn.Linear heads back."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=97, max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    rbgp.sparsify(model, 0.75)
    ids = torch.randint(0, 97, (2, 9))
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        sparse = sum(isinstance(m, RBGPLinear) for m in model.modules())
        dense = sum(type(m) is nn.Linear for m in model.modules())  # the head, and layers left dense
        assert rbgp.store_values_(model, torch.int8, dense_layers=True) == sparse + dense
        assert isinstance(model.lm_head, StoredLinear) and model.lm_head.values.dtype == torch.int8
        got = model(input_ids=ids).logits
        assert (got - ref).abs().max() <= 0.05 * ref.abs().max()
        out = model.generate(input_ids=ids[:1], max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 12)
        assert rbgp.store_values_(model, torch.float32, dense_layers=True) == sparse + dense
        assert type(model.lm_head) is nn.Linear
        assert (model(input_ids=ids).logits - got).abs().max() <= 1e-4 * ref.abs().max()


def test_dense_layers_leave_what_reads_its_weight_directly():
    """nn.MultiheadAttention reads its out_proj's weight itself: that (an nn.Linear subclass) stays; the
    encoder layer's eval fast path reads linear1/linear2.weight, the widened weights."""
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    x = torch.randn(2, 5, 32)
    with torch.inference_mode():
        ref = model(x)
        assert rbgp.store_values_(model, torch.bfloat16, dense_layers=True) == 4  # two FFN linears per layer
        assert not isinstance(model.layers[0].self_attn.out_proj, StoredLinear)
        assert isinstance(model.layers[0].linear1, StoredLinear)
        torch.testing.assert_close(model(x), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_dense_layers_untie_a_gpt2_head():
    """GPT-2 ties its head to the token embedding: the head is stored in int8, the embedding keeps its
    fp32 weight, and generation runs."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=101, n_positions=32)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    embedding = model.transformer.wte.weight.detach().clone()
    ids = torch.randint(0, 101, (1, 7))
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        rbgp.store_values_(model, torch.int8, dense_layers=True)
        assert isinstance(model.lm_head, StoredLinear)
        assert torch.equal(model.transformer.wte.weight, embedding)
        assert (model(input_ids=ids).logits - ref).abs().max() <= 0.05 * ref.abs().max()
        assert model.generate(input_ids=ids, max_new_tokens=2, do_sample=False, pad_token_id=0).shape == (1, 9)
