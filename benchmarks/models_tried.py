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
from rbgp.train.models import build_model


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
    }


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
    out["MobileNet-style block (depthwise + pointwise)"] = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 128, 1),
        nn.Conv2d(128, 128, 3, padding="same", padding_mode="reflect"), nn.Conv2d(128, 10, 1))
    return out


def _reason_kind(why: str) -> str:
    return why.split(":")[0].split(" (")[0]


def main() -> None:
    rows = ["| model | converted | sparsity achieved | left dense (count by reason) | params before | after |",
            "|---|---|---|---|---|---|"]
    for label, model in models().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = sparsify(model, 0.9, keep_first_last="keep_first_last=False" not in label)
        kinds = Counter(_reason_kind(why) for _, why in report.skipped)
        converted = Counter(type(m).__name__ for m in model.modules()
                            if type(m).__name__ in ("RBGPLinear", "RBGPConv2d"))
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
