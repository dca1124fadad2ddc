"""Converting a trained model: a Fashion-MNIST MLP (784-1024-1024-1024-10) is trained dense, its two
1024x1024 layers are made 90% sparse (the first and last layer stay dense, as in the paper), and each
conversion is fine-tuned. One command writes the table quoted in the README:

    python benchmarks/pretrained_conversion.py      # ~10 min on 2 CPU cores
    # -> benchmarks/pretrained_conversion.{json,md,png}

Rows: init="magnitude" (RBGP4 structure fitted to the weights, each row rescaled to its dense L1
norm; with the planner's row groups, and with groups of 8 rows: more freedom, slower sub-GEMMs),
init="keep" (the seed's RBGP4 structure, weights kept on it as they are), unstructured magnitude
pruning (the top 10% of |W|, rows rescaled the same way: the bound a structured mask is measured
against) and dense (the same fine-tuning, no pruning). The top-k bound column is the |W| mass the
unstructured top-k mask keeps at each row's achieved density (RBGP4 plans 0.906 here). Fine-tuning is
`rbgp train --init-from <dense checkpoint>`: 3 epochs of SGD (lr 0.01, cosine); the 1-epoch column is
that run's first epoch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

from rbgp.experiments import TrainConfig, build_run_model, evaluate, train
from rbgp.experiments.bench.timing import machine
from rbgp.experiments.data import get_dataset

HERE = Path(__file__).resolve().parent
HIDDEN = [1024, 1024, 1024]
METHODS = {  # label -> (pattern, init, pattern parameters)
    "RBGP4, init=magnitude": ("rbgp4", "magnitude", {}),
    "RBGP4, init=magnitude, group_rows=8": ("rbgp4", "magnitude", {"group_rows": 8}),
    "RBGP4, init=keep": ("rbgp4", "keep", {}),
    "unstructured magnitude": ("unstructured", "magnitude", {}),
    "dense (no pruning)": ("dense", "kaiming", {}),
}


def _config(pattern: str, epochs: int, lr: float, **extra) -> TrainConfig:
    return TrainConfig(model="mlp", dataset="fashion_mnist", pattern=pattern, sparsity=0.9, epochs=epochs,
                       lr=lr, model_kwargs={"hidden": HIDDEN}, augment=False, seed=0, **extra)


def run(out_dir: Path, dense_epochs: int, ft_epochs: int, limit_train: int | None) -> dict:
    train_ds, test_ds = get_dataset("fashion_mnist"), get_dataset("fashion_mnist", split="test")
    if limit_train:
        train_ds = type(train_ds)(train_ds.x[:limit_train], train_ds.y[:limit_train], train_ds.num_classes,
                                  train_ds.input_shape)
    data = (train_ds, test_ds)
    dense_dir = out_dir / "dense"
    dense = train(_config("dense", dense_epochs, 0.05), dense_dir, data=data, overwrite=True, quiet=True)
    start = str(dense_dir / "checkpoint.pt")
    rows = []
    for label, (pattern, init, kwargs) in METHODS.items():
        config = _config(pattern, ft_epochs, 0.01, init=init, init_from=start, pattern_kwargs=kwargs)
        model, report = build_run_model(config, 10, train_ds.input_shape)
        _, acc0 = evaluate(model, test_ds.x, test_ds.y)
        kept = bound = None
        if report is not None:
            w = [r.params_before for r in report.layers]
            kept = sum(r.kept_mass * p for r, p in zip(report.layers, w)) / sum(w)
            bound = sum(r.top_k_mass * p for r, p in zip(report.layers, w)) / sum(w)
        result = train(config, out_dir / label.replace(" ", "_"), data=data, overwrite=True, quiet=True)
        accs = [h["test_acc"] for h in result.history]
        rows.append({"method": label, "pattern": pattern, "init": init, "kept_mass": kept, "top_k_mass": bound,
                     "acc_no_ft": acc0, "acc_ft": accs,
                     "layers": [_layer_facts(r, model.get_submodule(r.name).structure.info)
                                for r in (report.layers if report else [])]})
        print(f"{label}: no FT {acc0:.2f}%, FT {['%.2f' % a for a in accs]}, kept mass {kept}")
    return {"command": "python benchmarks/pretrained_conversion.py", "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "model": f"MLP 784-{'-'.join(map(str, HIDDEN))}-10, Fashion-MNIST", "dense_epochs": dense_epochs,
            "dense_acc": dense.history[-1]["test_acc"], "ft_epochs": ft_epochs, "ft_lr": 0.01, "sparsity": 0.9,
            "limit_train": limit_train, "rows": rows}


def _layer_facts(r, info: dict) -> dict:
    """Per converted layer: sparsity, group size, kept mass, and the spectral gap of its (group x column)
    graph next to that of the seed's Ramanujan graph (what fitting costs in expansion)."""
    return {"name": r.name, "sparsity": r.sparsity, "rows_per_group": r.rows_per_group, "kept_mass": r.kept_mass,
            "top_k_mass": r.top_k_mass, "spectral_gap": info.get("spectral_gap"),
            "ramanujan_spectral_gap": info.get("ramanujan_spectral_gap")}


def markdown(res: dict) -> str:
    def pct(x):
        return "" if x is None else f"{100 * x:.1f}%"

    last = res["ft_epochs"]
    lines = [f"Pretrained conversion: {res['model']}, trained dense for {res['dense_epochs']} epochs "
             f"({res['dense_acc']:.2f}% test accuracy); both 1024x1024 layers converted at sparsity "
             f"{res['sparsity']:g}, then fine-tuned (SGD lr {res['ft_lr']:g}, cosine over {last} epochs). "
             f"`{res['command']}`, {res['machine']}, {res['date']}.", "",
             f"| method | kept \\|W\\| mass | unstructured top-k bound | accuracy, no fine-tuning | "
             f"after 1 epoch | after {last} epochs |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | {pct(r['kept_mass'])} | {pct(r['top_k_mass'])} | {r['acc_no_ft']:.2f}% | "
                     f"{r['acc_ft'][0]:.2f}% | {r['acc_ft'][-1]:.2f}% |")
    gaps = [(r["method"], layer) for r in res["rows"] for layer in r["layers"]
            if layer["ramanujan_spectral_gap"] is not None]
    if gaps:
        lines += ["", "Spectral gap of each fitted layer's (row group x input column) graph, next to the seed's "
                      "Ramanujan graph of the same plan:", ""]
        lines += [f"- {method}, layer {layer['name']}: {layer['spectral_gap']:.3f} (Ramanujan "
                  f"{layer['ramanujan_spectral_gap']:.3f})" for method, layer in gaps]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in res["rows"]:
        ys = [r["acc_no_ft"], *r["acc_ft"]]
        ax.plot(range(len(ys)), ys, marker="o", label=r["method"])
    ax.set_xlabel("fine-tuning epochs")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST MLP converted at 90% sparsity")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense-epochs", type=int, default=2)
    p.add_argument("--ft-epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, help="train on the first N images (quick check)")
    p.add_argument("--out", type=Path, default=HERE / "pretrained_conversion", help="output stem")
    p.add_argument("--replot", action="store_true", help="only rewrite the markdown and plot from OUT.json")
    args = p.parse_args()
    if args.replot:
        res = json.loads(args.out.with_suffix(".json").read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            res = run(Path(tmp), args.dense_epochs, args.ft_epochs, args.limit_train)
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(res))
    plot(res, args.out.with_suffix(".png"))
    print(markdown(res))


if __name__ == "__main__":
    main()
