"""Kernel tuning on a GPU: each RBGP kernel timed alone against the cuBLAS GEMM of the same dense layer,
for kernel variants (tile-config lists) and planner variants (micro-block width), all in one run.

    PYTHONPATH=src python3 benchmarks/gpu_tune.py [--out benchmarks/gpu-tune.json] [--variants base,wide]

Prints one table row per (case, variant, kernel): median ms, the RBGP kernel's speedup over the
dense GEMM, that speedup times the density (1.0 = the ideal 1/density), and the autotuner's choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from rbgp.ops import LayoutTensors
from rbgp.ops import triton_launch as L
from rbgp.patterns import RBGP4

# extra tile configs over the launcher's lists: (tile0, tile1, tile2, warps, stages)
WIDE = {
    "fwd": [(128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (256, 128, 64, 8, 3), (128, 256, 64, 8, 3),
            (64, 128, 64, 4, 4), (128, 64, 128, 4, 3), (128, 64, 64, 4, 5), (64, 64, 128, 4, 4),
            (256, 64, 64, 8, 3), (256, 32, 64, 8, 3), (256, 16, 64, 4, 3), (128, 32, 128, 4, 3),
            (128, 16, 128, 4, 3)],
    "values": [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
               (128, 256, 64, 8, 3), (64, 256, 64, 8, 3), (16, 128, 128, 4, 3), (16, 256, 64, 4, 3),
               (32, 128, 64, 4, 4)],
    "input": [(256, 16, 64, 4, 3), (256, 16, 128, 8, 3), (128, 16, 128, 4, 3), (128, 32, 128, 4, 3),
              (64, 16, 128, 4, 4), (256, 32, 64, 8, 3), (128, 64, 64, 4, 3), (256, 64, 64, 8, 3),
              (256, 128, 64, 8, 3)],
}
BASE = {"fwd": L._FWD_TILES, "values": L._VALUES_TILES, "input": L._INPUT_TILES}


def tuners(extra: bool) -> dict:
    """Autotuned kernels over the launcher's lists, plus WIDE when `extra`."""
    lists = [BASE[k] + (WIDE[k] if extra else []) for k in ("fwd", "values", "input")]
    return dict(zip(("fwd", "values", "input"), L.autotuned(*lists)))


def use(t: dict) -> None:
    L._fwd, L._bwd_values, L._bwd_input = t["fwd"], t["values"], t["input"]


def bench(fn) -> float:
    return float(do_bench(fn, warmup=20, rep=60, return_mode="median"))


def cases() -> list[tuple[str, int, int, int, float, dict]]:
    """(label, rows, out, in, density, planner kwargs)."""
    out = []
    for n, b, d in ((4096, 4096, 1 / 4), (4096, 4096, 1 / 8), (4096, 4096, 1 / 16), (8192, 8192, 1 / 16)):
        out.append((f"linear {n} b{b} d=1/{round(1 / d)}", b, n, n, d, {}))
    for n, b, d in ((4096, 4096, 1 / 8), (4096, 4096, 1 / 16)):
        for bw in (32, 64):
            out.append((f"linear {n} b{b} d=1/{round(1 / d)} block 1x{bw}", b, n, n, d, {"block": (1, bw)}))
    for model, ci, co, hw in (("vgg", 64, 64, 32), ("vgg", 256, 256, 8), ("vgg", 512, 512, 4), ("wrn", 128, 128, 16)):
        out.append((f"{model} conv {ci}->{co} {hw}px b128 d=0.1", 128 * hw * hw, co, ci * 9, 0.1, {"tol": 0.03}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/gpu-tune.json")
    ap.add_argument("--variants", default="base,wide")
    args = ap.parse_args()
    dtype = torch.bfloat16
    variants = {v: tuners(v == "wide") for v in args.variants.split(",")}
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    for label, n, out_f, in_f, density, kw in cases():
        try:
            mask = RBGP4(**kw).build((out_f, in_f), 1 - density, 0)
        except ValueError as e:
            print(f"{label}: no plan ({e})", flush=True)
            continue
        lay = LayoutTensors.from_layout(mask.layout, "cuda")
        g = torch.Generator("cuda").manual_seed(0)
        x = torch.randn(n, in_f, device="cuda", generator=g).to(dtype)
        dy = torch.randn(n, out_f, device="cuda", generator=g).to(dtype)
        w = torch.randn(out_f, in_f, device="cuda", generator=g).to(dtype)
        v = torch.randn(lay.values_shape, device="cuda", generator=g).to(dtype)
        dense = {"fwd": bench(lambda: torch.nn.functional.linear(x, w)),
                 "input": bench(lambda: dy @ w), "values": bench(lambda: dy.t() @ x)}
        fns = {"fwd": lambda: L.grouped_forward(x, v, lay.row_index, lay.col_blocks, lay.block_width), "input": lambda: L.grouped_grad_input(dy, v, lay.row_index, lay.col_entries, lay.block_width, in_f),
               "values": lambda: L.grouped_grad_values(dy, x, lay.row_index, lay.col_blocks, lay.block_width)}
        shape = dict(zip(("G", "R", "K"), lay.values_shape), BW=lay.block_width, D=lay.col_entries.shape[1])
        for vname, t in variants.items():
            use(t)
            for kern, fn in fns.items():
                fn()
                ms = bench(fn)
                best = t[kern].best_config
                cfg = {**best.kwargs, "warps": best.num_warps, "stages": best.num_stages}
                sp = dense[kern] / ms
                row = dict(case=label, variant=vname, kernel=kern, ms=ms, dense_ms=dense[kern], speedup=sp,
                           x_ideal=sp * mask.density, density=mask.density, config=cfg, **shape)
                rows.append(row)
                print(f"{label:42s} {vname:5s} {kern:6s} {ms:8.4f} ms  dense {dense[kern]:8.4f}  {sp:6.2f}x  "
                      f"x_ideal {sp * mask.density:5.2f}  {shape}  {cfg}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                              "triton": triton.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
