"""Where the time of the linear path goes at density 1/16 (4096 x 4096, batch 256, forward, CPU fp32).

Times, interleaved in one run (medians), the whole RBGP forward, the dense GEMM, and the pieces of the
grouped path alone: the input transpose to feature-major (free when the input comes from another
RBGP layer, whose output is a transposed view of a feature-major buffer, also timed), the column gather, the batched GEMM on
pre-gathered inputs, and the group-major -> row-order output copy; plus an N-major variant (gather
whole 16-column micro-blocks from the untransposed input, batched GEMM with strided operands writing
the output in place, no transpose and no reorder). `per_ideal` = (dense / 16) / time.

    python benchmarks/linear_fixed_costs.py   # writes benchmarks/linear_fixed_costs.{json,md}
"""

from __future__ import annotations

import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from rbgp.files import write_json, write_text
from rbgp.nn import RBGPLinear
from rbgp.ops.grouped import feature_major

OUT, IN, BATCH, DENSITY, ROUNDS = 4096, 4096, 256, 1 / 16, 31


def main() -> None:
    torch.manual_seed(0)
    layer = RBGPLinear(IN, OUT, sparsity=1 - DENSITY, bias=False).eval()
    x, w = torch.randn(BATCH, IN), torch.randn(OUT, IN)
    lay, vals = layer.layout, layer.values.detach().contiguous()
    g, r, k = vals.shape
    bw, blocks = lay.block_width, lay.col_blocks.long().reshape(-1)
    cols = lay.col_index.reshape(-1)
    xt = feature_major(x)
    x_fm = xt.t()  # what a previous RBGP layer hands on: the (N, in) view of a feature-major buffer
    xg = xt.index_select(0, cols).view(g, k, BATCH)
    yg = torch.bmm(vals, xg)
    progression = torch.equal(lay.row_index, torch.arange(g)[:, None] + g * torch.arange(r)[None])

    def n_major() -> torch.Tensor:
        xn = x.view(BATCH, -1, bw).index_select(1, blocks).view(BATCH, g, k)
        yt = torch.empty(OUT, BATCH)
        torch.bmm(vals, xn.permute(1, 2, 0), out=yt.view(r, g, BATCH).transpose(0, 1))  # rows g + G*r
        return yt.t()

    with torch.no_grad():
        ref = layer(x)
    assert progression and torch.allclose(n_major(), ref, atol=1e-3, rtol=1e-3)
    assert torch.allclose(layer(x_fm), ref)
    fns = {
        "dense GEMM": lambda: x @ w.t(),
        "RBGP forward (today)": lambda: layer(x),
        "RBGP forward, input from a previous RBGP layer": lambda: layer(x_fm),
        "  input transpose": lambda: feature_major(x),
        "  column gather (feature-major)": lambda: xt.index_select(0, cols),
        "  batched GEMM alone": lambda: torch.bmm(vals, xg),
        "  output row reorder": lambda: yg.view(g * r, BATCH).index_select(0, lay.row_order),
        "N-major variant": n_major,
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for i in range(ROUNDS + 3):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if i >= 3:
                    times[name].append(time.perf_counter() - t0)
    med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    ideal = med["dense GEMM"] * DENSITY
    rows = [{"what": name, "ms": med[name], "per_ideal": ideal / med[name]} for name in fns]
    data = {"command": "python benchmarks/linear_fixed_costs.py", "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "shape": [OUT, IN], "batch": BATCH, "density": DENSITY, "groups": g, "rows_per_group": r,
            "cols_per_group": k, "rounds": ROUNDS, "ideal_ms": ideal, "rows": rows}
    here = Path(__file__).parent
    write_json(here / "linear_fixed_costs.json", data)
    lines = [f"# Linear {OUT}x{IN}, batch {BATCH}, density 1/16, forward: where the time goes",
             "", f"`{data['command']}`, {data['date']}, {data['machine']}; medians of {ROUNDS} interleaved rounds; "
             f"ideal = dense / 16 = {ideal:.2f} ms; {g} groups of {r} rows x {k} columns.", "",
             "| what | ms | ideal / time |", "|---|---|---|"]
    lines += [f"| {x['what'].strip()}{' (piece)' if x['what'].startswith('  ') else ''} | {x['ms']:.2f} | "
              f"{x['per_ideal']:.2f} |" for x in rows]
    write_text(here / "linear_fixed_costs.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
