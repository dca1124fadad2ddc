"""MoE experts converted: transformers' fused experts split into one linear per expert, each expert its own
RBGP structure, outputs equal to the densified (fused again) model, save/load, calibration, exclusion."""

import warnings

import pytest
import torch

import rbgp
from rbgp.nn import RBGPLinear, densify, sparsify
from rbgp.nn.experts import SplitExperts, split_problem

T = pytest.importorskip("transformers")


def _mixtral():
    config = T.MixtralConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    return T.MixtralForCausalLM, config


def _qwen2_moe():
    config = T.Qwen2MoeConfig(vocab_size=64, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                              shared_expert_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)
    return T.Qwen2MoeForCausalLM, config


def _qwen3_moe():
    config = T.Qwen3MoeConfig(vocab_size=64, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              num_experts=4, num_experts_per_tok=2)
    return T.Qwen3MoeForCausalLM, config


MODELS = [_mixtral, _qwen2_moe, _qwen3_moe]


def _model(build):
    cls, config = build()
    torch.manual_seed(0)
    return cls, cls(config).eval()


def _experts(model):
    return [m for m in model.modules() if isinstance(m, SplitExperts)]


@pytest.mark.parametrize("build", MODELS, ids=lambda f: f.__name__[1:])
def test_split_experts_compute_what_the_fused_ones_do(build):
    _, model = _model(build)
    fused = [(n, m) for n, m in model.named_modules() if split_problem(m) is None]
    assert len(fused) == 2
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        for name, m in fused:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, SplitExperts(m))
        torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)
        back = _experts(model)[0].fuse()
        assert type(back) is type(fused[0][1]) and torch.equal(back.gate_up_proj, fused[0][1].gate_up_proj)


@pytest.mark.parametrize("build", MODELS, ids=lambda f: f.__name__[1:])
def test_experts_converted_equal_densified_and_round_trip(build, tmp_path):
    cls, model = _model(build)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sparsify(model, 0.75)
    experts = _experts(model)
    assert len(experts) == 2 and all(isinstance(m, RBGPLinear) for e in experts for m in (*e.gate_up, *e.down))
    first = experts[0]
    assert not torch.equal(first.gate_up[0].col_index, first.gate_up[1].col_index)  # each expert its own structure
    names = {r.name for r in report.layers}
    assert {f"{p}.{i}" for p in ("gate_up", "down") for i in range(4)} <= {n.rsplit("experts.", 1)[-1] for n in names}
    assert not any("experts" in name for name, _ in report.skipped)
    ids = torch.randint(0, 64, (3, 11))
    with torch.no_grad():
        out = model(input_ids=ids).logits
        dense = densify(model, inplace=False)
        assert not _experts(dense) and not any(isinstance(m, RBGPLinear) for m in dense.modules())
        torch.testing.assert_close(dense(input_ids=ids).logits, out, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    again = rbgp.from_pretrained(cls, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, out, rtol=0, atol=0)


def test_excluded_experts_stay_fused_and_are_reported():
    _, model = _model(_mixtral)
    fused = model.model.layers[0].mlp.experts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sparsify(model, 0.75, exclude="*.experts.*")
    assert model.model.layers[0].mlp.experts is fused and not _experts(model)
    skipped = dict(report.skipped)
    assert skipped["model.layers.0.mlp.experts.gate_up_proj"] == "MoE experts: excluded"
    assert skipped["model.layers.0.mlp.gate"] == "MoE router (kept dense by role)"


def test_a_failed_conversion_puts_the_fused_experts_back():
    _, model = _model(_mixtral)
    fused = model.model.layers[1].mlp.experts
    with pytest.raises(ValueError, match="a calibration batch must be"):
        sparsify(model, 0.75, calibration=["text"])  # refused at the first forward, after the experts were split
    assert model.model.layers[1].mlp.experts is fused


def test_calibrated_conversion_fits_each_expert_to_its_tokens():
    _, model = _model(_mixtral)
    calibration = [{"input_ids": torch.randint(0, 64, (4, 16))} for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sparsify(model, 0.5, calibration=calibration)
    errors = {r.name: r.output_error for r in report.layers if ".experts." in r.name}
    assert len(errors) == 16 and all(e is not None and 0 <= e < 1 for e in errors.values())


def test_unsupported_layouts_are_named():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(2, 8, 4))
            self.down_proj = torch.nn.Parameter(torch.zeros(2, 4, 4))
            self.act_fn = torch.nn.SiLU()
            self.is_transposed = True

    assert "layout flags ['is_transposed']" in split_problem(Odd())
    with pytest.raises(ValueError, match="cannot split Odd"):
        SplitExperts(Odd())
