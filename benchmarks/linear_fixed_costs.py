"""Where the time of the linear path goes at density 1/16 (4096 x 4096, batches 256 and 64, forward, CPU fp32).

Times, interleaved in one run (medians; a new random order every round), the dense GEMM and the RBGP
forward: on a row-major input (what a layer gets; the native kernel's wide tiles where its AVX2 build
runs, else the torch path of `rbgp.ops.grouped`), on the torch path's older variant (transpose the
input to feature-major, then gather whole rows), on the transposed view of a feature-major buffer (what
RBGP layers handed on before their outputs became contiguous), on a layer whose layout `sparsify`
fitted to dense weights (its default init="magnitude" relabels rows and columns one by one: no
micro-blocks) and on a layer converted with calibration data (aligned micro-blocks of 16, rows in
data order, so its outputs are gathered back into row order); then the torch path's pieces (it runs
where the native kernel does not: no AVX2 build, or a gradient wanted): the micro-block gather
(FBGEMM's embedding kernel, and the index_select it replaced), the transpose and row gather of the
older variant, the batched GEMM alone, and the group-major -> row-order output copy (and the
index_select it replaced). `per_ideal` = (dense / 16) / time. The allocator is tuned
(`rbgp.tune_cpu_allocator`), as `rbgp bench` does. All this in PROCESSES fresh processes (ratios move
from process to process on a shared VM); the tables give each ratio's min / median / max.

    python benchmarks/linear_fixed_costs.py   # writes benchmarks/linear_fixed_costs.{json,md}
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

import rbgp.ops.grouped as grouped
import rbgp.nn.rbgp_layers as layers
import rbgp.ops.dispatch as dispatch
from rbgp.allocator import tune_cpu_allocator
from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text
from rbgp.nn import RBGPLinear, sparsify

OUT, IN, BATCHES, DENSITY, ROUNDS, PROCESSES = 4096, 4096, (256, 64), 1 / 16, 31, 5
CHILD_ENV = "RBGP_LINEAR_FIXED_COSTS_CHILD"


@contextlib.contextmanager
def _torch_path(transpose_first: bool = False):
    """The torch path (the native kernel off), optionally as it was before the micro-block gather:
    transpose, then gather whole rows."""
    eager, applies, width = dispatch.eager_linear, dispatch.native_applies, grouped.ROW_GATHER_MIN_WIDTH
    planned = layers.planned_linear
    dispatch.eager_linear, layers.planned_linear = (lambda *a: None), (lambda *a: None)
    dispatch.native_applies = lambda *a, **k: False
    if transpose_first:
        grouped.ROW_GATHER_MIN_WIDTH = 1 << 30
    try:
        yield
    finally:
        dispatch.eager_linear, dispatch.native_applies, grouped.ROW_GATHER_MIN_WIDTH = eager, applies, width
        layers.planned_linear = planned


def _on_torch_path(layer: RBGPLinear, x: torch.Tensor, transpose_first: bool = False) -> torch.Tensor:
    with _torch_path(transpose_first):
        return layer(x)


def _interleave(yg: torch.Tensor) -> torch.Tensor:
    """Group-major (G, R, N) outputs into row order, row g + r * G, as the path writes them."""
    g, r, n = yg.shape
    yt = yg.new_empty(r, g, n)
    yt.copy_(yg.transpose(0, 1))
    return yt.view(g * r, n)


def time_batch(layer: RBGPLinear, fitted: RBGPLinear, calibrated: RBGPLinear, batch: int) -> dict:
    x, w = torch.randn(batch, IN), torch.randn(OUT, IN)
    lay, vals = layer.layout, layer.values.detach().contiguous()
    g, r, k = vals.shape
    bw = lay.block_width
    cols = lay.col_index.reshape(-1)
    xt = grouped.feature_major(x)
    x_fm = xt.t()  # what RBGP layers handed on before contiguous outputs: the (N, in) view of a feature-major buffer
    xg = xt.index_select(0, cols).view(g, k, batch)
    yg = torch.bmm(vals, xg)
    blocks = x.view(-1, bw)
    index = (torch.arange(batch, dtype=torch.int32)[:, None] * (IN // bw) + lay.col_blocks.reshape(1, -1)).reshape(-1)
    with torch.no_grad():
        ref = layer(x)
        assert torch.allclose(_on_torch_path(layer, x, transpose_first=True), ref, atol=1e-4, rtol=1e-4)
        assert torch.allclose(_on_torch_path(layer, x), ref, atol=1e-4, rtol=1e-4)
        assert torch.allclose(layer(x_fm), ref, atol=1e-4, rtol=1e-4)
        assert torch.allclose(_interleave(yg).t(), ref, atol=1e-4, rtol=1e-4)
    fns = {
        "dense GEMM": lambda: x @ w.t(),
        "RBGP forward, row-major input": lambda: layer(x),
        "RBGP forward, row-major input, torch path": lambda: _on_torch_path(layer, x),
        "RBGP forward, row-major input, torch path, transpose first (older variant)":
            lambda: _on_torch_path(layer, x, transpose_first=True),
        "RBGP forward, transposed view of a feature-major input": lambda: layer(x_fm),
        "RBGP forward, row-major input, layout fitted to dense weights (sparsify's default init)": lambda: fitted(x),
        "RBGP forward, row-major input, layout fitted with calibration data (sparsify(..., calibration=...))":
            lambda: calibrated(x),
        "  micro-block gather (row-major input)": lambda: grouped.gather_rows(blocks, index),
        "  micro-block gather with index_select (before 2026-12-04)": lambda: blocks.index_select(0, index),
        "  input transpose (older path)": lambda: grouped.feature_major(x),
        "  row gather (feature-major input)": lambda: xt.index_select(0, cols),
        "  batched GEMM alone": lambda: torch.bmm(vals, xg),
        "  outputs into row order (strided copy of the interleaved rows)": lambda: _interleave(yg),
        "  outputs into row order by index_select (before 2026-12-04)":
            lambda: yg.view(g * r, batch).index_select(0, lay.row_order),
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    with torch.no_grad():
        for i in range(ROUNDS + 3):
            random.Random(i).shuffle(order)  # whatever runs after the dense GEMM finds a cold cache: share that
            for name in order:
                t0 = time.perf_counter()
                fns[name]()
                if i >= 3:
                    times[name].append(time.perf_counter() - t0)
    med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    ideal = med["dense GEMM"] * DENSITY
    return {"batch": batch, "ideal_ms": ideal,
            "rows": [{"what": name, "ms": med[name], "per_ideal": ideal / med[name]} for name in fns]}


def measure() -> dict:
    """One process's timings of every batch (what a child process prints)."""
    tuned = tune_cpu_allocator()
    torch.manual_seed(0)
    layer = RBGPLinear(IN, OUT, sparsity=1 - DENSITY, bias=False).eval()
    fitted = torch.nn.Sequential(torch.nn.Linear(IN, OUT, bias=False))
    sparsify(fitted, 1 - DENSITY, keep_first_last=False)  # init="magnitude": rows and columns relabelled one by one
    calibrated = torch.nn.Sequential(torch.nn.Linear(IN, OUT, bias=False))
    mix = torch.randn(IN, IN) / IN ** 0.5  # correlated calibration inputs: aligned micro-blocks, fitted rows
    sparsify(calibrated, 1 - DENSITY, keep_first_last=False, calibration=[torch.randn(512, IN) @ mix for _ in range(2)])
    g, r, k = layer.values.shape
    return {"allocator": "tuned" if tuned else "default", "groups": g, "rows_per_group": r, "cols_per_group": k,
            "block_width": layer.layout.block_width, "fitted_block_width": fitted[0].layout.block_width,
            "calibrated_block_width": calibrated[0].layout.block_width,
            "runs": [time_batch(layer, fitted[0].eval(), calibrated[0].eval(), b) for b in BATCHES]}


