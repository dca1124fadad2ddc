"""How many row groups should a calibrated conversion use? The KJV GPT-2 converted at several group counts.

`rbgp.nn.reconstruct.MIN_GROUPS` sets the least number of row groups of a calibrated linear layer under
4096 rows (group_rows halved until there are that many). Every row of a group shares one input support,
so more groups fit the data better and leave smaller groups to the kernels. This converts the byte-level
GPT-2 of `calibrated_conversion.py` (`kjv_lm.train_lm("gpt2")`: trained once and cached under
`benchmarks/.cache/`) with calibration data at each group count and sparsity, no fine-tuning, next to
unstructured SparseGPT in the same run, and reports test bits per byte and conversion time.

The other side of the trade: smaller groups share each gathered input among fewer rows. The speed part
converts a 2048x2048 layer (random weights and calibration inputs) at each group count and times its
forward pass under `torch.inference_mode` at batches 1, 16 and 256 against dense `nn.Linear`,
interleaved in one process (medians of rounds).

    python benchmarks/row_groups_sweep.py                 # both parts -> benchmarks/row_groups_sweep.{json,md}
    python benchmarks/row_groups_sweep.py --part speed    # one part; the other is kept from the JSON
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import kjv_lm
import torch

from rbgp.experiments.bench.timing import machine, time_interleaved
from rbgp.files import write_json, write_text
from rbgp.nn import reconstruct, sparsify
from rbgp.nn.oneshot import prune_oneshot

HERE = Path(__file__).resolve().parent
SPARSITIES, GROUPS, CALIBRATION = (0.5, 0.75), (32, 64, 128, 256), 64
SPEED_WIDTH, SPEED_SPARSITIES, SPEED_BATCHES = 2048, (0.5, 0.9), (1, 16, 256)


@contextmanager
def least_groups(groups: int) -> Iterator[None]:
    """Calibrated conversions inside take at least `groups` row groups (`reconstruct.MIN_GROUPS`)."""
    default, reconstruct.MIN_GROUPS = reconstruct.MIN_GROUPS, groups
    try:
        yield
    finally:
        reconstruct.MIN_GROUPS = default


def accuracy() -> dict:
    """Bits per byte of the KJV GPT-2 converted at each group count and sparsity, with SparseGPT's."""
    torch.manual_seed(0)
    model, facts = kjv_lm.train_lm("gpt2")
    train, test = kjv_lm.splits()
    evaluation = kjv_lm.test_windows(test)
    calibration = [{"input_ids": b} for b in kjv_lm.windows(train, CALIBRATION, seed=1).split(16)]
    rows = []
    for sparsity in SPARSITIES:
        reference = copy.deepcopy(model)
        prune_oneshot(reference, sparsity, calibration, "sparsegpt", None, targets="layer")
        sparsegpt = kjv_lm.bits_per_byte(reference, evaluation)
        for groups in GROUPS:
            converted = copy.deepcopy(model)
            with least_groups(groups):
                t0 = time.perf_counter()
                report = sparsify(converted, sparsity, distribution="uniform", calibration=calibration)
                seconds = time.perf_counter() - t0
            rows.append({"sparsity": sparsity, "min_groups": groups, "sparsegpt": sparsegpt, "seconds": seconds,
                         "bits_per_byte": kjv_lm.bits_per_byte(converted, evaluation),
                         "rows_per_group": sorted({r.rows_per_group for r in report.layers if r.rows_per_group})})
            print(rows[-1], flush=True)
    return {"command": "python benchmarks/row_groups_sweep.py --part accuracy",
            "date": datetime.date.today().isoformat(), "machine": machine(),
            "dense": kjv_lm.bits_per_byte(model, evaluation), "model": facts,
            "calibration_samples": CALIBRATION, "rows": rows}


