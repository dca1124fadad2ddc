"""The sparsify report accounts for every parameter: converted weights plus everything left dense (with
its reason) make the whole model, on models whose big weights are not nn.Linear."""

import warnings

import pytest
import torch
from torch import nn

from rbgp.nn import count_parameters, sparsify


class LSTMLanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True)
        self.proj = nn.Linear(64, 64)
        self.head = nn.Linear(64, 50)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(self.lstm(self.embed(ids))[0])))


def _mixtral() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return transformers.MixtralForCausalLM(config)


MODELS = {
    "lstm": (LSTMLanguageModel, "lstm.weight_hh_l1", "recurrent"),
    "nn.Transformer": (
        lambda: nn.Transformer(32, 4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64),
        "decoder.layers.0.multihead_attn.in_proj_weight",
        "attention function",
    ),
    "mixtral": (_mixtral, "model.layers.1.mlp.gate", "MoE router"),
}


@pytest.mark.parametrize("which", MODELS)
def test_every_parameter_is_accounted_for(which):
    build, example, reason = MODELS[which]
    torch.manual_seed(0)
    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sparsify(model, 0.75, keep_first_last=False, inplace=False)
    converted = {r.name for r in report.layers}
    skipped = dict(report.skipped)
    assert converted, "something must be converted for the accounting to mean anything"
    def is_converted(name: str) -> bool:  # a layer's weight, or fused MoE experts now split and converted
        owner, _, leaf = name.rpartition(".")
        experts = leaf in ("gate_up_proj", "down_proj") and any(c.startswith(f"{owner}.") for c in converted)
        return (owner in converted and leaf == "weight") or experts

    for name, p in model.named_parameters():
        owner = name.rpartition(".")[0]
        if p.dim() >= 2:
            assert is_converted(name) or name in skipped or owner in skipped, f"{name} is not in the report"
    assert reason in skipped[example]
    dense = sum(p.numel() for n, p in model.named_parameters() if not is_converted(n))
    assert report.dense_params == dense
    assert sum(r.params_before for r in report.layers) + dense == report.params_before == count_parameters(model)
    assert report.params_after == count_parameters(report.model)
    assert 0 < report.bytes_after < report.bytes_before
    if which == "mixtral":  # the experts, 83% of a Mixtral, are converted: the model shrinks with them
        assert report.params_after < 0.5 * report.params_before
    headline = report.table()
    assert f"{report.params_before:,} before" in headline and "fewer" in headline and "MB" in headline


def test_report_json_has_the_totals():
    report = sparsify(LSTMLanguageModel(), 0.75, keep_first_last=False, inplace=False)
    facts = report.to_dict()
    assert facts["dense_params"] == report.dense_params > 0
    assert facts["bytes_before"] > facts["bytes_after"] > 0
