"""Single RBGP layers at the batch sizes of inference (1 to 256), forward, CPU, sparsity 0.9.

For three LLM-shaped layers built from a seed (5632x2048, 2048x5632, 4096x4096) and a 4096x4096 one
converted from a dense layer with calibration data ("fitted": `fitted_layer`), at batches 1, 4, 16, 64,
256, this times,
interleaved in one process (a new random order every round, medians), under torch.inference_mode:
dense `nn.Linear`, torch CSR and torch BSR (16x16 blocks, a random block mask at the same density)
on the same product, the RBGP layer as a user calls it (`rbgp.ops.native.batch_limit`: the native
kernel at every batch on the AVX2 build, its wide-batch tiles from `native.wide_from()` rows), the
torch path alone (what ran before the native kernel), the native kernel on fp32, bf16 and int8 values
(per-row scales) at every batch, on fp32 without its wide-batch tiles (one dot product per row and
sample at every batch, what ran before them), on fp32 with wide tiles of at most 4 rows (where the CPU
has AVX-512VL the kernel takes 8: `native.wide_rows`), and with 256-bit vectors only and wide tiles from
batch 24 (where the CPU has AVX-512VL the kernel puts 16 samples in one 512-bit register, `native.vector_bits`,
and takes its wide tiles from batch 8, `native.wide_from`).
`share of ideal` = speedup over dense x density (1.0 = the full 1/density).

    python benchmarks/small_batch.py      # writes benchmarks/small_batch.{json,md,png}
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import time
from pathlib import Path

import torch

from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json
from rbgp.nn import RBGPLinear, sparsify
from rbgp.ops import native
from rbgp.ops.grouped import grouped_forward

HERE = Path(__file__).resolve().parent
SHAPES = ((5632, 2048), (2048, 5632), (4096, 4096))  # (out, in)
BATCHES = (1, 4, 16, 64, 256)
SPARSITY = 0.9
FITTED = 4096


def fitted_layer(width: int) -> RBGPLinear:
    """A width x width layer converted from a dense one with calibration data (`sparsify(...,
    calibration=)`: its structure fitted to the weights and inputs, rows in no strided order), to time
    fitted layouts next to seed-built ones."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width, bias=False))
    sparsify(model, SPARSITY, calibration=[torch.randn(512, width)])
    return model[0]


