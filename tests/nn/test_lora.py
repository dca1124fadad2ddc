"""PEFT LoRA on RBGP layers: forward equal to base + adapter, training moves only the adapters, adapter
save/load, merge that keeps the structure, and the refusals."""

import importlib.util
import warnings

import pytest
import torch

from rbgp.nn import RBGPLinear, sparsify

transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("peft") is None:
    pytest.skip("peft is not installed (pip install peft)", allow_module_level=True)


@pytest.fixture(autouse=True, scope="module")
def lora():
    """peft imported when the tests run, not when they are collected: importing it imports triton, and
    the Triton tests need TRITON_INTERPRET=1 set (at their collection) before triton is first imported."""
    global LoraConfig, get_peft_model, RBGPLoraLinear, load_lora, lora_targets, register_lora
    from peft import LoraConfig, get_peft_model

    from rbgp.nn.lora import RBGPLoraLinear, load_lora, lora_targets, register_lora


def _sparse_llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsify(model, 0.75, seed=seed)
    return model


def _lora(model, **kwargs):
    return get_peft_model(model, register_lora(LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets(model),
                                                          **kwargs)))


def test_targets_are_every_projection_but_the_head():
    model = _sparse_llama()
    names = lora_targets(model)
    assert len(names) == 14 and "lm_head" not in names
    assert all(isinstance(model.get_submodule(n), RBGPLinear) for n in names)


def test_forward_is_base_plus_adapter_and_training_moves_only_adapters():
    model = _sparse_llama()
    peft_model = _lora(model)
    wrapped = peft_model.base_model.model.model.layers[0].mlp.down_proj
    assert isinstance(wrapped, RBGPLoraLinear) and isinstance(wrapped.base_layer, RBGPLinear)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)  # lora_B starts at 0: give the adapters something to say
    x = torch.randn(3, 5, 128)
    expect = wrapped.base_layer(x) + 2.0 * wrapped.lora_B["default"](wrapped.lora_A["default"](x))
    torch.testing.assert_close(wrapped(x), expect, rtol=1e-5, atol=1e-5)

    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (4, 16))
    for _ in range(3):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, trained[n]) for n, p in peft_model.named_parameters() if n in trained)


def test_adapter_save_and_load_round_trip(tmp_path):
    peft_model = _lora(_sparse_llama())
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    ids = torch.randint(0, 64, (2, 12))
    expect = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path)
    again = load_lora(_sparse_llama(), tmp_path)  # the same sparsify arguments: the same sparse base
    torch.testing.assert_close(again(input_ids=ids).logits, expect)


def test_merge_keeps_the_structure_and_unmerge_restores():
    peft_model = _lora(_sparse_llama())
    layer = peft_model.base_model.model.model.layers[1].self_attn.q_proj
    with torch.no_grad():
        layer.lora_A["default"].weight.normal_(0, 0.1)
        layer.lora_B["default"].weight.normal_(0, 0.1)
    base = layer.base_layer
    before = base.dense_matrix().detach().clone()
    delta = layer.get_delta_weight("default")
    with pytest.warns(UserWarning, match="off the mask"):
        layer.merge()
    assert isinstance(base, RBGPLinear)
    torch.testing.assert_close(base.dense_matrix(), before + delta * base.mask, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(base.dense_matrix(), before, rtol=1e-5, atol=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = peft_model.merge_and_unload()
    assert isinstance(merged.model.layers[1].self_attn.q_proj, RBGPLinear)


def test_refusals():
    model = _sparse_llama()
    with pytest.raises(ValueError, match="DoRA"):
        _lora(model, use_dora=True)
    with pytest.raises(ValueError, match="fan_in_fan_out"):
        _lora(_sparse_llama(), fan_in_fan_out=True)
    with pytest.raises(TypeError, match="LoraConfig"):
        register_lora({"r": 4})
    with pytest.raises(ValueError, match="no linear layer"):
        lora_targets(torch.nn.Sequential(torch.nn.ReLU()))
