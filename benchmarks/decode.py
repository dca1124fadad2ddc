"""A LLaMA-shaped decoder on the CPU: prefill and greedy decode, dense against RBGP at 0.75 and 0.9.

The model (transformers' LlamaForCausalLM from a config, random init, nothing downloaded): hidden
2048, intermediate 5632, 4 layers, 16 query / 4 key-value heads, vocabulary 8000. RBGP: every
attention and MLP projection converted by `rbgp.sparsify(model, s, init="kaiming",
distribution="uniform")` (the output head stays dense, as sparsify keeps heads), with fp32 values and
with values stored in bf16 (`rbgp.store_values_`). Times under torch.inference_mode, fp32
activations: prefill of PROMPT tokens (one forward), and decode of NEW tokens at batch 1 and 8 with
the KV cache (`generate`, greedy, tokens per second). Dense and the sparse variants alternate within
every repeat (medians of REPEATS).

    python benchmarks/decode.py       # writes benchmarks/decode.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch

import rbgp
from rbgp.files import write_json

HERE = Path(__file__).resolve().parent
PROMPT, NEW = 256, 32


def build(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=16,
                         num_key_value_heads=4, vocab_size=8000, max_position_embeddings=1024)
    return LlamaForCausalLM(config).eval()


def variants(dense: torch.nn.Module, sparsities: list[float]) -> dict[str, torch.nn.Module]:
    models = {"dense": dense}
    for s in sparsities:
        sparse = copy.deepcopy(dense)
        rbgp.sparsify(sparse, s, init="kaiming", distribution="uniform")
        models[f"rbgp {s:g} fp32"] = sparse
        stored = copy.deepcopy(sparse)
        rbgp.store_values_(stored, torch.bfloat16)
        models[f"rbgp {s:g} bf16 values"] = stored
    return models


def prefill(model: torch.nn.Module, ids: torch.Tensor) -> None:
    model(input_ids=ids)


def decode(model: torch.nn.Module, ids: torch.Tensor) -> None:
    model.generate(input_ids=ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)


def run(sparsities: list[float], repeats: int) -> dict:
    models = variants(build(), sparsities)
    g = torch.Generator().manual_seed(1)
    cases = {"prefill 256": (prefill, torch.randint(0, 8000, (1, PROMPT), generator=g), PROMPT),
             "decode b1": (decode, torch.randint(0, 8000, (1, 8), generator=g), NEW),
             "decode b8": (decode, torch.randint(0, 8000, (8, 8), generator=g), 8 * NEW)}
    data = {"command": "python benchmarks/decode.py", "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "native_kernel": rbgp.ops.native.available(), "repeats": repeats, "results": []}
    with torch.inference_mode():
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
            row = {"case": case, "tokens": tokens, "seconds": med,
                   "tokens_per_s": {n: tokens / t for n, t in med.items()},
                   "speedup": {n: med["dense"] / t for n, t in med.items()}}
            data["results"].append(row)
            print(case, ", ".join(f"{n} {row['tokens_per_s'][n]:.1f} tok/s ({row['speedup'][n]:.2f}x)" for n in med),
                  flush=True)
    return data


def markdown(data: dict) -> str:
    names = list(data["results"][0]["seconds"])
    lines = [f"LLaMA-shaped decoder (hidden 2048, intermediate 5632, 4 layers, GQA 16/4, vocabulary 8000, random "
             f"init), fp32 activations, inference mode. `{data['command']}`, {data['machine']}, {data['date']}; "
             f"medians of {data['repeats']} alternating repeats; native kernel available: {data['native_kernel']}. "
             f"Tokens per second (speedup over dense).", "",
             "| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in data["results"]:
        cells = [f"{r['tokens_per_s'][n]:.1f} ({r['speedup'][n]:.2f}x)" for n in names]
        lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.75, 0.9])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=HERE / "decode", help="output stem")
    a = p.parse_args()
    data = run(a.sparsity, a.repeats)
    write_json(a.out.with_suffix(".json"), data)
    a.out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
