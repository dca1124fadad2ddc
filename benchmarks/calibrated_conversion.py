"""Converting trained models with calibration data: calibrated RBGP against the field's one-shot methods.

Models trained dense here from fixed seeds (recipes in `kjv_lm.py` and below, checkpoints cached in
`benchmarks/.cache/`): a GPT-2- and a LLaMA-shaped byte-level LM on the King James Bible, and the
Fashion-MNIST MLP (784-1024-1024-1024-10) and small CNN. Each is converted at every sparsity with
every method, on the same layers (`sparsify`'s choice: attention and MLP projections; heads,
embeddings and the first/last layer of the plain nets stay dense), uniform sparsity per layer:

- magnitude, Wanda, SparseGPT: `rbgp.nn.oneshot.prune_oneshot` (unstructured; 2:4 at 0.5), with the
  papers' layer targets, and SparseGPT also with dense targets (`targets="dense"`, as RBGP's default);
- RBGP4 data-free: `sparsify(model, s)` (init="magnitude", structure fitted to |W|);
- RBGP4 calibrated: `sparsify(model, s, calibration=...)` (dense targets: each layer fits the
  unconverted model's outputs), the same with SparseGPT's layer targets, and fitted column by column
  (block=(1, 1): no micro-blocks, the pattern's own row groups) to measure what micro-block
  granularity costs, and with the earlier default of at least 64 row groups per layer
  (`rbgp.nn.reconstruct.MIN_GROUPS`, now 256 on layers under 4096 rows) to measure what smaller
  groups gain (`row_groups_sweep.py` measures what they cost in speed).

Reported: test bits per byte (LMs) or accuracy (Fashion-MNIST) with no fine-tuning and after a short
fine-tune that is the same for every method (AdamW, masks fixed), conversion time and the peak
resident memory added during conversion.

    python benchmarks/calibrated_conversion.py                 # all models (about an hour on 2 cores with the LMs cached)
    python benchmarks/calibrated_conversion.py --models gpt2   # one
    # -> benchmarks/calibrated_conversion.{json,md,png}
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import threading
import time
from pathlib import Path

import torch
from torch import nn

import kjv_lm
from row_groups_sweep import least_groups
from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json
from rbgp.nn import RBGPConv2d, RBGPLinear, reconstruct, sparsify
from rbgp.nn.oneshot import prune_oneshot

HERE = Path(__file__).resolve().parent
SPARSITIES = (0.5, 0.75, 0.9)
METHODS = {  # label -> (kind, arguments); kind "oneshot" or "rbgp"
    "magnitude (unstructured)": ("oneshot", {"method": "magnitude"}),
    "Wanda (unstructured)": ("oneshot", {"method": "wanda"}),
    "SparseGPT (unstructured)": ("oneshot", {"method": "sparsegpt"}),
    "SparseGPT (unstructured), dense targets": ("oneshot", {"method": "sparsegpt", "targets": "dense"}),
    "Wanda 2:4": ("oneshot", {"method": "wanda", "nm": (2, 4)}),
    "SparseGPT 2:4": ("oneshot", {"method": "sparsegpt", "nm": (2, 4)}),
    "RBGP4 data-free (init=magnitude)": ("rbgp", {}),
    "RBGP4 calibrated, column by column": ("rbgp", {"calibrated": True, "block": (1, 1)}),
    "RBGP4 calibrated, layer targets": ("rbgp", {"calibrated": True, "targets": "layer"}),
    "RBGP4 calibrated, 64 row groups (the default before 256)": ("rbgp", {"calibrated": True, "min_groups": 64}),
    "RBGP4 calibrated": ("rbgp", {"calibrated": True}),
}
NM_ONLY_AT = 0.5


class PeakRSS:
    """The peak resident memory above the level at entry, sampled every 5 ms (bytes)."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def added(self) -> int:
        return self.peak - self.base


def convert(model: nn.Module, kind: str, args: dict, sparsity: float, calibration: list) -> nn.Module:
    """A converted copy of `model`."""
    model = copy.deepcopy(model)
    if kind == "oneshot":
        nm = args.get("nm")
        prune_oneshot(model, 0.0 if nm else sparsity, calibration if args["method"] != "magnitude" else None,
                      args["method"], nm, targets=args.get("targets", "layer"))
    else:
        extra = {"calibration": calibration} if args.get("calibrated") else {}
        extra.update({k: args[k] for k in ("block", "targets") if k in args})
        with least_groups(args.get("min_groups", reconstruct.MIN_GROUPS)):
            sparsify(model, sparsity, distribution="uniform", **extra)
    return model