def _bsr(out: int, inp: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(out // 16, inp // 16, generator=g) < density
    w = torch.randn(out, inp, generator=g) * blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)
    return w.to_sparse_bsr((16, 16))


def methods(layer: RBGPLinear, dense: torch.nn.Linear, csr: torch.Tensor, bsr: torch.Tensor, x: torch.Tensor) -> dict:
    values = layer.values.detach()
    scales = values.abs().amax(-1) / 127
    q = torch.round(values / scales[..., None].clamp_min(1e-30)).to(torch.int8)
    bf16 = values.bfloat16()
    layout = layer.layout
    xt = x.t().contiguous()
    return {
        "dense": lambda: dense(x),
        "csr": lambda: torch.sparse.mm(csr, xt),
        "bsr16": lambda: torch.sparse.mm(bsr, xt),
        "rbgp": lambda: layer(x),
        "rbgp torch path": lambda: grouped_forward(x, values, layout),
        "rbgp native fp32": lambda: native.grouped_small(x, values, layout),
        "rbgp native bf16": lambda: native.grouped_small(x, bf16, layout),
        "rbgp native int8": lambda: native.grouped_small(x, q, layout, scales),
        "rbgp native fp32, no wide tiles": lambda: _configured(x, values, layout, wide_from=1 << 62),
        "rbgp native fp32, 4-row wide tiles": lambda: _configured(x, values, layout, wide_rows=4),
        "rbgp native fp32, 256-bit wide tiles from batch 24": lambda: _configured(
            x, values, layout, vector_bits=256, wide_from=24
        ),
    }


def _configured(x: torch.Tensor, values: torch.Tensor, layout, **settings: int) -> torch.Tensor:
    """The native kernel with some of its settings (`native.wide_from`, `wide_rows`, `vector_bits`) changed
    for this call."""
    saved = {name: getattr(native, name)() for name in settings}
    for name, value in settings.items():
        getattr(native, name)(value)
    try:
        return native.grouped_small(x, values, layout)
    finally:
        for name, value in saved.items():
            getattr(native, name)(value)


def time_case(fns: dict, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
        f()
    for _ in range(rounds):
        order = list(fns)
        random.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def run(rounds: int) -> dict:
    torch.manual_seed(0)
    random.seed(0)
    data = {"command": f"python benchmarks/small_batch.py --rounds {rounds}", "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "native_available": native.available(), "native_isa": native.isa(), "wide_from": native.wide_from(),
            "wide_rows": native.wide_rows(), "vector_bits": native.vector_bits(),
            "sparsity": SPARSITY,
            "rounds": rounds, "results": []}
    cases = [(f"{out}x{inp}", out, inp, RBGPLinear(inp, out, SPARSITY, bias=False)) for out, inp in SHAPES]
    cases.append((f"{FITTED}x{FITTED} fitted", FITTED, FITTED, fitted_layer(FITTED)))
    with torch.inference_mode():
        for label, out, inp, layer in cases:
            dense = torch.nn.Linear(inp, out, bias=False)
            csr = layer.dense_weight().to_sparse_csr()
            bsr = _bsr(out, inp, layer.density, 0)
            for batch in BATCHES:
                us = time_case(methods(layer, dense, csr, bsr, torch.randn(batch, inp)), rounds)
                row = {"shape": label, "batch": batch, "density": layer.density, "us": us,
                       "speedup": {k: us["dense"] / v for k, v in us.items()}}
                row["share_of_ideal"] = {k: s * layer.density for k, s in row["speedup"].items()}
                data["results"].append(row)
                print(f"{label} b{batch}: " + ", ".join(f"{k} {v:.0f} us" for k, v in us.items()), flush=True)
    return data


def markdown(data: dict) -> str:
    names = list(data["results"][0]["us"])
    lines = [f"Single layers at sparsity {data['sparsity']} (density {data['results'][0]['density']:.4f}), forward, "
             f"inference mode, fp32 inputs. `{data['command']}`, {data['machine']}, {data['date']}; medians of "
             f"{data['rounds']} interleaved rounds. Speedup over dense, and in brackets the share of the ideal "
             f"1/density. \"rbgp\" is the layer as called (the native kernel's {data['native_isa']} build; with AVX2 "
             f"at every batch, its wide-batch tiles from batch {data['wide_from']}, up to {data.get('wide_rows', 4)} "
             f"rows high, of {data.get('vector_bits', 256)}-bit vectors).",
             "", "| layer | batch | dense us | " + " | ".join(names[1:]) + " |",
             "|---|---|---|" + "---|" * (len(names) - 1)]
    for r in data["results"]:
        cells = [f"{r['us'][k]:.0f} us, {r['speedup'][k]:.2f}x ({r['share_of_ideal'][k]:.2f})" for k in names[1:]]
        lines.append(f"| {r['shape']} | {r['batch']} | {r['us']['dense']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in data["results"]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), sharey=True)
    for ax, shape in zip(axes, shapes):
        rows = [r for r in data["results"] if r["shape"] == shape]
        for name in rows[0]["us"]:
            if name != "dense":
                ax.plot([r["batch"] for r in rows], [r["share_of_ideal"][name] for r in rows], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{shape}, sparsity {data['sparsity']}")
        ax.set_xlabel("batch")
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0].set_ylabel("share of ideal (speedup x density)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", type=Path, default=HERE / "small_batch", help="output stem")
    a = p.parse_args()
    data = run(a.rounds)
    write_json(a.out.with_suffix(".json"), data)
    a.out.with_suffix(".md").write_text(markdown(data))
    plot(data, a.out.with_suffix(".png"))
    print(markdown(data))


if __name__ == "__main__":
    main()
