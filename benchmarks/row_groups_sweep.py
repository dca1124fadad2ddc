"""How many row groups should a calibrated conversion use? The KJV GPT-2 converted at several group counts.

`rbgp.nn.reconstruct.MIN_GROUPS` sets the least number of row groups of a calibrated linear layer under
4096 rows (group_rows halved until there are that many). Every row of a group shares one input support,
so more groups fit the data better and leave smaller groups to the kernels. This converts the byte-level
GPT-2 of `calibrated_conversion.py` (`kjv_lm.train_lm("gpt2")`: trained once and cached under
`benchmarks/.cache/`) with calibration data at each group count and sparsity, no fine-tuning, next to
unstructured SparseGPT in the same run, and reports test bits per byte and conversion time.

    python benchmarks/row_groups_sweep.py   # -> benchmarks/row_groups_sweep.{json,md}
"""

from __future__ import annotations

import copy
import datetime
import time
from pathlib import Path

import kjv_lm
import torch

from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text
from rbgp.nn import reconstruct, sparsify
from rbgp.nn.oneshot import prune_oneshot

HERE = Path(__file__).resolve().parent
SPARSITIES, GROUPS, CALIBRATION = (0.5, 0.75), (32, 64, 128, 256), 64


def main() -> None:
    torch.manual_seed(0)
    model, facts = kjv_lm.train_lm("gpt2")
    train, test = kjv_lm.splits()
    evaluation = kjv_lm.test_windows(test)
    calibration = [{"input_ids": b} for b in kjv_lm.windows(train, CALIBRATION, seed=1).split(16)]
    default, rows = reconstruct.MIN_GROUPS, []
    for sparsity in SPARSITIES:
        reference = copy.deepcopy(model)
        prune_oneshot(reference, sparsity, calibration, "sparsegpt", None, targets="layer")
        sparsegpt = kjv_lm.bits_per_byte(reference, evaluation)
        for groups in GROUPS:
            converted = copy.deepcopy(model)
            reconstruct.MIN_GROUPS = groups
            try:
                t0 = time.perf_counter()
                report = sparsify(converted, sparsity, distribution="uniform", calibration=calibration)
                seconds = time.perf_counter() - t0
            finally:
                reconstruct.MIN_GROUPS = default
            rows.append({"sparsity": sparsity, "min_groups": groups, "default": groups == default,
                         "bits_per_byte": kjv_lm.bits_per_byte(converted, evaluation), "sparsegpt": sparsegpt,
                         "seconds": seconds, "rows_per_group": sorted({r.rows_per_group for r in report.layers if r.rows_per_group})})
            print(rows[-1], flush=True)
    data = {"command": "python benchmarks/row_groups_sweep.py", "date": datetime.date.today().isoformat(),
            "machine": machine(), "dense": kjv_lm.bits_per_byte(model, evaluation), "model": facts,
            "calibration_samples": CALIBRATION, "rows": rows}
    write_json(HERE / "row_groups_sweep.json", data)
    lines = [
        "# Calibrated GPT-2 (KJV, byte-level) at several row-group counts, no fine-tuning",
        "",
        f"`{data['command']}`, {data['date']}, {data['machine']}. Dense test {data['dense']:.4f} bits per byte; "
        f"{CALIBRATION} calibration sequences of {kjv_lm.SEQ} bytes; the 16 attention and MLP layers converted "
        "(256, 768 and 1024 rows). Gap: bits per byte above unstructured SparseGPT at the same sparsity, same run.",
        "",
        "| sparsity | least row groups | rows per group | bits per byte | SparseGPT | gap | conversion s |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['sparsity']} | {r['min_groups']}{' (default)' if r['default'] else ''} | "
          f"{', '.join(map(str, r['rows_per_group']))} | {r['bits_per_byte']:.4f} | {r['sparsegpt']:.4f} | "
          f"{r['bits_per_byte'] - r['sparsegpt']:+.4f} | {r['seconds']:.0f} |" for r in rows),
    ]
    write_text(HERE / "row_groups_sweep.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
