"""`rbgp train`, `rbgp demo` and `rbgp reproduce`.

Flags default to ``None`` so that the settings resolve in layers: recipe, then (with ``--resume``)
the checkpoint's own settings, then the flags the user actually gave.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from rbgp.nn.distribution import DEFAULT_DISTRIBUTION, DISTRIBUTIONS
from rbgp.train.data import DATASET_NAMES
from rbgp.train.demo import CURVE_SPARSITIES
from rbgp.train.models import MODEL_NAMES
from rbgp.train.recipes import RECIPE_NAMES, SCHEDULES, get_recipe

__all__ = ["add_train_parsers"]


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the training commands on the `rbgp` parser's subcommands."""
    _add_train(sub)
    _add_demo(sub)
    _add_reproduce(sub)


# ----------------------------------------------------------------------------------------------
# rbgp train
# ----------------------------------------------------------------------------------------------

_PATTERNS = ("dense", "rbgp4", "unstructured", "block", "hbsnn", "nm")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a (sparse) model with metrics, checkpoints and exact resume",
        description="Train a dense or sparse model. The recipe (--recipe; default: the paper's "
                    "for vgg19/wrn40_4, 'demo' otherwise) sets optimizer and schedule; explicit "
                    "flags override it. Every epoch appends to RUN/metrics.jsonl and metrics.csv "
                    "and atomically rewrites RUN/checkpoint.pt; --resume continues a run exactly. "
                    "Launch with torchrun for data-parallel training.")
    p.add_argument("--model", choices=MODEL_NAMES, help="network (default mlp)")
    p.add_argument("--dataset", choices=DATASET_NAMES,
                   help="default fashion_mnist for mlp/cnn, cifar10 for vgg19/wrn40_4")
    p.add_argument("--data-dir", help="folder with the data set files")
    p.add_argument("--pattern", choices=_PATTERNS, help="mask of the sparse layers (default dense)")
    p.add_argument("--sparsity", type=float, help="fraction of zero weights (default 0.9)")
    p.add_argument("--block", type=int, nargs=2, metavar=("H", "W"),
                   help="block size (block, hbsnn) or micro-block (rbgp4)")
    p.add_argument("--sub-block", type=int, nargs=2, metavar=("H", "W"), help="hbsnn sub-block")
    p.add_argument("--group-rows", type=int, help="rbgp4: rows sharing one column set")
    p.add_argument("--exclude", action="append", metavar="GLOB",
                   help="module names kept dense (repeatable; fnmatch globs)")
    p.add_argument("--init", choices=("kaiming", "keep", "magnitude"),
                   help="weights of the sparse layers: kaiming re-draws them (default, from scratch); with "
                        "--init-from, magnitude fits the structure to the dense weights and keeps them")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from this dense run's checkpoint.pt (same --model/--hidden): convert, then fine-tune")
    p.add_argument("--distribution", choices=DISTRIBUTIONS,
                   help=f"how --sparsity (global) is spread over the layers (default {DEFAULT_DISTRIBUTION})")
    p.add_argument("--hidden", type=_ints, metavar="W1,W2,...",
                   help="mlp hidden widths / cnn channel widths")
    p.add_argument("--recipe", choices=RECIPE_NAMES, help="preset of the settings below")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--milestones", type=_ints, metavar="E1,E2,...",
                   help="multistep: epochs after which lr is multiplied by --gamma")
    p.add_argument("--gamma", type=float)
    p.add_argument("--seed", type=int, help="seeds init, masks, data order (default 0)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="bf16: autocast, fp32 master weights")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="crop+flip for CIFAR-shaped data (default on)")
    p.add_argument("--limit-train", type=int, help="train on a fixed random subset of this size")
    p.add_argument("--limit-test", type=int, help="evaluate on a fixed random subset")
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.use_deterministic_algorithms (default on)")
    p.add_argument("--out-dir", help="run folder (default runs/<model>_<dataset>_<pattern>_s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start over even if RUN has a checkpoint")
    p.add_argument("--stop-after-epoch", type=int, help="stop after this epoch (as if killed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(func=_cmd_train)


def _train_config(args: argparse.Namespace) -> tuple[Any, Path]:
    """Resolve recipe < checkpoint (when resuming) < explicit flags into a TrainConfig."""
    from rbgp.train.loop import CHECKPOINT_NAME, TrainConfig, load_checkpoint

    saved: dict[str, Any] = {}
    if args.resume and args.out_dir and (Path(args.out_dir) / CHECKPOINT_NAME).exists():
        saved = dict(load_checkpoint(Path(args.out_dir) / CHECKPOINT_NAME)["args"])
    model = args.model or saved.get("model", "mlp")
    settings: dict[str, Any] = dict(saved)
    if saved:
        settings.setdefault("distribution", "uniform")  # runs saved before distributions existed
    if not saved or args.recipe:
        recipe_name = args.recipe or ("paper" if model in ("vgg19", "wrn40_4") else "demo")
        settings.update(get_recipe(recipe_name, model).to_dict())
    settings["model"] = model
    if not saved:
        settings["dataset"] = "cifar10" if model in ("vgg19", "wrn40_4") else "fashion_mnist"
    flags = {
        "dataset": args.dataset, "data_dir": args.data_dir, "pattern": args.pattern,
        "sparsity": args.sparsity, "exclude": args.exclude, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum,
        "nesterov": args.nesterov, "weight_decay": args.weight_decay, "schedule": args.schedule,
        "milestones": args.milestones, "gamma": args.gamma, "seed": args.seed,
        "precision": args.precision, "augment": args.augment, "limit_train": args.limit_train,
        "limit_test": args.limit_test, "max_steps": args.max_steps,
        "eval_batch_size": args.eval_batch_size, "device": args.device,
        "deterministic": args.deterministic, "init": args.init, "init_from": args.init_from,
        "distribution": args.distribution,
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.hidden:
        settings["model_kwargs"] = {"hidden" if model == "mlp" else "channels": args.hidden}
    pattern = settings.get("pattern", "dense")
    pk = dict(settings.get("pattern_kwargs") or {})
    if args.block:
        if pattern not in ("block", "hbsnn", "rbgp4"):
            raise ValueError(f"--block applies to block, hbsnn and rbgp4, not pattern {pattern!r}")
        pk["block"] = list(args.block)
    if args.sub_block:
        if pattern != "hbsnn":
            raise ValueError(f"--sub-block applies to hbsnn only, not pattern {pattern!r}")
        pk["sub_block"] = list(args.sub_block)
    if args.group_rows:
        if pattern != "rbgp4":
            raise ValueError(f"--group-rows applies to rbgp4 only, not pattern {pattern!r}")
        pk["group_rows"] = args.group_rows
    if not saved and pattern == "block" and "block" not in pk:
        pk["block"] = [16, 16]
    settings["pattern_kwargs"] = pk
    config = TrainConfig.from_dict(settings)
    out = Path(args.out_dir) if args.out_dir else Path("runs") / (
        f"{config.model}_{config.dataset}_{config.pattern}"
        + ("" if config.pattern == "dense" else f"{config.sparsity:g}") + f"_s{config.seed}")
    return config, out


def _cmd_train(args: argparse.Namespace) -> int:
    from rbgp.train.loop import train

    config, out = _train_config(args)
    result = train(config, out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                   stop_after_epoch=args.stop_after_epoch)
    if not args.quiet and result.history and os.environ.get("RANK", "0") == "0":
        f = result.final
        state = "stopped" if result.stopped_early else "done"
        print(f"[rbgp train] {state} after epoch {f['epoch']}: test acc {f['test_acc']:.2f}% "
              f"(metrics and checkpoint in {out})")
    return 0


# ----------------------------------------------------------------------------------------------
# rbgp demo
# ----------------------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="dense vs RBGP4 vs unstructured/block/HBsNN on Fashion-MNIST (minutes, CPU)",
        description="Train one network dense and at one sparsity with rbgp4, unstructured, "
                    "block (16x16) and hbsnn masks (same recipe and seeds) on Fashion-MNIST and "
                    "print one table: accuracy, parameters, non-zeros, structure bytes, train and "
                    "inference time per batch. Writes demo.json, demo.md and demo.png. With "
                    "--sweep/--curve: accuracy vs sparsity for rbgp4 and unstructured instead.")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: 784-1024-1024-1024-10 (default); cnn: small conv net")
    p.add_argument("--sparsity", type=float,
                   help="sparsity of the sparse layers (default 0.9 for mlp, 0.875 for cnn)")
    p.add_argument("--epochs", type=int, help="default 3")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method (mean and std)")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--lr", type=float, help="default 0.05 (SGD Nesterov, cosine)")
    p.add_argument("--limit-train", type=int, help="train on a fixed random subset (quick runs)")
    p.add_argument("--limit-test", type=int, help="evaluate on a fixed random subset")
    p.add_argument("--hidden", type=_ints, metavar="W1,W2,...",
                   help="mlp hidden widths / cnn channel widths")
    p.add_argument("--methods", type=_names, metavar="M1,M2,...",
                   help="subset of dense,rbgp4,unstructured,block,hbsnn")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--timing-rounds", type=int, default=7,
                   help="interleaved rounds of the per-batch timings (median reported)")
    p.add_argument("--distribution", type=_names, metavar="D1,D2,...",
                   help=f"how the global sparsity is spread over the layers: {', '.join(DISTRIBUTIONS)} "
                        f"(default {DEFAULT_DISTRIBUTION}); a sweep takes several")
    p.add_argument("--sweep", type=_floats, metavar="S1,S2,...",
                   help="accuracy-vs-sparsity curve at these global sparsities (--methods: the patterns, "
                        "default rbgp4,unstructured)")
    p.add_argument("--curve", action="store_true",
                   help=f"same as --sweep {','.join(f'{s:g}' for s in CURVE_SPARSITIES)}")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default $RBGP_FASHION_MNIST or "
                                      "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--out-dir", default="runs/demo", help="where the outputs go (default runs/demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rbgp.train.demo import DemoSettings, run_demo, run_sweep

    settings = DemoSettings(
        model=args.model, sparsity=args.sparsity, epochs=args.epochs, seeds=args.seeds,
        batch_size=args.batch_size, lr=args.lr, limit_train=args.limit_train,
        limit_test=args.limit_test, hidden=args.hidden, data_dir=args.data_dir,
        methods=args.methods, precision=args.precision, timing_rounds=args.timing_rounds,
        distribution=(args.distribution or [DEFAULT_DISTRIBUTION])[0],
    )
    sweep = args.sweep or (list(CURVE_SPARSITIES) if args.curve else None)
    if not sweep and args.distribution and len(args.distribution) > 1:
        raise ValueError(f"--distribution {','.join(args.distribution)}: the demo table takes one distribution; "
                         f"several are for a --sweep or --curve")
    command = "rbgp " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["demo"] else None
    if sweep:
        patterns = [m for m in args.methods or ("rbgp4", "unstructured") if m != "dense"]
        run_sweep(settings, sweep, args.out_dir, quiet=args.quiet, patterns=patterns,
                  distributions=args.distribution or [DEFAULT_DISTRIBUTION], command=command)
    else:
        run_demo(settings, args.out_dir, quiet=args.quiet, command=command)
    if not args.quiet:
        print(f"\n[rbgp demo] wrote {'curve' if sweep else 'demo'}.json/.md/.png to {args.out_dir}")
    return 0


