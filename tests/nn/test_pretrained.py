"""`rbgp.from_pretrained` and `load_state` follow transformers' own key conversions (ViT's renamed
attention, MoE experts written per expert) on tiny configs, and a key mismatch names its cause."""

import warnings

import pytest
import torch

import rbgp
from rbgp.nn import load_state, sparsify

T = pytest.importorskip("transformers")


def _vit():
    config = T.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, num_labels=3)
    return T.ViTForImageClassification, config, {"pixel_values": torch.randn(2, 3, 32, 32)}


def _mixtral():
    config = T.MixtralConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    return T.MixtralForCausalLM, config, {"input_ids": torch.randint(0, 64, (2, 9))}


def _qwen2_moe():
    config = T.Qwen2MoeConfig(vocab_size=64, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                              shared_expert_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)
    return T.Qwen2MoeForCausalLM, config, {"input_ids": torch.randint(0, 64, (2, 9))}


def _whisper():
    config = T.WhisperConfig(vocab_size=64, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                             decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                             max_source_positions=32, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                             eos_token_id=2, decoder_start_token_id=1)
    inputs = {"input_features": torch.randn(2, 16, 64), "decoder_input_ids": torch.randint(0, 64, (2, 5))}
    return T.WhisperForConditionalGeneration, config, inputs


def _t5():
    config = T.T5Config(vocab_size=64, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
    inputs = {"input_ids": torch.randint(0, 64, (2, 7)), "decoder_input_ids": torch.randint(0, 64, (2, 5))}
    return T.T5ForConditionalGeneration, config, inputs


def _llama():
    config = T.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    return T.LlamaForCausalLM, config, {"input_ids": torch.randint(0, 64, (2, 9))}


def _sparse(build, sparsity=0.75):
    cls, config, inputs = build()
    torch.manual_seed(0)
    model = cls(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsify(model, sparsity)
    return cls, model, inputs


@pytest.mark.parametrize("build", [_vit, _mixtral, _qwen2_moe, _whisper, _t5, _llama], ids=lambda f: f.__name__[1:])
def test_save_pretrained_then_from_pretrained(build, tmp_path):
    cls, model, inputs = _sparse(build)
    model.save_pretrained(tmp_path)
    again = rbgp.from_pretrained(cls, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    twin = _sparse(build)[1]  # load_state on a model built and sparsified by hand reads the same files
    load_state(twin, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(twin(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_mismatch_names_the_cause(tmp_path):
    _, model, _ = _sparse(_llama)
    model.save_pretrained(tmp_path)
    dense = _llama()[0](_llama()[1])
    with pytest.raises(ValueError, match="sparse on one side and dense on the other"):
        load_state(dense, tmp_path)
    with pytest.raises(ValueError, match="names do not match"):
        load_state(_sparse(_vit)[1], tmp_path)


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("sparsity"), "has no 'sparsity' field"),
    (lambda r: r.update(sparsity="0.5"), "field 'sparsity' must be float or int or a mapping, got '0.5'"),
    (lambda r: r.update(sparsity=True), "field 'sparsity' must be"),
    (lambda r: r.update(sparsity=1.5), r"does not rebuild the model: .*sparsity"),
    (lambda r: r.update(seed="0"), "field 'seed' must be int"),
    (lambda r: r.update(keep_first_last="no"), "field 'keep_first_last' must be bool"),
    (lambda r: r.update(exclude=5), "field 'exclude' must be list"),
    (lambda r: r.update(exclude=[5]), "must be a list of name patterns"),
    (lambda r: r.update(pattern_kwargs=[1]), "field 'pattern_kwargs' must be a mapping"),
    (lambda r: r.update(pattern_kwargs={"group_rows": "x" * 10000}), "does not rebuild the model"),
    (lambda r: r.update(color="red"), "unknown field 'color'"),
])
def test_a_bad_rbgp_entry_in_config_json_is_refused_by_field(tmp_path, change, message):
    import json

    _, model, _ = _sparse(_llama)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    change(config["rbgp"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as err:
        rbgp.from_pretrained(T.LlamaForCausalLM, tmp_path)
    assert "config.json's 'rbgp' entry" in str(err.value) and len(str(err.value)) < 1000


def test_hf_trainer_trains_saves_and_reloads(tmp_path):
    """transformers' Trainer on a sparsified model (gradient checkpointing on): the sparse values move,
    the structure stays, and the saved folder loads back with rbgp.from_pretrained."""
    pytest.importorskip("accelerate")
    cls, model, _ = _sparse(_llama)
    model.train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, 64, (8, 16))
    data = [{"input_ids": row, "labels": row} for row in ids]
    layer = model.model.layers[0].mlp.up_proj
    values, cols = layer.values.detach().clone(), layer.col_index.clone()
    args = T.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                               learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                               disable_tqdm=True, logging_strategy="no")
    T.Trainer(model=model, args=args, train_dataset=data).train()
    assert not torch.equal(layer.values, values) and torch.equal(layer.col_index, cols)
    model.save_pretrained(tmp_path / "saved")
    again = rbgp.from_pretrained(cls, tmp_path / "saved")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
