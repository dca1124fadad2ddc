"""`rbgp.sparsify(model, 0.9)` with default arguments on models we did not write; one markdown table of
what was converted and what was left dense (and why), as quoted in the README.

    python benchmarks/models_tried.py            # writes benchmarks/models_tried.md

transformers models come from tiny configs (random init, nothing downloaded). Shapes that RBGP4
cannot plan at exactly 0.9 take the nearest feasible sparsity (the default on_infeasible="nearest");
the table gives the range of sparsities achieved and how many layers took the nearest one.
"""

from __future__ import annotations

import datetime
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from rbgp.nn import sparsify
from rbgp.experiments.models import build_model


def _hf_models() -> dict[str, nn.Module]:
    import transformers as t

    small = dict(vocab_size=1000, max_position_embeddings=64)
    return {
        "GPT-2 (transformers, 2 layers, d=128)": t.GPT2LMHeadModel(t.GPT2Config(
            vocab_size=1000, n_positions=64, n_embd=128, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
        "BERT (transformers, 2 layers, d=128)": t.BertForMaskedLM(t.BertConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, **small)),
        "LLaMA (transformers, 2 layers, d=128)": t.LlamaForCausalLM(t.LlamaConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=512, **small)),
        "BERT for sequence classification": t.BertForSequenceClassification(t.BertConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, num_labels=3,
            **small)),
        "GPT-2, vocab 50257, untied head (keep_first_last=False)": t.GPT2LMHeadModel(t.GPT2Config(
            vocab_size=50257, n_positions=64, n_embd=128, n_layer=1, n_head=4, tie_word_embeddings=False)),
        "LLaMA, intermediate_size=688": t.LlamaForCausalLM(t.LlamaConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=688, **small)),
        "Mixtral (MoE, 2 layers, d=128, 4 experts)": t.MixtralForCausalLM(t.MixtralConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=512, num_local_experts=4, num_experts_per_tok=2, **small)),
        "Qwen2-MoE (2 layers, d=128, 4 experts + shared)": t.Qwen2MoeForCausalLM(t.Qwen2MoeConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=512, moe_intermediate_size=256, shared_expert_intermediate_size=256, num_experts=4,
            num_experts_per_tok=2, **small)),
        "Whisper (1+1 layers, d=128)": t.WhisperForConditionalGeneration(t.WhisperConfig(
            vocab_size=1000, d_model=128, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, num_mel_bins=80,
            max_source_positions=64, max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1)),
        "T5 (2+2 layers, d=128)": t.T5ForConditionalGeneration(t.T5Config(
            vocab_size=1000, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4)),
        "ViT (2 layers, d=128)": t.ViTForImageClassification(t.ViTConfig(
            image_size=32, patch_size=4, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=512, num_labels=10)),
    }


class LSTMLanguageModel(nn.Module):
    """Embedding, a 2-layer LSTM and a linear head: most of its parameters are recurrent weights."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 256)
        self.lstm = nn.LSTM(256, 512, num_layers=2, batch_first=True)
        self.proj = nn.Linear(512, 512)
        self.head = nn.Linear(512, 1000)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(self.lstm(self.embed(ids))[0])))


def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    out = {}
    try:
        out.update(_hf_models())
    except ImportError:
        print("transformers not installed: its models are left out")
    enc = nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024, batch_first=True)
    out["nn.TransformerEncoder (2 layers, d=256)"] = nn.TransformerEncoder(enc, 2, enable_nested_tensor=False)
    for name, label in (("vgg19", "VGG19-bn (CIFAR)"), ("resnet18", "ResNet-18 (CIFAR)"),
                        ("wrn40_4", "WRN-40-4 (CIFAR)")):
        out[label] = build_model(name, num_classes=10, in_channels=3)
    out["nn.Transformer (1+1 layers, d=256)"] = nn.Transformer(256, 4, 1, 1, 1024, batch_first=True)
    out["LSTM language model (2 layers, 512)"] = LSTMLanguageModel()
    out["MobileNet-style block (depthwise + pointwise)"] = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 128, 1),
        nn.Conv2d(128, 128, 3, padding="same", padding_mode="reflect"), nn.Conv2d(128, 10, 1))
    return out


def _reason_kind(why: str) -> str:
    return why.split(":")[0].split(" (")[0]


def main() -> None:
    rows = ["| model | converted | sparsity achieved | left dense (count by reason) | params before | after |",
            "|---|---|---|---|---|---|"]  # every parameter of 2+ dimensions is converted or counted in "left dense"
    for label, model in models().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = sparsify(model, 0.9, keep_first_last="keep_first_last=False" not in label)
        kinds = Counter(_reason_kind(why) for _, why in report.skipped)
        converted = Counter(type(m).__name__ for m in model.modules()
                            if type(m).__name__ in ("RBGPLinear", "RBGPConv2d", "RBGPConv1d"))
        conv_text = ", ".join(f"{n} {k}" for k, n in converted.items()) or "none"
        dense_text = "; ".join(f"{k}: {n}" for k, n in kinds.items()) or "none"
        achieved = [r.sparsity for r in report.layers]
        nearest = sum(bool(r.note) for r in report.layers)
        span = f"{min(achieved):.3f}-{max(achieved):.3f}" if achieved else ""
        span += f" ({nearest} nearest)" if nearest else ""
        rows.append(f"| {label} | {conv_text} | {span} | {dense_text} | {report.params_before:,} | "
                    f"{report.params_after:,} |")
    text = (f"Command: `python benchmarks/models_tried.py` (rbgp.sparsify(model, 0.9), other arguments default), "
            f"2-core development machine, {datetime.date.today().isoformat()}\n\n" + "\n".join(rows) + "\n")
    path = Path(__file__).with_name("models_tried.md")
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
