"""Training small row groups on the CPU: the grouped product against the dense product of the masked weight.

Linear layers of the sizes a small transformer has (256 to 1024 wide) at several row-group sizes and
densities, forward and backward (gradients for the input and the values) on 2048 rows (16 sequences of
128 tokens), fp32, 2 threads: the grouped path (batched GEMMs on the micro-blocks), the dense product
of the masked weight (`rbgp.ops.reference_linear`), and `nn.Linear`, interleaved (medians). Which one
an RBGP layer takes in training is `rbgp.ops.dispatch.trains_masked_dense`.

    python benchmarks/train_small_groups.py   # -> benchmarks/train_small_groups.{json,md}
"""

from __future__ import annotations

import datetime
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import rbgp.ops.dispatch as dispatch
from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text
from rbgp.nn import RBGPLinear
from rbgp.patterns import RBGP4

HERE = Path(__file__).resolve().parent
ROWS, ROUNDS = 2048, 9
CASES = [  # (in, out, sparsity, group_rows)
    (256, 1024, 0.5, 4), (256, 1024, 0.9, 8), (1024, 256, 0.75, 8), (256, 256, 0.9, 4),
    (256, 1024, 0.9, 16), (1024, 1024, 0.9, 16), (256, 1024, 0.5, 32), (1024, 1024, 0.75, 32),
    (1024, 1024, 0.9, 32), (256, 1024, 0.5, 64), (1024, 1024, 0.75, 128),
]


def main() -> None:
    torch.manual_seed(0)
    decide, rows = dispatch.trains_masked_dense, []
    for inp, out, sparsity, group_rows in CASES:
        layer = RBGPLinear(inp, out, sparsity, pattern=RBGP4(group_rows=group_rows, block=(1, 8)))
        dense = nn.Linear(inp, out)
        x = torch.randn(ROWS, inp, requires_grad=True)
        chosen = decide(x, layer.values, layer.sparse_weight.layout)

        def forced(masked: bool):
            def run() -> None:
                dispatch.trains_masked_dense = lambda *a: masked
                try:
                    layer(x).sum().backward()
                finally:
                    dispatch.trains_masked_dense = decide
            return run

        times: dict[str, list[float]] = {"grouped": [], "masked dense": [], "nn.Linear": []}
        fns = {"grouped": forced(False), "masked dense": forced(True), "nn.Linear": lambda: dense(x).sum().backward()}
        for _ in range(ROUNDS):
            for name, fn in fns.items():
                fn()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append({"in": inp, "out": out, "sparsity": sparsity, "rows_per_group": layer.values.shape[1],
                     "density": layer.density, "ms": ms, "chosen": "masked dense" if chosen else "grouped"})
        print(rows[-1], flush=True)
    data = {"command": "python benchmarks/train_small_groups.py", "date": datetime.date.today().isoformat(),
            "machine": machine(), "rows": ROWS, "rounds": ROUNDS, "cases": rows}
    write_json(HERE / "train_small_groups.json", data)
    lines = [
        "# Training small row groups on the CPU: grouped product against the masked dense weight",
        "",
        f"`{data['command']}`, {data['date']}, {data['machine']}; forward + backward on {ROWS} rows, fp32, "
        f"medians of {ROUNDS} interleaved rounds. \"taken\": what an RBGP layer runs in training "
        "(`rbgp.ops.dispatch.trains_masked_dense`).",
        "",
        "| in x out | rows per group | density | grouped ms | masked dense ms | nn.Linear ms | taken |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['in']}x{r['out']} | {r['rows_per_group']} | {r['density']:.3f} | {r['ms']['grouped']:.1f} | "
          f"{r['ms']['masked dense']:.1f} | {r['ms']['nn.Linear']:.1f} | {r['chosen']} |" for r in rows),
    ]
    write_text(HERE / "train_small_groups.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
