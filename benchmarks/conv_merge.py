"""How channel-layout convs with small row groups should run: grouped as they are, merged into taller
groups (block-diagonal weights), or as the dense conv of the masked weight. Fwd+bwd of one 3x3 conv,
batch 32, every option timed interleaved with dense in the same run (medians); the last column is what
`rbgp.ops.conv.conv_merge` picks (a static rule of the shape).

    python benchmarks/conv_merge.py     # writes benchmarks/conv_merge.{json,md,png}
"""

import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rbgp.files import write_json, write_text
from rbgp.nn import RBGPConv2d
from rbgp.ops.conv import conv_merge
from rbgp.ops.channel_conv import channel_grouped_conv2d

BATCH, ROUNDS, WARMUP = 32, 9, 2
CASES = [(32, 64, 14, 0.9), (64, 64, 32, 0.9), (64, 128, 16, 0.9), (128, 128, 16, 0.9), (128, 128, 16, 0.95),
         (256, 256, 8, 0.9), (256, 256, 8, 0.95), (512, 512, 4, 0.95)]
OUT = Path(__file__).parent


def options(layer: RBGPConv2d, x: torch.Tensor, w: torch.Tensor) -> dict:
    g, r, _ = layer.values.shape
    conv = lambda m: channel_grouped_conv2d(x, layer.values, layer.channels, layer.row_order,  # noqa: E731
                                            layer.out_channels, (3, 3), (1, 1), (1, 1), (1, 1), None, m)
    fns = {"dense": lambda: F.conv2d(x, w, None, 1, 1), "masked dense": lambda: F.conv2d(x, layer.dense_weight(), None, 1, 1)}
    fns.update({f"merge {m}": (lambda m=m: conv(m)) for m in (1, 2, 4, 8) if g % m == 0 and m * r <= 32})
    return fns


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for cin, cout, hw, sparsity in CASES:
        layer = RBGPConv2d(cin, cout, 3, padding=1, sparsity=sparsity, bias=False)
        x = torch.randn(BATCH, cin, hw, hw, requires_grad=True)
        w = torch.randn(cout, cin, 3, 3, requires_grad=True)
        fns = options(layer, x, w)
        samples = {k: [] for k in fns}
        for _ in range(ROUNDS):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                y = fn()
                y.backward(torch.ones_like(y))
                samples[name].append(time.perf_counter() - t0)
        ms = {k: 1e3 * statistics.median(v[WARMUP:]) for k, v in samples.items()}
        g, r, _ = layer.values.shape
        pick = conv_merge(g, r, layer.density)
        rows.append({"layer": f"{cin}->{cout} @{hw}x{hw}", "sparsity": sparsity, "groups": g, "rows": r, "ms": ms,
                     "vs_dense": {k: ms["dense"] / v for k, v in ms.items() if k != "dense"},
                     "rule": "masked dense" if pick is None else f"merge {pick}"})
        print(rows[-1]["layer"], sparsity, {k: f"{v:.2f}x" for k, v in rows[-1]["vs_dense"].items()}, rows[-1]["rule"])
    data = {"command": "python benchmarks/conv_merge.py", "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
            "batch": BATCH, "rounds": ROUNDS, "rows": rows}
    write_json(OUT / "conv_merge.json", data)
    names = ["masked dense", "merge 1", "merge 2", "merge 4", "merge 8"]
    lines = [f"Command: `{data['command']}`  ", f"Machine: {data['machine']}, date {data['date']}; fwd+bwd of one 3x3 "
             f"conv, batch {BATCH}, speed vs dense in the same run (median of {ROUNDS - WARMUP} interleaved rounds)", "",
             "| layer | sparsity | groups x rows | " + " | ".join(names) + " | rule picks |",
             "|---|---|---|" + "---|" * len(names) + "---|"]
    for r in rows:
        cells = [f"{r['vs_dense'][n]:.2f}x" if n in r["vs_dense"] else "-" for n in names]
        lines.append(f"| {r['layer']} | {r['sparsity']} | {r['groups']} x {r['rows']} | " + " | ".join(cells)
                     + f" | {r['rule']} |")
    write_text(OUT / "conv_merge.md", "\n".join(lines) + "\n")
    plot(rows, names, OUT / "conv_merge.png")


def plot(rows: list, names: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j, r in enumerate(rows) if name in r["vs_dense"]]
        ax.bar(xs, [r["vs_dense"][name] for r in rows if name in r["vs_dense"]], width, label=name)
    ax.axhline(1.0, color="gray", ls="--")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))],
                  [f"{r['layer']}\n{r['sparsity']}, R={r['rows']}\n(picks {r['rule']})" for r in rows], fontsize=7)
    ax.set_ylabel("fwd+bwd speed vs dense")
    ax.set_title("Small row groups: merged, as they are, or masked dense (3x3 conv, batch 32, CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
