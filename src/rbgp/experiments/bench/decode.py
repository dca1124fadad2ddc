"""`rbgp bench --suite decode`: a LLaMA-shaped decoder on the CPU, prefill and greedy decode, dense
against RBGP with fp32, bf16 and int8 values.

The model is transformers' LlamaForCausalLM from a config (random init, nothing downloaded): hidden
2048, intermediate 5632, 4 layers, 16 query / 4 key-value heads, vocabulary 8000 (`--quick`: a small
one, for a smoke run). RBGP: every attention and MLP projection converted by `rbgp.sparsify(model, s,
init="kaiming", distribution="uniform")` (the output head stays dense, as sparsify keeps heads), then
the values kept in fp32, bf16 or int8 with per-row scales, the dense head stored the same way
(`rbgp.store_values_(model, dtype, dense_layers=True)`). Timed under
torch.inference_mode with fp32 activations: the prefill of a PROMPT-token prompt (one forward) and
the greedy decode of NEW tokens at batch 1 and 8 with the KV cache (`generate`, tokens per second).
All variants alternate within every repeat (medians). The error of each variant against the fp32
sparse model is the largest difference of the prefill logits, relative to their largest magnitude.
"""

from __future__ import annotations

import copy
import datetime
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from rbgp.experiments.bench.timing import machine
from rbgp.files import save_figure
from rbgp.nn import sparsify, store_values_

PROMPT, NEW = 256, 32
FULL: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "vocab_size": 8000,
    "max_position_embeddings": 1024,
}
QUICK: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
}
VALUE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def build(quick: bool, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**(QUICK if quick else FULL))).eval()


def variants(dense: torch.nn.Module, sparsities: list[float]) -> dict[str, torch.nn.Module]:
    """dense, and for every sparsity the converted model with fp32, bf16 and int8 values."""
    models = {"dense": dense}
    for s in sparsities:
        sparse = copy.deepcopy(dense)
        sparsify(sparse, s, init="kaiming", distribution="uniform")
        for name, dtype in VALUE_DTYPES.items():
            stored = sparse if dtype == torch.float32 else copy.deepcopy(sparse)
            store_values_(stored, dtype, dense_layers=True)
            models[f"rbgp {s:g} {name}"] = stored
    return models


def _prefill(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def _decode(model: torch.nn.Module, ids: torch.Tensor) -> None:
    generate = cast("Callable[..., object]", model.generate)  # a transformers method, not a submodule
    generate(input_ids=ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)


def _errors(models: dict[str, torch.nn.Module], ids: torch.Tensor) -> dict[str, float]:
    """Largest prefill-logit difference against the same sparsity's fp32 model, relative to its peak."""
    out = {}
    for name, model in models.items():
        if name == "dense":
            continue
        ref = _prefill(models[name.rsplit(" ", 1)[0] + " fp32"], ids)
        out[name] = ((_prefill(model, ids) - ref).abs().max() / ref.abs().max()).item()
    return out


def run_decode_bench(
    sparsities: list[float], repeats: int, quick: bool, command: str, progress: Callable[[str], None] = print
) -> dict:
    """Time every variant on every case; returns the results as JSON-able data."""
    models = variants(build(quick), sparsities)
    vocab = (QUICK if quick else FULL)["vocab_size"]
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (1, PROMPT), generator=g)
    cases = {
        "prefill 256": (_prefill, prompt, PROMPT),
        "decode b1": (_decode, torch.randint(0, vocab, (1, 8), generator=g), NEW),
        "decode b8": (_decode, torch.randint(0, vocab, (8, 8), generator=g), 8 * NEW),
    }
    data: dict[str, Any] = {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "quick": quick,
        "machine": machine(),
        "native_kernel": _native_available(),
        "repeats": repeats,
        "results": [],
    }
    with torch.inference_mode():
        data["relative_error"] = _errors(models, prompt)
        for case, (fn, ids, tokens) in cases.items():
            times: dict[str, list[float]] = {name: [] for name in models}
            for m in models.values():
                fn(m, ids)  # warm-up
            for _ in range(repeats):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    fn(m, ids)
                    times[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(t) for name, t in times.items()}
            row: dict[str, Any] = {
                "case": case,
                "tokens": tokens,
                "seconds": med,
                "tokens_per_s": {n: tokens / t for n, t in med.items()},
                "speedup": {n: med["dense"] / t for n, t in med.items()},
            }
            data["results"].append(row)
            progress(f"{case}: " + ", ".join(f"{n} {row['speedup'][n]:.2f}x" for n in med))
    return data


def _native_available() -> bool:
    from rbgp.ops import native

    return native.available()


def decode_markdown(data: dict) -> str:
    names = list(data["results"][0]["seconds"])
    model = (
        "a small LLaMA (hidden 256, 2 layers; --quick)"
        if data["quick"]
        else ("LLaMA-shaped decoder (hidden 2048, intermediate 5632, 4 layers, GQA 16/4, vocabulary 8000, random init)")
    )
    lines = [
        f"{model}, fp32 activations, inference mode. `{data['command']}`, {data['machine']}, {data['date']}; "
        f"medians of {data['repeats']} alternating repeats; native kernel available: {data['native_kernel']}. "
        "Tokens per second (speedup over dense); then batch-1 decode against the fp32 sparse model of the "
        "same sparsity, and the largest prefill-logit error against it, relative to the logits' largest "
        "magnitude.",
        "",
        "| case | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in data["results"]:
        cells = [f"{r['tokens_per_s'][n]:.1f} ({r['speedup'][n]:.2f}x)" for n in names]
        lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    decode = next((r["tokens_per_s"] for r in data["results"] if r["case"] == "decode b1"), None)
    if decode is not None:
        ratios = [_over_fp32(n, decode) for n in names]
        lines.append("| decode b1 vs fp32 sparse | " + " | ".join(ratios) + " |")
    errors = data["relative_error"]
    lines.append(
        "| logit error vs fp32 sparse | "
        + " | ".join("-" if n not in errors else f"{errors[n]:.1e}" for n in names)
        + " |"
    )
    return "\n".join(lines) + "\n"


def _over_fp32(name: str, tokens_per_s: dict[str, float]) -> str:
    """`name`'s tokens/s over the fp32 variant of its sparsity ("-" for dense)."""
    fp32 = name.rsplit(" ", 1)[0] + " fp32"
    return "-" if name == "dense" or fp32 not in tokens_per_s else f"{tokens_per_s[name] / tokens_per_s[fp32]:.2f}x"


def plot_decode(data: dict, path: str | Path) -> None:
    """Grouped bars: speedup over dense per case, one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in data["results"][0]["seconds"] if n != "dense"]
    cases = [r["case"] for r in data["results"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [c + (i - (len(names) - 1) / 2) * width for c in range(len(cases))]
        ax.bar(xs, [r["speedup"][name] for r in data["results"]], width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(cases)), cases)
    ax.set_ylabel("speedup over dense")
    ax.set_title(f"{data['machine']}, {data['date']}", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