def main() -> None:
    if os.environ.get(CHILD_ENV):
        print(json.dumps(measure()))
        return
    children = []
    for i in range(PROCESSES):  # one process says little on a shared VM: its ratios move from process to process
        out = subprocess.run([sys.executable, __file__], env={**os.environ, CHILD_ENV: "1"}, check=True,
                             capture_output=True, text=True).stdout
        children.append(json.loads(out.strip().splitlines()[-1]))
        print(f"process {i}: " + ", ".join(f"batch {run['batch']}: {run['rows'][1]['per_ideal']:.2f} of ideal"
                                           for run in children[-1]["runs"]), flush=True)
    first = children[0]
    runs = []
    for j, batch in enumerate(BATCHES):
        per = [c["runs"][j] for c in children]
        rows = []
        for i, row in enumerate(per[0]["rows"]):
            ratios = sorted(p["rows"][i]["per_ideal"] for p in per)
            rows.append({"what": row["what"], "ms": statistics.median(p["rows"][i]["ms"] for p in per),
                         "per_ideal": {"min": ratios[0], "median": statistics.median(ratios), "max": ratios[-1]}})
        runs.append({"batch": batch, "ideal_ms": statistics.median(p["ideal_ms"] for p in per), "rows": rows,
                     "processes": per})
    data = {"command": "python benchmarks/linear_fixed_costs.py", "date": date.today().isoformat(),
            "machine": machine(),
            "allocator": first["allocator"], "shape": [OUT, IN], "density": DENSITY, "groups": first["groups"],
            "rows_per_group": first["rows_per_group"], "cols_per_group": first["cols_per_group"],
            "block_width": first["block_width"], "rounds": ROUNDS, "processes": PROCESSES, "runs": runs}
    here = Path(__file__).parent
    write_json(here / "linear_fixed_costs.json", data)
    lines = [f"# Linear {OUT}x{IN}, density 1/16, forward: where the time goes",
             "", f"`{data['command']}`, {data['date']}, {data['machine']}, allocator {data['allocator']}; "
             f"{PROCESSES} fresh processes, each the medians of {ROUNDS} interleaved rounds; ideal = dense / 16 "
             f"in the same process; {data['groups']} groups of {data['rows_per_group']} rows x "
             f"{data['cols_per_group']} columns (micro-blocks of {data['block_width']} columns)."]
    for run in runs:
        lines += ["", f"Batch {run['batch']}, ideal {run['ideal_ms']:.2f} ms (median over the processes):", "",
                  "| what | ms (median) | ideal / time: min / median / max over the processes |", "|---|---|---|"]
        lines += [f"| {x['what'].strip()}{' (piece)' if x['what'].startswith('  ') else ''} | {x['ms']:.2f} | "
                  f"{x['per_ideal']['min']:.2f} / {x['per_ideal']['median']:.2f} / {x['per_ideal']['max']:.2f} |"
                  for x in run["rows"]]
    write_text(here / "linear_fixed_costs.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
