"""The target program for Nsight Compute: each RBGP kernel (autotuned first, outside the profiled
window) and the cuBLAS GEMM of the same dense layer, launched once each between cudaProfilerStart/Stop.

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy ... \
        env PYTHONPATH=src python3 benchmarks/gpu_profile.py
"""

from __future__ import annotations

import torch

from rbgp.ops import LayoutTensors
from rbgp.ops import triton_launch as L
from rbgp.patterns import RBGP4

CASES = [("linear 4096 b4096 d=1/8", 4096, 4096, 4096, 1 / 8, {}),
         ("vgg conv 64->64 32px b128", 128 * 32 * 32, 64, 576, 0.1, {"tol": 0.03}),
         ("vgg conv 512->512 4px b128", 128 * 16, 512, 4608, 0.1, {"tol": 0.03})]


def main() -> None:
    dtype = torch.bfloat16
    runs = []
    for label, n, out_f, in_f, density, kw in CASES:
        mask = RBGP4(**kw).build((out_f, in_f), 1 - density, 0)
        lay = LayoutTensors.from_layout(mask.layout, "cuda")
        x = torch.randn(n, in_f, device="cuda", dtype=dtype)
        dy = torch.randn(n, out_f, device="cuda", dtype=dtype)
        w = torch.randn(out_f, in_f, device="cuda", dtype=dtype)
        v = torch.randn(lay.values_shape, device="cuda", dtype=dtype)
        fns = [lambda: L.grouped_forward(x, v, lay.row_index, lay.col_blocks, lay.block_width), lambda: L.grouped_grad_input(dy, v, lay.row_index, lay.col_entries, lay.block_width, in_f),
               lambda: L.grouped_grad_values(dy, x, lay.row_index, lay.col_blocks, lay.block_width), lambda: torch.nn.functional.linear(x, w)]
        for f in fns:  # autotune and compile outside the profiled window
            f()
        print(label, "values", tuple(lay.values_shape), "BW", lay.block_width, "D", lay.col_entries.shape[1],
              flush=True)
        runs.append(fns)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for fns in runs:
        for f in fns:
            f()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
