"""Time and memory of a calibrated conversion of one 4096x4096 linear layer: 256 calibration samples of 128
tokens (32,768 input rows), at sparsity 0.5, 0.75 and 0.9.

The inputs are random with correlated features (x = z @ (I + M)), since no trained 4096-wide model fits
on this machine; the time does not depend on the values. Reported per sparsity: the whole
`sparsify(model, s, calibration=...)` call and, of it, the Gram matrix (the forward passes with the
hook), then the peak resident memory it added.

    python benchmarks/conversion_time.py    # -> benchmarks/conversion_time.{json,md}
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import torch
from calibrated_conversion import PeakRSS
from torch import nn

from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text
from rbgp.nn import sparsify
from rbgp.nn.calibration import GramStats

HERE = Path(__file__).resolve().parent
SIZE, SAMPLES, TOKENS, BATCH = 4096, 256, 128, 16


def main() -> None:
    torch.manual_seed(0)
    mix = torch.eye(SIZE) + torch.randn(SIZE, SIZE) / SIZE ** 0.5
    batches = [torch.randn(BATCH, TOKENS, SIZE) @ mix for _ in range(SAMPLES // BATCH)]
    rows = []
    for sparsity in (0.9, 0.75, 0.5):
        model = nn.Sequential(nn.Linear(SIZE, SIZE))
        gram_seconds = [0.0]
        add = GramStats.add

        def timed(self, x, add=add):
            t0 = time.perf_counter()
            add(self, x)
            gram_seconds[0] += time.perf_counter() - t0

        GramStats.add = timed
        try:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                report = sparsify(model, sparsity, keep_first_last=False, calibration=batches)
                seconds = time.perf_counter() - t0
        finally:
            GramStats.add = add
        layer = report.layers[0]
        rows.append({"sparsity": sparsity, "seconds": seconds, "gram_seconds": gram_seconds[0],
                     "peak_added_mb": mem.added / 2 ** 20, "rows_per_group": layer.rows_per_group,
                     "block_width": model[0].block_width, "output_error": layer.output_error})
        print(rows[-1], flush=True)
    data = {"command": "python benchmarks/conversion_time.py", "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "layer": [SIZE, SIZE], "calibration": f"{SAMPLES} samples x {TOKENS} tokens", "rows": rows}
    write_json(HERE / "conversion_time.json", data)
    lines = [f"Calibrated conversion of one {SIZE}x{SIZE} linear layer, {data['calibration']}: `{data['command']}`, "
             f"{data['machine']}, {data['date']}.", "",
             "| sparsity | conversion s | of it: Gram matrix s | peak memory added MB | rows/group | block width |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['sparsity']:g} | {r['seconds']:.1f} | {r['gram_seconds']:.1f} | {r['peak_added_mb']:.0f} | "
              f"{r['rows_per_group']} | {r['block_width']} |" for r in rows]
    write_text(HERE / "conversion_time.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
