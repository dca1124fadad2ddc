"""Where a decode step's time goes: the LLaMA-shaped decoder of `rbgp bench --suite decode` at sparsity
0.9, greedy decode at batch 1, with fp32 values and with int8 values plus an int8 head.

The native kernel calls (`rbgp.ops.native._call`, `dense_small`) and the sparse layers' forwards are
wrapped with timers for one `generate` of NEW tokens; per token: the sparse products (the kernel
calls), rbgp's Python dispatch (the layers' forwards minus their kernel calls), the output head (the
int8 `StoredLinear`'s kernel; for fp32 values the dense head is part of "the rest"), and the rest of
the step (transformers' attention over the cache, norms, rotary embeddings, sampling). The timers
add about a microsecond per call. Repeated REPEATS times (medians).

    python benchmarks/decode_breakdown.py   # writes benchmarks/decode_breakdown.{json,md}
"""

from __future__ import annotations

import copy
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from rbgp.experiments.bench.decode import build
from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text
from rbgp.nn import RBGPLinear, sparsify, store_values_
from rbgp.ops import native

SPARSITY, NEW, REPEATS = 0.9, 32, 5
HERE = Path(__file__).resolve().parent


class Timers:
    """Accumulated seconds of the wrapped calls."""

    def __init__(self) -> None:
        self.seconds = {"kernel": 0.0, "head": 0.0, "layers": 0.0}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t

        return timed


def one_step_breakdown(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Milliseconds per decoded token, by part (the prefill of `ids` subtracted as a 1-token generate)."""
    timers = Timers()
    saved = native._call, native.dense_small, RBGPLinear.forward
    native._call = timers.wrap("kernel", native._call)
    native.dense_small = timers.wrap("head", native.dense_small)
    RBGPLinear.forward = timers.wrap("layers", RBGPLinear.forward)  # type: ignore[method-assign]
    try:
        generate = model.generate  # type: ignore[operator]
        args = {"do_sample": False, "pad_token_id": 0}
        t = time.perf_counter()
        generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, **args)
        first = time.perf_counter() - t
        before = dict(timers.seconds)
        t = time.perf_counter()
        generate(input_ids=ids, max_new_tokens=NEW + 1, min_new_tokens=NEW + 1, **args)
        total = time.perf_counter() - t - first
        spent = {k: v - 2 * before[k] for k, v in timers.seconds.items()}  # the second call minus one prefill
    finally:
        native._call, native.dense_small, RBGPLinear.forward = saved  # type: ignore[method-assign]
    ms = lambda s: 1e3 * s / NEW
    return {
        "step": ms(total),
        "sparse products": ms(spent["kernel"]),
        "rbgp dispatch": ms(spent["layers"] - spent["kernel"]),
        "int8 head": ms(spent["head"]),
        "the rest": ms(total - spent["layers"] - spent["head"]),
    }


def main() -> None:
    dense = build(quick=False)
    sparsify(dense, SPARSITY, init="kaiming", distribution="uniform")
    models = {"fp32 values": dense, "int8 values and head": copy.deepcopy(dense)}
    store_values_(models["int8 values and head"], torch.int8, dense_layers=True)
    ids = torch.randint(0, 8000, (1, 8), generator=torch.Generator().manual_seed(1))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            one_step_breakdown(model, ids)  # warm-up
        for _ in range(REPEATS):
            for name, model in models.items():
                runs[name].append(one_step_breakdown(model, ids))
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    data = {
        "command": "python benchmarks/decode_breakdown.py",
        "date": date.today().isoformat(),
        "machine": machine(),
        "sparsity": SPARSITY,
        "new_tokens": NEW,
        "repeats": REPEATS,
        "ms_per_token": medians,
    }
    write_json(HERE / "decode_breakdown.json", data)
    parts = list(next(iter(medians.values())))
    lines = [
        f"Milliseconds per decoded token (batch 1) of the LLaMA-shaped decoder of `rbgp bench --suite decode` "
        f"at sparsity {SPARSITY:g}, by part. `{data['command']}`, {data['machine']}, {data['date']}; medians of "
        f'{REPEATS} generates of {NEW} tokens. "the rest": transformers\' own steps (and, with fp32 values, '
        "the dense fp32 head).",
        "",
        "| values | " + " | ".join(parts) + " |",
        "|---|" + "---|" * len(parts),
    ]
    lines += [f"| {name} | " + " | ".join(f"{m[p]:.2f}" for p in parts) + " |" for name, m in medians.items()]
    write_text(HERE / "decode_breakdown.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