# ----------------------------------------------------------------------------------------------
# rbgp reproduce
# ----------------------------------------------------------------------------------------------


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="the paper's CIFAR accuracy table (VGG19 / WRN-40-4)",
        description="Train the model dense and with unstructured, block and rbgp4 masks at each "
                    "sparsity with the paper's recipe; write reproduce.json and reproduce.md. "
                    "Interrupted reproductions resume. --smoke: a few steps on synthetic data.")
    p.add_argument("--model", choices=("vgg19", "wrn40_4"), default="vgg19")
    p.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    p.add_argument("--data-dir", help="folder with the CIFAR python archive or its extracted folder")
    p.add_argument("--sparsities", type=_floats, default=None, metavar="S1,S2,...",
                   help="default 0.5,0.75,0.875,0.9375")
    p.add_argument("--patterns", type=_names, default=None, metavar="P1,P2,...",
                   help="default unstructured,block,rbgp4")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--smoke", action="store_true",
                   help="synthetic CIFAR-shaped data, 1 epoch of 2 steps: checks the path only")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished run's checkpoint (deleted by default to save disk)")
    p.add_argument("--out-dir", help="default runs/reproduce_<model>[_smoke]")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rbgp.train.reproduce import (
        PAPER_SPARSITIES,
        REPRODUCE_PATTERNS,
        ReproduceSettings,
        run_reproduce,
    )

    if not args.smoke and args.data_dir is None:
        raise ValueError("--data-dir is required (the CIFAR archive's folder) unless --smoke")
    settings = ReproduceSettings(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir,
        sparsities=args.sparsities or PAPER_SPARSITIES,
        patterns=args.patterns or REPRODUCE_PATTERNS, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps, seed=args.seed,
        precision=args.precision, smoke=args.smoke, keep_checkpoints=args.keep_checkpoints,
    )
    out = args.out_dir or f"runs/reproduce_{args.model}{'_smoke' if args.smoke else ''}"
    run_reproduce(settings, out, quiet=args.quiet)
    return 0