def converted_layer(groups: int, sparsity: float) -> torch.nn.Module:
    """A SPEED_WIDTH-square layer converted with calibration data at `groups` least row groups."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(SPEED_WIDTH, SPEED_WIDTH, bias=False))
    with least_groups(groups):
        sparsify(model, sparsity, calibration=[torch.randn(512, SPEED_WIDTH)])
    return model[0]


def speed(repeats: int = 30) -> dict:
    """Forward speedups over dense of a SPEED_WIDTH-square converted layer at each group count."""
    rows = []
    for sparsity in SPEED_SPARSITIES:
        dense = torch.nn.Linear(SPEED_WIDTH, SPEED_WIDTH, bias=False)
        layers = {groups: converted_layer(groups, sparsity) for groups in GROUPS}
        for batch in SPEED_BATCHES:
            x = torch.randn(batch, SPEED_WIDTH)
            fns = {"dense": lambda d=dense, x=x: d(x), **{str(g): (lambda m=m, x=x: m(x)) for g, m in layers.items()}}
            with torch.inference_mode():
                times = time_interleaved(fns, repeats=repeats, warmup=3)
            for groups, layer in layers.items():
                ms = times[str(groups)]["median_ms"]
                rows.append({"sparsity": sparsity, "batch": batch, "min_groups": groups, "ms": ms,
                             "rows_per_group": layer.layout.row_index.shape[1],
                             "dense_ms": times["dense"]["median_ms"], "speedup": times["dense"]["median_ms"] / ms})
                print(rows[-1], flush=True)
    return {"command": "python benchmarks/row_groups_sweep.py --part speed", "date": datetime.date.today().isoformat(),
            "machine": machine(), "rows": rows}


def markdown(data: dict) -> str:
    """Both parts as tables; the group count the library uses now is marked (default)."""
    default = lambda g: f"{g} (default)" if g == reconstruct.MIN_GROUPS else str(g)
    a, s = data["accuracy"], data["speed"]
    return "\n".join([
        "# Calibrated conversion at several row-group counts: accuracy (KJV GPT-2) and speed (2048x2048)",
        "",
        "## Accuracy, no fine-tuning",
        "",
        f"`{a['command']}`, {a['date']}, {a['machine']}. Dense test {a['dense']:.4f} bits per byte; "
        f"{a['calibration_samples']} calibration sequences of {kjv_lm.SEQ} bytes; the 16 attention and MLP "
        "layers converted (256, 768 and 1024 rows). Gap: bits per byte above unstructured SparseGPT at the same "
        "sparsity, same run.",
        "",
        "| sparsity | least row groups | rows per group | bits per byte | SparseGPT | gap | conversion s |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['sparsity']} | {default(r['min_groups'])} | {', '.join(map(str, r['rows_per_group']))} | "
          f"{r['bits_per_byte']:.4f} | {r['sparsegpt']:.4f} | {r['bits_per_byte'] - r['sparsegpt']:+.4f} | "
          f"{r['seconds']:.0f} |" for r in a["rows"]),
        "",
        f"## Speed of a converted {SPEED_WIDTH}x{SPEED_WIDTH} layer, forward, inference mode",
        "",
        f"`{s['command']}`, {s['date']}, {s['machine']}. Speedup over dense "
        "`nn.Linear` in the same run (medians, interleaved); share of ideal = speedup x density.",
        "",
        "| sparsity | batch | least row groups | rows per group | dense ms | rbgp ms | speedup | share of ideal |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {r['sparsity']} | {r['batch']} | {default(r['min_groups'])} | {r['rows_per_group']} | "
          f"{r['dense_ms']:.3f} | {r['ms']:.3f} | {r['speedup']:.2f}x | {r['speedup'] * (1 - r['sparsity']):.2f} |"
          for r in s["rows"]),
    ]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("all", "accuracy", "speed"), default="all")
    a = p.parse_args()
    path = HERE / "row_groups_sweep.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if a.part in ("all", "accuracy"):
        data["accuracy"] = accuracy()
    if a.part in ("all", "speed"):
        data["speed"] = speed()
    write_json(path, data)
    if {"accuracy", "speed"} <= data.keys():
        write_text(HERE / "row_groups_sweep.md", markdown(data))


if __name__ == "__main__":
    main()
