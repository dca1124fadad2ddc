"""A bottleneck ResNet written the usual way (1x1 -> 3x3 -> 1x1 blocks, 64-512 channels, CIFAR-sized),
dense against `rbgp.sparsify(model, 0.9)`: a CNN we did not shape for the library, where it is weakest.

Times eval-mode inference and one SGD training step at batch 32, dense and RBGP alternating in every
repeat (medians), for the default init ("magnitude": structures fitted to the weights) and for
init="kaiming" (structures as planned), then every converted conv alone (forward; forward+backward).
The allocator is tuned, as `rbgp bench` does.

    python benchmarks/bottleneck_cnn.py   # writes benchmarks/bottleneck_cnn.{json,md}
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rbgp.allocator import tune_cpu_allocator
from rbgp.experiments.bench.models import layer_breakdown, step_functions
from rbgp.experiments.bench.timing import machine, time_interleaved
from rbgp.files import write_json, write_text
from rbgp.nn import sparsify

BATCH, SPARSITY, REPEATS = 32, 0.9, 10


class Bottleneck(nn.Module):
    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inp != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inp, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class BottleneckNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.layer1 = nn.Sequential(Bottleneck(64, 64), Bottleneck(256, 64))
        self.layer2 = nn.Sequential(Bottleneck(256, 128, 2), Bottleneck(512, 128))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def run(init: str) -> dict:
    torch.manual_seed(0)
    dense = BottleneckNet()
    sparse = copy.deepcopy(dense)
    report = sparsify(sparse, SPARSITY, init=init)
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    steps = {v: step_functions(m, x, y, None) for v, m in (("dense", dense), ("rbgp", sparse))}
    out = {"init": init, "global_sparsity": report.global_sparsity, "phases": {}}
    for phase in ("infer", "train"):
        dense.train(phase == "train")
        sparse.train(phase == "train")
        t = time_interleaved({v: s[phase] for v, s in steps.items()}, repeats=REPEATS, warmup=2)
        out["phases"][phase] = {"dense_ms": t["dense"]["median_ms"], "rbgp_ms": t["rbgp"]["median_ms"],
                                "speedup": t["dense"]["median_ms"] / t["rbgp"]["median_ms"]}
    dense.eval()
    sparse.eval()
    out["per_layer"] = layer_breakdown(dense, sparse, report, x, lambda fns: time_interleaved(fns, repeats=7, warmup=1))
    return out


def main() -> None:
    tuned = tune_cpu_allocator()
    runs = [run(init) for init in ("magnitude", "kaiming")]
    data = {"command": "python benchmarks/bottleneck_cnn.py", "date": date.today().isoformat(),
            "machine": machine(),
            "allocator": "tuned" if tuned else "default", "batch": BATCH, "sparsity": SPARSITY, "runs": runs}
    here = Path(__file__).parent
    write_json(here / "bottleneck_cnn.json", data)
    lines = ["# A bottleneck ResNet written the usual way: dense vs `rbgp.sparsify(model, 0.9)`", "",
             f"`{data['command']}`, {data['date']}, {data['machine']}, allocator {data['allocator']}, batch "
             f"{BATCH}, fp32, eager; medians of {REPEATS} rounds, dense and RBGP alternating.", "",
             "| init | global sparsity | inference dense / RBGP ms | vs dense | training step dense / RBGP ms "
             "| vs dense |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        i, t = r["phases"]["infer"], r["phases"]["train"]
        lines.append(f"| {r['init']} | {r['global_sparsity']:.3f} | {i['dense_ms']:.1f} / {i['rbgp_ms']:.1f} | "
                     f"{i['speedup']:.2f}x | {t['dense_ms']:.1f} / {t['rbgp_ms']:.1f} | {t['speedup']:.2f}x |")
    for r in runs:
        lines += ["", f"Per layer, init {r['init']} (each conv alone on its input shape; dense ms / RBGP ms):", "",
                  "| layer | weight | sparsity | rows/group | fwd | fwd speedup | fwd+bwd | fwd+bwd speedup |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['name']} | {'x'.join(map(str, p['weight_shape']))} | {p['sparsity']:.3f} | "
                  f"{p['rows_per_group']} | {p['dense']['fwd_ms']:.2f} / {p['rbgp']['fwd_ms']:.2f} | "
                  f"{p['speedup_fwd']:.2f}x | {p['dense']['fwd_bwd_ms']:.2f} / {p['rbgp']['fwd_bwd_ms']:.2f} | "
                  f"{p['speedup_fwd_bwd']:.2f}x |" for p in r["per_layer"]]
    write_text(here / "bottleneck_cnn.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