def block_widths(model: nn.Module) -> list[int]:
    return [m.block_width for m in model.modules() if isinstance(m, (RBGPLinear, RBGPConv2d))]


def freeze_zeros(model: nn.Module) -> None:
    """Keep pruned weights of the masked (one-shot) models at zero during fine-tuning (gradient masks)."""
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 2 and bool((w == 0).any()):
            mask = (w != 0).to(w.dtype)
            w.register_hook(lambda g, mask=mask: g * mask)


# --- the language models -------------------------------------------------------------------------------

def lm_task(kind: str, ft_steps: int, calib: int):
    model, facts = kjv_lm.train_lm(kind)
    train, test = kjv_lm.splits()
    evaluation = kjv_lm.test_windows(test)
    windows = kjv_lm.windows(train, calib, seed=1)
    calibration = [{"input_ids": b} for b in windows.split(16)]

    def score(m: nn.Module) -> float:
        return kjv_lm.bits_per_byte(m, evaluation)

    def finetune(m: nn.Module) -> None:
        kjv_lm.fit(m, train, ft_steps, lr=3e-4, seed=2, batch=16)

    return model, facts, calibration, score, finetune, "test bits per byte"


# --- Fashion-MNIST -------------------------------------------------------------------------------------

def fashion_task(name: str, ft_steps: int, calib: int):
    from rbgp.experiments.data import get_dataset
    from rbgp.experiments.models import MLP, SmallCNN

    train_ds, test_ds = get_dataset("fashion_mnist"), get_dataset("fashion_mnist", split="test")
    torch.manual_seed(0)
    model = MLP(784, [1024, 1024, 1024], 10) if name == "fmnist-mlp" else SmallCNN(1, 10, (32, 64, 128, 128))
    folder = kjv_lm.CACHE / f"{name}-dense"

    def sgd(m: nn.Module, steps: int, lr: float, seed: int) -> None:
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        g = torch.Generator().manual_seed(seed)
        m.train()
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            idx = torch.randint(0, len(train_ds.x), (128,), generator=g)
            loss = nn.functional.cross_entropy(m(train_ds.x[idx]), train_ds.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        m.eval()

    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_model

        load_model(model, str(folder / "model.safetensors"))
        facts = json.loads((folder / "facts.json").read_text())
    else:
        t0 = time.perf_counter()
        sgd(model, 2 * len(train_ds.x) // 128, 0.05, seed=0)  # two epochs
        facts = {"steps": 2 * len(train_ds.x) // 128, "batch": 128, "lr": 0.05, "train_seconds": time.perf_counter() - t0}
        folder.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_model

        save_model(model, str(folder / "model.safetensors"))
        (folder / "facts.json").write_text(json.dumps(facts))
    model.eval()
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(train_ds.x), generator=g)[:calib]
    calibration = [(b, None) for b in train_ds.x[idx].split(64)]

    @torch.no_grad()
    def score(m: nn.Module) -> float:
        m.eval()
        pred = torch.cat([m(x).argmax(1) for x in test_ds.x.split(1000)])
        return 100.0 * float((pred == test_ds.y).double().mean())

    return model, facts, calibration, score, lambda m: sgd(m, ft_steps, 0.01, seed=2), "test accuracy (%)"


def run(models: list[str], ft_steps: int, calib: int, image_calib: int, methods: list[str], out: Path,
        update: bool = False) -> dict:
    """Every model with every method; the results so far are written to OUT.json after each model.
    Models already in OUT.json are skipped, or with `update` re-measured with `methods` only (their
    other rows kept)."""
    torch.manual_seed(0)
    results = {"command": "python benchmarks/calibrated_conversion.py", "date": datetime.date.today().isoformat(),
               "machine": machine(),
               "ft_steps": ft_steps, "models": {}}
    if out.with_suffix(".json").exists():  # models measured before (delete the file to measure all again)
        results["models"] = json.loads(out.with_suffix(".json").read_text())["models"]
    for name in models:
        if name in results["models"] and not update:
            continue
        lm = name in kjv_lm.KINDS
        samples = calib if lm else image_calib
        task = lm_task(name, ft_steps, samples) if lm else fashion_task(name, ft_steps, samples)
        model, facts, calibration, score, finetune, metric = task
        if name in results["models"]:
            entry = results["models"][name]
            entry["rows"] = [r for r in entry["rows"] if r["method"] not in methods]
        else:
            dense = score(model)
            dense_ft = copy.deepcopy(model)
            finetune(dense_ft)
            entry = {"metric": metric, "dense": dense, "dense_ft": score(dense_ft), "facts": facts,
                     "calibration_samples": samples, "rows": []}
            print(f"{name}: dense {dense:.4f} ({metric}), fine-tuned dense {entry['dense_ft']:.4f}", flush=True)
        for label in methods:
            kind, args = METHODS[label]
            for sparsity in SPARSITIES:
                if "nm" in args and sparsity != NM_ONLY_AT:
                    continue
                with PeakRSS() as mem:
                    t0 = time.perf_counter()
                    converted = convert(model, kind, args, sparsity, calibration)
                    seconds = time.perf_counter() - t0
                before = score(converted)
                freeze_zeros(converted)
                finetune(converted)
                after = score(converted)
                row = {"method": label, "date": results["date"], "machine": results["machine"], "sparsity": sparsity,
                       "no_ft": before, "ft": after, "seconds": seconds,
                       "peak_mb": mem.added / 2 ** 20, "block_widths": block_widths(converted)}
                entry["rows"].append(row)
                print(f"  {label} @ {sparsity}: {before:.4f} -> {after:.4f} ({seconds:.1f} s, "
                      f"+{row['peak_mb']:.0f} MB, block widths {sorted(set(row['block_widths']))})", flush=True)
        results["models"][name] = entry
        write_json(out.with_suffix(".json"), results)
    return results


def markdown(res: dict) -> str:
    lines = [f"Calibrated conversion of trained models, no fine-tuning -> after {res['ft_steps']} fine-tuning steps "
             f"(the same for every method). `{res['command']}`, last run on {res['machine']} (conversion times "
             f"are each row's own run's; rows without a machine in the JSON ran on an earlier x86_64 VM); each row's date in brackets "
             f"(rows are re-measured with `--update --methods ...`; the models and the other rows stay as they were).",
             ""]
    for name, e in res["models"].items():
        lines += [f"### {name}: {e['metric']}, dense {e['dense']:.3f} (fine-tuned the same way: {e['dense_ft']:.3f}); "
                  f"{e['calibration_samples']} calibration samples", "",
                  "| method | " + " | ".join(f"{s:g}" for s in SPARSITIES) + " | conversion s (0.9) | peak MB (0.9) | "
                  "block widths |", "|---" * (len(SPARSITIES) + 4) + "|"]
        for label in dict.fromkeys(r["method"] for r in e["rows"]):
            rows = {r["sparsity"]: r for r in e["rows"] if r["method"] == label}
            cells = [f"{rows[s]['no_ft']:.3f} -> {rows[s]['ft']:.3f}" if s in rows else "" for s in SPARSITIES]
            last = rows[max(rows)]
            widths = sorted({w for r in rows.values() for w in r["block_widths"]})
            lines.append(f"| {label} ({last.get('date', res['date'])}) | " + " | ".join(cells) + f" | {last['seconds']:.1f} | {last['peak_mb']:.0f} | "
                         f"{', '.join(map(str, widths)) or 'dense (masked)'} |")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        e = res["models"][name]
        for label in dict.fromkeys(r["method"] for r in e["rows"]):
            rows = sorted((r for r in e["rows"] if r["method"] == label), key=lambda r: r["sparsity"])
            if len(rows) < 2:
                continue
            line, = ax.plot([r["sparsity"] for r in rows], [r["no_ft"] for r in rows], marker="o", label=label)
            ax.plot([r["sparsity"] for r in rows], [r["ft"] for r in rows], ls="--", color=line.get_color())
        ax.axhline(e["dense"], color="k", lw=0.8, label="dense")
        ax.set_title(f"{name} (dashed: after fine-tuning)")
        ax.set_xlabel("sparsity")
        ax.set_ylabel(e["metric"])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["gpt2", "llama", "fmnist-mlp", "fmnist-cnn"],
                   help="models to measure; those already in OUT.json are kept as they are")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    p.add_argument("--ft-steps", type=int, default=50)
    p.add_argument("--calibration", type=int, default=64, help="calibration sequences of 128 bytes (LMs)")
    p.add_argument("--image-calibration", type=int, default=2048, help="calibration images (Fashion-MNIST)")
    p.add_argument("--out", type=Path, default=HERE / "calibrated_conversion", help="output stem")
    p.add_argument("--replot", action="store_true", help="only rewrite the markdown and plot from OUT.json")
    p.add_argument("--update", action="store_true",
                   help="re-measure the models already in OUT.json with --methods only, keeping their other rows")
    a = p.parse_args()
    if a.replot:
        res = json.loads(a.out.with_suffix(".json").read_text())
    else:
        res = run(a.models, a.ft_steps, a.calibration, a.image_calibration, a.methods, a.out, a.update)
    a.out.with_suffix(".md").write_text(markdown(res))
    plot(res, a.out.with_suffix(".png"))
    print(markdown(res))


if __name__ == "__main__":
    main()
