"""1x1 RBGP convs as `RBGPConv2d` runs them (stride 1: the chunked grouped matmuls of
`rbgp.ops.pointwise_conv`; strided: im2col) against the im2col path and the dense conv, on every 1x1
conv of two CNNs written the usual way after
`rbgp.sparsify(model, 0.9)` (default init and distribution): the bottleneck ResNet of
`benchmarks/bottleneck_cnn.py` and ResNet-18's shortcuts. Batch 32, fp32, each layer alone on its input
shape, forward and forward+backward (input and weight gradients), the three paths timed interleaved
(medians). The allocator is tuned, as `rbgp bench` does.

    python benchmarks/pointwise_conv.py   # writes benchmarks/pointwise_conv.{json,md,png}
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

import torch
from bottleneck_cnn import BottleneckNet

from rbgp.allocator import tune_cpu_allocator
from rbgp.experiments.bench.timing import machine, time_interleaved
from rbgp.experiments.models import build_model
from rbgp.files import write_json, write_text
from rbgp.nn import RBGPConv2d, sparsify
from rbgp.ops import SparseWeight, rbgp_linear
from rbgp.ops.conv import pointwise_runs_dense
from rbgp.ops.im2col import im2col_feature_major
from rbgp.patterns import RBGP4

BATCH, SPARSITY, REPEATS = 32, 0.9, 9
PATHS = ("dense", "layer", "im2col")


def im2col_path(layer: RBGPConv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's output computed the way 1x1 convs ran before the pointwise path: im2col, then the
    grouped matmul (`rbgp.ops.grouped`), output handed on as a channel-major view."""
    cols, oh, ow = im2col_feature_major(x, layer.kernel_size, layer.stride, (0, 0), layer.dilation)
    y = rbgp_linear(cols.t(), SparseWeight(layer.values, layer.layout), layer.bias, "grouped")
    return y.t().reshape(layer.out_channels, x.shape[0], oh, ow).transpose(0, 1)


def pointwise_layers(model: torch.nn.Module) -> list[tuple[str, RBGPConv2d, torch.nn.Conv2d, tuple[int, ...]]]:
    """(name, sparse layer, dense twin, input shape) for every converted 1x1 conv of `model`."""
    dense = copy.deepcopy(model)
    sparsify(model, SPARSITY)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:  # returns None: the output is left as it is
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, RBGPConv2d) and m.kernel_size == (1, 1)]
    with torch.no_grad():
        model.eval()(torch.randn(BATCH, 3, 32, 32))
    for h in hooks:
        h.remove()
    return [(name, model.get_submodule(name), dense.get_submodule(name), shape) for name, shape in shapes.items()]


def time_layer(layer: RBGPConv2d, dense: torch.nn.Conv2d, shape: tuple[int, ...]) -> dict:
    x = torch.randn(shape, requires_grad=True)
    calls = {"dense": dense, "layer": layer, "im2col": lambda t: im2col_path(layer, t)}
    with torch.no_grad():
        ref = im2col_path(layer, x)
        torch.testing.assert_close(layer(x), ref, atol=1e-4, rtol=1e-4)
    dy = torch.randn_like(ref)
    weights = {"dense": dense.weight, "layer": layer.values, "im2col": layer.values}

    def fwd(f):
        def run():
            with torch.no_grad():
                return f(x)
        return run

    def fwd_bwd(f, w):
        return lambda: torch.autograd.grad(f(x), (x, w), dy)

    row = {"weight_shape": [layer.out_channels, layer.in_channels], "input_shape": list(shape),
           "stride": layer.stride[0], "sparsity": 1 - layer.density, "groups": list(layer.values.shape)}
    for phase, fns in (("fwd", {p: fwd(calls[p]) for p in PATHS}),
                       ("fwd_bwd", {p: fwd_bwd(calls[p], weights[p]) for p in PATHS})):
        t = time_interleaved(fns, repeats=REPEATS, warmup=2)
        row[phase] = {p: t[p]["median_ms"] for p in PATHS}
    return row


RULE_CASES = (  # (in, out, map size, sparsity, rows per group): both sides of `pointwise_runs_dense`
    (64, 64, 32, 0.875, 2), (256, 64, 32, 0.875, 2), (64, 64, 32, 0.875, 4), (256, 64, 32, 0.875, 4),
    (128, 128, 16, 0.875, 8), (128, 128, 16, 0.75, 8), (256, 256, 16, 0.7, 8))


