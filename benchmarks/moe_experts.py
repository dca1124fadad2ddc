"""MoE experts, dense (transformers' fused MixtralExperts) against the same experts converted by `sparsify`
(one RBGP structure per expert, `rbgp.nn.experts.SplitExperts`), forward, CPU fp32, inference mode.

A quarter-scale Mixtral block (hidden 1024, intermediate 3584, 8 experts, top-2 routing with random
router logits), at token counts of real use: decode of batch 1, 8 and 16 (one token each) and prefill of
1 x 128 and 4 x 128 tokens. Dense and sparse alternate within every round (a new random order each
round); medians of ROUNDS rounds. The experts are converted data-free at SPARSITY (the timing does not
depend on the values).

    python benchmarks/moe_experts.py   # -> benchmarks/moe_experts.{json,md,png}
"""

from __future__ import annotations

import copy
import random
import statistics
import time
import warnings
from datetime import date
from pathlib import Path

import torch

from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text
from rbgp.nn import sparsify

HIDDEN, INTERMEDIATE, EXPERTS, TOP_K, SPARSITY, ROUNDS = 1024, 3584, 8, 2, 0.9, 15
TOKENS = {"decode b1": 1, "decode b8": 8, "decode b16": 16, "prefill 1x128": 128, "prefill 4x128": 512}
HERE = Path(__file__).resolve().parent


def _experts() -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    config = MixtralConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_local_experts=EXPERTS,
                           num_experts_per_tok=TOP_K)
    torch.manual_seed(0)
    dense = MixtralExperts(config).eval()
    torch.nn.init.normal_(dense.gate_up_proj, std=0.02)
    torch.nn.init.normal_(dense.down_proj, std=0.02)
    holder = torch.nn.Sequential()
    holder.experts = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsify(holder, SPARSITY, init="kaiming", keep_first_last=False, distribution="uniform")
    return dense, holder.experts


def _routing(tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, HIDDEN, generator=g)
    logits = torch.randn(tokens, EXPERTS, generator=g)
    weights, index = torch.topk(logits.softmax(dim=-1), TOP_K, dim=-1)
    return x, index, weights / weights.sum(dim=-1, keepdim=True)


def _time(fn, args, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn(*args)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    dense, sparse = _experts()
    rows = []
    with torch.inference_mode():
        for label, tokens in TOKENS.items():
            args = _routing(tokens, seed=tokens)
            torch.testing.assert_close(sparse(*args), sparse(*args))  # warm-up, and deterministic
            dense(*args)
            repeat = max(1, 64 // tokens)
            times = {"dense": [], "rbgp": []}
            for _ in range(ROUNDS):
                order = list(times)
                random.shuffle(order)
                for which in order:
                    times[which].append(_time(dense if which == "dense" else sparse, args, repeat))
            d, s = statistics.median(times["dense"]), statistics.median(times["rbgp"])
            rows.append({"case": label, "tokens": tokens, "dense_us": d * 1e6, "rbgp_us": s * 1e6, "speedup": d / s})
            print(f"{label:>14}: dense {d * 1e6:9.0f} us  rbgp {s * 1e6:9.0f} us  {d / s:5.2f}x", flush=True)
    facts = {
        "command": "python benchmarks/moe_experts.py",
        "machine": machine(),
        "date": date.today().isoformat(),
        "shape": {"hidden": HIDDEN, "intermediate": INTERMEDIATE, "experts": EXPERTS, "top_k": TOP_K},
        "sparsity": SPARSITY,
        "ideal": 1 / (1 - SPARSITY),
        "rows": rows,
    }
    write_json(HERE / "moe_experts.json", facts)
    lines = [
        f"MoE experts forward, dense (fused `MixtralExperts`) vs converted at sparsity {SPARSITY} "
        f"(hidden {HIDDEN}, intermediate {INTERMEDIATE}, {EXPERTS} experts, top-{TOP_K}): `{facts['command']}`, "
        f"{facts['machine']}, {facts['date']}. Medians of {ROUNDS} interleaved rounds; ideal 1/density = "
        f"{facts['ideal']:.0f}x.",
        "",
        "| case | tokens | dense us | rbgp us | speedup |",
        "|---|---|---|---|---|",
        *(f"| {r['case']} | {r['tokens']} | {r['dense_us']:.0f} | {r['rbgp_us']:.0f} | {r['speedup']:.2f}x |" for r in rows),
    ]
    write_text(HERE / "moe_experts.md", "\n".join(lines) + "\n")
    _plot(rows, HERE / "moe_experts.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar([r["case"] for r in rows], [r["speedup"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("speedup over dense experts")
    ax.set_title(f"MoE experts at sparsity {SPARSITY}, CPU fp32")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
