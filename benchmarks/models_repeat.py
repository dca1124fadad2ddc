"""Whole-model speed-ups over several fresh processes: one `rbgp bench --suite models` run says little
on a shared 2-core VM, where the same command's ratio moves from process to process (see the table).

Runs the models suite PROCESSES times for each batch and each allocator setting (hw distribution, global
sparsity 0.9, fp32, eager, dense and RBGP timed alternately in every process; "default": the process as a
user's own script has it, "tuned": `rbgp.tune_cpu_allocator()` called first), the settings alternating,
and tabulates each model's and phase's RBGP-vs-dense ratio as min / median / max over the processes.

    python benchmarks/models_repeat.py   # writes benchmarks/models_repeat.{json,md}
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text

MODELS, BATCHES, PROCESSES, ALLOCATORS = "vgg19,resnet18", (32,), 5, ("default", "tuned")


def one_run(batch: int, allocator: str, out: Path) -> list[dict]:
    subprocess.run([sys.executable, "-m", "rbgp.cli", "bench", "--suite", "models", "--device", "cpu", "--dtype",
                    "fp32", "--models", MODELS, "--batch", str(batch), "--sparsity", "0.9", "--distribution", "hw",
                    "--compile", "no", "--allocator", allocator, "--out-dir", str(out), "--name", "run"],
                   check=True, capture_output=True)
    return json.loads((out / "run.json").read_text())["results"]


def main() -> None:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(PROCESSES):
            for batch in BATCHES:  # alternate, so that a slow spell of the machine hits every setting
                for allocator in ALLOCATORS if i % 2 == 0 else ALLOCATORS[::-1]:
                    for r in one_run(batch, allocator, Path(tmp)):
                        runs.append({"process": i, "batch": batch, "allocator": allocator, "model": r["model"],
                                     "infer": r["speedup_infer"], "train": r["speedup_train"]})
                        print(f"#{i} {r['model']} batch {batch} allocator {allocator}: {r['speedup_infer']:.2f}x "
                              f"inference, {r['speedup_train']:.2f}x training", flush=True)
    data = {"command": "python benchmarks/models_repeat.py", "date": date.today().isoformat(),
            "machine": machine(),
            "sparsity": 0.9, "distribution": "hw", "processes": PROCESSES, "allocators": list(ALLOCATORS),
            "runs": runs}
    here = Path(__file__).parent
    write_json(here / "models_repeat.json", data)
    lines = ["# Whole models over fresh processes: RBGP (hw, global 0.9) vs dense", "",
             f"`{data['command']}`, {data['date']}, {data['machine']}, fp32, eager; {PROCESSES} fresh processes "
             f"of `rbgp bench --suite models` per batch and allocator setting (alternating), each timing dense and "
             f"RBGP alternately. Allocator default: the process as a user's own script has it; tuned: "
             f"`rbgp.tune_cpu_allocator()` first.", "",
             "| model | batch | allocator | inference: min / median / max | training step: min / median / max |",
             "|---|---|---|---|---|"]
    for model in MODELS.split(","):
        for batch in BATCHES:
            for allocator in ALLOCATORS:
                cells = []
                for phase in ("infer", "train"):
                    s = sorted(r[phase] for r in runs
                               if r["model"] == model and r["batch"] == batch and r["allocator"] == allocator)
                    cells.append(f"{s[0]:.2f}x / {statistics.median(s):.2f}x / {s[-1]:.2f}x")
                lines.append(f"| {model} | {batch} | {allocator} | {cells[0]} | {cells[1]} |")
    write_text(here / "models_repeat.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