def rule_rows() -> list[dict]:
    """The pointwise path forced (backend="grouped") against dense on layers either side of the rule."""
    rows = []
    for cin, cout, hw, sparsity, group_rows in RULE_CASES:
        layer = RBGPConv2d(cin, cout, 1, sparsity=sparsity, bias=False, backend="grouped",
                           pattern=RBGP4(group_rows=group_rows))
        dense = torch.nn.Conv2d(cin, cout, 1, bias=False)
        x = torch.randn(BATCH, cin, hw, hw, requires_grad=True)
        dy = torch.randn(BATCH, cout, hw, hw)
        row = {"weight_shape": [cout, cin], "input_shape": list(x.shape), "density": layer.density,
               "rows_per_group": layer.values.shape[1],
               "runs_dense": pointwise_runs_dense(layer.values.shape[1], layer.density)}
        for phase, fns in (("fwd", {"dense": lambda: dense(x.detach()), "pointwise": lambda: layer(x.detach())}),
                           ("fwd_bwd", {"dense": lambda: torch.autograd.grad(dense(x), (x, dense.weight), dy),
                                        "pointwise": lambda: torch.autograd.grad(layer(x), (x, layer.values), dy)})):
            t = time_interleaved(fns, repeats=REPEATS, warmup=2)
            row[phase] = {p: t[p]["median_ms"] for p in fns}
        rows.append(row)
        print(f"rule case {row}", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    ys = range(len(rows))
    for ax, phase in zip(axes, ("fwd", "fwd_bwd")):
        for k, (p, label, color) in enumerate((("layer", "RBGPConv2d", "tab:green"), ("im2col", "im2col path", "tab:gray"))):
            ax.barh([y + 0.4 * k for y in ys], [r[phase]["dense"] / r[phase][p] for r in rows], 0.4, color=color,
                    label=label)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xlabel(f"{phase.replace('_', '+')} speedup vs dense conv")
        ax.legend(loc="lower right")
    axes[0].set_yticks([y + 0.2 for y in ys], [f"{r['model']} {r['name']}" for r in rows], fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(f"1x1 RBGP convs at {SPARSITY} (sparsify defaults), batch {BATCH}, CPU fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    tuned = tune_cpu_allocator()
    torch.manual_seed(0)
    rows = []
    for model_name, model in (("bottleneck", BottleneckNet()), ("resnet18", build_model("resnet18", 10, 3))):
        for name, layer, dense, shape in pointwise_layers(model):
            rows.append({"model": model_name, "name": name, **time_layer(layer, dense, shape)})
            r = rows[-1]
            print(f"{model_name} {name}: fwd {r['fwd']}, fwd+bwd {r['fwd_bwd']}", flush=True)
    data = {"command": "python benchmarks/pointwise_conv.py", "date": date.today().isoformat(),
            "machine": machine(),
            "allocator": "tuned" if tuned else "default", "batch": BATCH, "sparsity": SPARSITY, "rows": rows,
            "rule": rule_rows()}
    here = Path(__file__).parent
    write_json(here / "pointwise_conv.json", data)
    plot(rows, here / "pointwise_conv.png")
    lines = ["# 1x1 RBGP convs: as RBGPConv2d runs them (stride 1: pointwise path) vs the im2col path vs dense", "",
             f"`{data['command']}`, {data['date']}, {data['machine']}, allocator {data['allocator']}, batch {BATCH}, "
             f"fp32; every 1x1 conv after `sparsify(model, {SPARSITY})` (defaults), alone on its input shape; "
             f"medians of {REPEATS} interleaved rounds; speedup = dense ms / path ms.", "",
             "| model | layer | weight | input | stride | sparsity | groups x rows x cols | fwd dense ms | "
             "fwd layer / im2col speedup | fwd+bwd dense ms | fwd+bwd layer / im2col speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, b = r["fwd"], r["fwd_bwd"]
        lines.append(f"| {r['model']} | {r['name']} | {'x'.join(map(str, r['weight_shape']))} | "
                     f"{'x'.join(map(str, r['input_shape']))} | {r['stride']} | {r['sparsity']:.3f} | "
                     f"{'x'.join(map(str, r['groups']))} | {f['dense']:.2f} | {f['dense'] / f['layer']:.2f}x / "
                     f"{f['dense'] / f['im2col']:.2f}x | {b['dense']:.2f} | {b['dense'] / b['layer']:.2f}x / "
                     f"{b['dense'] / b['im2col']:.2f}x |")
    lines += ["", "The dispatch rule (`pointwise_runs_dense`: masked dense conv below 4 rows per group or above "
              "density 0.2), the pointwise path forced against dense, stride 1, no bias:", "",
              "| weight | input | density | rows/group | auto runs | fwd speedup | fwd+bwd speedup |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {'x'.join(map(str, r['weight_shape']))} | {'x'.join(map(str, r['input_shape']))} | {r['density']:.3f} | "
              f"{r['rows_per_group']} | {'masked dense' if r['runs_dense'] else 'pointwise'} | "
              f"{r['fwd']['dense'] / r['fwd']['pointwise']:.2f}x | "
              f"{r['fwd_bwd']['dense'] / r['fwd_bwd']['pointwise']:.2f}x |" for r in data["rule"]]
    write_text(here / "pointwise_conv.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
