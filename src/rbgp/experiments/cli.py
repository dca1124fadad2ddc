"""`rbgp train`, `rbgp demo` and `rbgp reproduce`.

Flags default to ``None`` so that the settings resolve in layers: recipe, then (with ``--resume``)
the checkpoint's own settings, then the flags the user actually gave.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from rbgp.experiments.config import PATTERN_NAMES
from rbgp.experiments.data import DATASET_NAMES
from rbgp.experiments.demo import CURVE_SPARSITIES
from rbgp.experiments.models import MODEL_NAMES
from rbgp.experiments.recipes import RECIPE_NAMES, SCHEDULES, get_recipe
from rbgp.nn.distribution import DEFAULT_DISTRIBUTION, DISTRIBUTIONS
from rbgp.train.methods import METHOD_NAMES

__all__ = ["add_train_parsers"]


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values:  # "" or ",,": not a request for the default
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _check_paths(data_dir: str | None = None, out_dir: str | None = None) -> None:
    """A given data folder exists and the output folder can be written (ValueError naming them)."""
    from rbgp.files import check_input_dir, check_output_dir

    if data_dir is not None:
        check_input_dir(data_dir, "--data-dir")
    if out_dir is not None:
        check_output_dir(out_dir, "--out-dir")


def _dry_run(what: str, settings: dict[str, Any]) -> int:
    print(f"[dry run] settings checked; would run {what} with:\n{json.dumps(settings, indent=2, default=str)}")
    return 0


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the training commands on the `rbgp` parser's subcommands."""
    _add_train(sub)
    _add_demo(sub)
    _add_methods(sub)
    _add_reproduce(sub)


# ----------------------------------------------------------------------------------------------
# rbgp train
# ----------------------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a (sparse) model with metrics, checkpoints and exact resume",
        description="Train a dense or sparse model. The recipe (--recipe; default: the paper's "
        "for vgg19/wrn40_4, 'demo' otherwise) sets optimizer and schedule; explicit "
        "flags override it. Every epoch appends to RUN/metrics.jsonl and metrics.csv "
        "and atomically rewrites RUN/checkpoint.pt; --resume continues a run exactly. "
        "Launch with torchrun for data-parallel training.",
    )
    p.add_argument("--model", choices=MODEL_NAMES, help="network (default mlp)")
    p.add_argument(
        "--dataset", choices=DATASET_NAMES, help="default fashion_mnist for mlp/cnn, cifar10 for vgg19/wrn40_4"
    )
    p.add_argument("--data-dir", help="folder with the data set files")
    p.add_argument("--pattern", choices=PATTERN_NAMES, help="mask of the sparse layers (default dense)")
    p.add_argument(
        "--sparsity", type=float, help="fraction of zero weights (default 0.9); the final one for --method magnitude"
    )
    p.add_argument(
        "--block", type=int, nargs=2, metavar=("H", "W"), help="block size (block, hbsnn) or micro-block (rbgp4)"
    )
    p.add_argument("--sub-block", type=int, nargs=2, metavar=("H", "W"), help="hbsnn sub-block")
    p.add_argument("--group-rows", type=int, help="rbgp4: rows sharing one column set")
    p.add_argument(
        "--exclude", action="append", metavar="GLOB", help="module names kept dense (repeatable; fnmatch globs)"
    )
    p.add_argument(
        "--init",
        choices=("kaiming", "keep", "magnitude"),
        help="weights of the sparse layers: kaiming re-draws them (default, from scratch); with "
        "--init-from, magnitude fits the structure to the dense weights and keeps them",
    )
    p.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from this dense run's checkpoint.pt (same --model/--hidden): convert, then fine-tune",
    )
    p.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        help=f"how --sparsity (global) is spread over the layers (default {DEFAULT_DISTRIBUTION})",
    )
    p.add_argument("--hidden", type=_ints, metavar="W1,W2,...", help="mlp hidden widths / cnn channel widths")
    _add_method_flags(p)
    p.add_argument("--recipe", choices=RECIPE_NAMES, help="preset of the settings below")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument(
        "--milestones",
        type=_ints,
        metavar="E1,E2,...",
        help="multistep: epochs after which lr is multiplied by --gamma",
    )
    p.add_argument("--gamma", type=float)
    p.add_argument("--seed", type=int, help="seeds init, masks, data order (default 0)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="bf16: autocast, fp32 master weights")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="crop+flip for CIFAR-shaped data (default on)",
    )
    p.add_argument("--limit-train", type=int, help="train on a fixed random subset of this size")
    p.add_argument("--limit-test", type=int, help="evaluate on a fixed random subset")
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch")
    p.add_argument("--eval-batch-size", type=int)
    _add_run_flags(p)
    p.set_defaults(func=_cmd_train)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The device, the run folder, resuming and stopping."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.use_deterministic_algorithms (default on)",
    )
    p.add_argument("--out-dir", help="run folder (default runs/<model>_<dataset>_<pattern>_s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt (an error if there is none)")
    p.add_argument(
        "--resume-if-present",
        action="store_true",
        help="continue from RUN/checkpoint.pt if there is one, else start a new run (for restarted jobs)",
    )
    p.add_argument("--overwrite", action="store_true", help="start over even if RUN has a checkpoint")
    p.add_argument("--stop-after-epoch", type=int, help="stop after this epoch (as if killed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")


def _add_method_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "sparse training method",
        "static: masks fixed at init by --pattern (default). magnitude: gradual magnitude pruning from "
        "dense to --sparsity (Zhu-Gupta cubic schedule), then fine-tuning. autosparse: learnable "
        "thresholds with Gradient Annealing (sparsity is learnt). budgeted: --pattern (rbgp4) at the "
        "per-layer sparsities another run learnt (--budget-from).",
    )
    g.add_argument("--method", choices=METHOD_NAMES, help="default static")
    g.add_argument("--prune-start", type=int, metavar="STEP", help="magnitude: first pruning step (default 0)")
    g.add_argument(
        "--prune-end",
        type=int,
        metavar="STEP",
        help="magnitude: step the final sparsity is reached (default 2/3 of the run; = start: one-shot)",
    )
    g.add_argument(
        "--prune-every", type=int, metavar="STEPS", help="magnitude: steps between mask updates (default 50)"
    )
    g.add_argument("--prune-granularity", choices=("unstructured", "block"), help="magnitude: default unstructured")
    g.add_argument("--prune-block", type=int, nargs=2, metavar=("H", "W"), help="magnitude: block size (default 4 4)")
    g.add_argument(
        "--prune-scope",
        choices=("layer", "global"),
        help="magnitude: one threshold per layer (default) or over all pruned layers",
    )
    g.add_argument("--alpha0", type=float, help="autosparse: initial Gradient Annealing alpha (default 0.5; 0 = STR)")
    g.add_argument(
        "--alpha-zero-epoch",
        type=int,
        metavar="E",
        help="autosparse: 0-based epoch from which alpha is 0 (default never)",
    )
    g.add_argument("--threshold-init", type=float, help="autosparse: initial threshold logit T (default -5)")
    g.add_argument(
        "--init-sparsity",
        type=float,
        help="autosparse: start the thresholds at the global |W| quantile of this sparsity instead",
    )
    g.add_argument("--per-channel", action="store_true", help="autosparse: one threshold per output channel")
    g.add_argument("--threshold-decay", type=float, help="autosparse: weight decay on the thresholds (default 0)")
    g.add_argument(
        "--budget-from", metavar="RUN", help="budgeted: the out-dir of a finished autosparse or magnitude run"
    )


_METHOD_FLAGS = {
    "magnitude": {
        "prune_start": "start_step",
        "prune_end": "end_step",
        "prune_every": "frequency",
        "prune_granularity": "granularity",
        "prune_block": "block",
        "prune_scope": "scope",
    },
    "autosparse": {
        "alpha0": "alpha0",
        "alpha_zero_epoch": "alpha_zero_epoch",
        "threshold_init": "threshold_init",
        "init_sparsity": "init_sparsity",
        "per_channel": "per_channel",
        "threshold_decay": "threshold_decay",
    },
    "budgeted": {},
}


def _method_kwargs(args: argparse.Namespace, method: str, saved: dict[str, Any]) -> dict[str, Any]:
    """The method's options from its flags (on top of the checkpoint's when resuming); a flag of
    another method is an error."""
    kwargs = dict(saved) if saved else {}
    for other, flags in _METHOD_FLAGS.items():
        given = {opt: getattr(args, flag) for flag, opt in flags.items() if getattr(args, flag) not in (None, False)}
        if given and other != method:
            names = ", ".join("--" + f.replace("_", "-") for f, o in flags.items() if o in given)
            raise ValueError(f"{names} appl{'ies' if len(given) == 1 else 'y'} to --method {other}, not {method}")
        if other == method:
            kwargs.update({k: list(v) if isinstance(v, tuple) else v for k, v in given.items()})
    if args.budget_from is not None:
        if method != "budgeted":
            raise ValueError(f"--budget-from applies to --method budgeted, not {method}")
        from rbgp.train.methods import budget_from_run

        kwargs.update(budget=budget_from_run(args.budget_from), source=str(args.budget_from))
    return kwargs


_CONFIG_FLAGS = (
    "dataset",
    "data_dir",
    "pattern",
    "sparsity",
    "exclude",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "milestones",
    "gamma",
    "seed",
    "precision",
    "augment",
    "limit_train",
    "limit_test",
    "max_steps",
    "eval_batch_size",
    "device",
    "deterministic",
    "init",
    "init_from",
    "distribution",
)
"""`rbgp train` flags that set the TrainConfig field of the same name (when given)."""


def _train_config(args: argparse.Namespace) -> tuple[Any, Path]:
    """Resolve recipe < checkpoint (when resuming) < explicit flags into a TrainConfig."""
    from rbgp.experiments.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from rbgp.experiments.config import LEGACY_DEFAULTS, TrainConfig

    saved: dict[str, Any] = {}
    if (args.resume or args.resume_if_present) and args.out_dir and (Path(args.out_dir) / CHECKPOINT_NAME).exists():
        saved = dict(load_checkpoint(Path(args.out_dir) / CHECKPOINT_NAME)["args"])
        TrainConfig.from_dict({**LEGACY_DEFAULTS, **saved})  # its types and values checked before any is used
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
    flags = {k: getattr(args, k) for k in _CONFIG_FLAGS}
    settings.update({k: v for k, v in flags.items() if v is not None})
    method = args.method or settings.get("method", "static")
    settings["method"] = method
    settings["method_kwargs"] = _method_kwargs(args, method, settings.get("method_kwargs") or {})
    if method == "budgeted":
        if settings.get("pattern", "dense") == "dense" and args.pattern is None:
            settings["pattern"] = "rbgp4"
        if args.distribution is None:
            settings["distribution"] = "uniform"  # the budget gives every layer its own sparsity
    if args.hidden:
        settings["model_kwargs"] = {"hidden" if model == "mlp" else "channels": args.hidden}
    pattern = settings.get("pattern", "dense")
    pk = dict(settings.get("pattern_kwargs") or {})
    if args.block is not None:
        if pattern not in ("block", "hbsnn", "rbgp4"):
            raise ValueError(f"--block applies to block, hbsnn and rbgp4, not pattern {pattern!r}")
        pk["block"] = list(args.block)
    if args.sub_block is not None:
        if pattern != "hbsnn":
            raise ValueError(f"--sub-block applies to hbsnn only, not pattern {pattern!r}")
        pk["sub_block"] = list(args.sub_block)
    if args.group_rows is not None:
        if pattern != "rbgp4":
            raise ValueError(f"--group-rows applies to rbgp4 only, not pattern {pattern!r}")
        pk["group_rows"] = args.group_rows
    if not saved and pattern == "block" and "block" not in pk:
        pk["block"] = [16, 16]
    settings["pattern_kwargs"] = pk
    config = TrainConfig.from_dict(settings)
    out = (
        Path(args.out_dir)
        if args.out_dir
        else Path("runs") / (f"{config.model}_{config.dataset}_{_run_label(config)}_s{config.seed}")
    )
    return config, out


def _run_label(config: Any) -> str:
    if config.method == "autosparse":
        return "autosparse"
    if config.method == "magnitude":
        return f"magnitude{config.sparsity:g}"
    if config.method == "budgeted":
        return f"budgeted_{config.pattern}"
    return config.pattern + ("" if config.pattern == "dense" else f"{config.sparsity:g}")


def _cmd_train(args: argparse.Namespace) -> int:
    from rbgp.experiments.loop import train

    if args.resume and args.resume_if_present:
        raise ValueError("--resume and --resume-if-present: give one of them")
    if (args.resume or args.resume_if_present) and args.overwrite:
        raise ValueError("--overwrite starts over, --resume continues: give one of them")
    if args.stop_after_epoch is not None and args.stop_after_epoch < 1:
        raise ValueError(f"--stop-after-epoch must be >= 1, got {args.stop_after_epoch}")
    config, out = _train_config(args)
    resume = "if-present" if args.resume_if_present else args.resume
    if args.dry_run:
        from rbgp.experiments.loop import check_run, preflight

        _check_paths(config.data_dir)
        saved = preflight(config, out, resume, args.overwrite)
        check_run(config)
        where = f"resuming after epoch {saved['epoch']}" if saved else "a new run"
        return _dry_run(f"rbgp train ({where}) into {out}", config.to_dict())
    result = train(
        config, out, resume=resume, overwrite=args.overwrite, quiet=args.quiet, stop_after_epoch=args.stop_after_epoch
    )
    if not args.quiet and result.history and os.environ.get("RANK", "0") == "0":
        f = result.final
        state = "stopped" if result.stopped_early else "done"
        print(
            f"[rbgp train] {state} after epoch {f['epoch']}: test acc {f['test_acc']:.2f}% "
            f"(metrics and checkpoint in {out})"
        )
    return 0


# ----------------------------------------------------------------------------------------------
# rbgp demo
# ----------------------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="dense vs RBGP4 vs unstructured/block/HBsNN on Fashion-MNIST (minutes, CPU)",
        description="Train one network dense and at one sparsity with rbgp4, unstructured, "
        "block (16x16) and hbsnn masks (same recipe and seeds) on Fashion-MNIST and "
        "print one table: accuracy, parameters, non-zeros, structure bytes, train and "
        "inference time per batch. Writes demo.json, demo.md and demo.png. With "
        "--sweep/--curve: accuracy vs sparsity for rbgp4 and unstructured instead.",
    )
    p.add_argument(
        "--model",
        choices=("mlp", "cnn"),
        default="mlp",
        help="mlp: 784-1024-1024-1024-10 (default); cnn: small conv net",
    )
    p.add_argument("--sparsity", type=float, help="sparsity of the sparse layers (default 0.9 for mlp, 0.875 for cnn)")
    p.add_argument("--epochs", type=int, help="default 3")
    p.add_argument("--seeds", type=int, default=1, help="seeds per method (mean and std)")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--lr", type=float, help="default 0.05 (SGD Nesterov, cosine)")
    p.add_argument("--limit-train", type=int, help="train on a fixed random subset (quick runs)")
    p.add_argument("--limit-test", type=int, help="evaluate on a fixed random subset")
    p.add_argument("--hidden", type=_ints, metavar="W1,W2,...", help="mlp hidden widths / cnn channel widths")
    p.add_argument("--methods", type=_names, metavar="M1,M2,...", help="subset of dense,rbgp4,unstructured,block,hbsnn")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument(
        "--timing-rounds", type=int, default=7, help="interleaved rounds of the per-batch timings (median reported)"
    )
    p.add_argument(
        "--distribution",
        type=_names,
        metavar="D1,D2,...",
        help=f"how the global sparsity is spread over the layers: {', '.join(DISTRIBUTIONS)} "
        f"(default {DEFAULT_DISTRIBUTION}); a sweep takes several",
    )
    p.add_argument(
        "--sweep",
        type=_floats,
        metavar="S1,S2,...",
        help="accuracy-vs-sparsity curve at these global sparsities (--methods: the patterns, "
        "default rbgp4,unstructured)",
    )
    p.add_argument(
        "--curve", action="store_true", help=f"same as --sweep {','.join(f'{s:g}' for s in CURVE_SPARSITIES)}"
    )
    p.add_argument(
        "--data-dir", help="Fashion-MNIST folder (default $RBGP_FASHION_MNIST or /usr/share/datasets/fashion-mnist)"
    )
    p.add_argument("--out-dir", default="runs/demo", help="where the outputs go (default runs/demo)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rbgp.experiments.demo import DemoSettings, run_demo, run_sweep

    settings = DemoSettings(
        model=args.model,
        sparsity=args.sparsity,
        epochs=args.epochs,
        seeds=args.seeds,
        batch_size=args.batch_size,
        lr=args.lr,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        hidden=args.hidden,
        data_dir=args.data_dir,
        methods=args.methods,
        precision=args.precision,
        timing_rounds=args.timing_rounds,
        distribution=(args.distribution or [DEFAULT_DISTRIBUTION])[0],
    )
    sweep = args.sweep or (list(CURVE_SPARSITIES) if args.curve else None)
    if not sweep and args.distribution and len(args.distribution) > 1:
        raise ValueError(
            f"--distribution {','.join(args.distribution)}: the demo table takes one distribution; "
            f"several are for a --sweep or --curve"
        )
    command = "rbgp " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["demo"] else None
    patterns = [m for m in args.methods or ("rbgp4", "unstructured") if m != "dense"]
    _check_paths(args.data_dir, args.out_dir)
    settings.check(sweep, patterns, args.distribution or [])
    if args.dry_run:
        return _dry_run(
            f"rbgp demo ({'sweep ' + str(sweep) if sweep else 'table'}) into {args.out_dir}",
            dataclasses.asdict(settings),
        )
    if sweep:
        run_sweep(
            settings,
            sweep,
            args.out_dir,
            quiet=args.quiet,
            patterns=patterns,
            distributions=args.distribution or [DEFAULT_DISTRIBUTION],
            command=command,
        )
    else:
        run_demo(settings, args.out_dir, quiet=args.quiet, command=command)
    if not args.quiet:
        print(f"\n[rbgp demo] wrote {'curve' if sweep else 'demo'}.json/.md/.png to {args.out_dir}")
    return 0


# ----------------------------------------------------------------------------------------------
# rbgp methods
# ----------------------------------------------------------------------------------------------


def _add_methods(sub: argparse._SubParsersAction) -> None:
    from rbgp.experiments.methods_table import METHOD_ROWS, TARGETS

    p = sub.add_parser(
        "methods",
        help="sparse training methods side by side on Fashion-MNIST (about 25 minutes, CPU)",
        description="Train dense, static unstructured, gradual magnitude pruning, AutoSparse, RBGP4 "
        "uniform, RBGP4 ERK and RBGP4 at AutoSparse's learnt per-layer budget on Fashion-MNIST "
        "at each target sparsity (all rows of a seed at the sparsity AutoSparse learnt), and "
        "write methods.json, methods.md and methods.png: accuracy, global and per-layer "
        "sparsity, training and inference FLOPs against dense.",
    )
    p.add_argument("--model", choices=("mlp", "cnn"), default="cnn", help="default cnn")
    p.add_argument(
        "--targets",
        type=_floats,
        metavar="S1,S2,...",
        help=f"target sparsities (default {','.join(f'{t:g}' for t in TARGETS)})",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    p.add_argument("--epochs", type=int, default=3, help="default 3")
    p.add_argument(
        "--limit-train",
        type=int,
        default=20000,
        help="training images (a fixed random subset; default 20000, 0 = all 60000)",
    )
    p.add_argument("--limit-test", type=int, help="test images (default all 10000)")
    p.add_argument("--rows", type=_names, metavar="R1,R2,...", help=f"subset of {','.join(METHOD_ROWS)}")
    p.add_argument("--data-dir", help="Fashion-MNIST folder")
    p.add_argument("--out-dir", default="runs/methods", help="where the outputs go (default runs/methods)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_methods)


def _cmd_methods(args: argparse.Namespace) -> int:
    from rbgp.experiments.methods_table import TARGETS, MethodsSettings, parse_rows, run_methods

    settings = MethodsSettings(
        model=args.model,
        targets=tuple(args.targets or TARGETS),
        seeds=args.seeds,
        epochs=args.epochs,
        limit_train=args.limit_train or None,
        limit_test=args.limit_test,
        data_dir=args.data_dir,
        rows=parse_rows(args.rows),
    )
    command = "rbgp " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["methods"] else None
    _check_paths(args.data_dir, args.out_dir)
    settings.check()
    if args.dry_run:
        return _dry_run(f"rbgp methods into {args.out_dir}", dataclasses.asdict(settings))
    run_methods(settings, args.out_dir, quiet=args.quiet, command=command)
    if not args.quiet:
        print(f"\n[rbgp methods] wrote methods.json/.md/.png to {args.out_dir}")
    return 0


# ----------------------------------------------------------------------------------------------
# rbgp reproduce
# ----------------------------------------------------------------------------------------------


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the paper's CIFAR accuracy table (VGG19 / WRN-40-4)",
        description="Train the model dense and with unstructured, block and rbgp4 masks at each "
        "sparsity with the paper's recipe; write reproduce.json and reproduce.md. "
        "Interrupted reproductions resume. --smoke: a few steps on synthetic data.",
    )
    p.add_argument("--model", choices=("vgg19", "wrn40_4"), default="vgg19")
    p.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    p.add_argument("--data-dir", help="folder with the CIFAR python archive or its extracted folder")
    p.add_argument(
        "--sparsities", type=_floats, default=None, metavar="S1,S2,...", help="default 0.5,0.75,0.875,0.9375"
    )
    p.add_argument(
        "--patterns", type=_names, default=None, metavar="P1,P2,...", help="default unstructured,block,rbgp4"
    )
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument(
        "--smoke", action="store_true", help="synthetic CIFAR-shaped data, 1 epoch of 2 steps: checks the path only"
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each finished run's checkpoint (deleted by default to save disk)",
    )
    p.add_argument("--out-dir", help="default runs/reproduce_<model>[_smoke]")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rbgp.experiments.reproduce import (
        PAPER_SPARSITIES,
        REPRODUCE_PATTERNS,
        ReproduceSettings,
        run_reproduce,
    )

    if not args.smoke and args.data_dir is None:
        raise ValueError("--data-dir is required (the CIFAR archive's folder) unless --smoke")
    settings = ReproduceSettings(
        model=args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        sparsities=args.sparsities or PAPER_SPARSITIES,
        patterns=args.patterns or REPRODUCE_PATTERNS,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_steps=args.max_steps,
        seed=args.seed,
        precision=args.precision,
        smoke=args.smoke,
        keep_checkpoints=args.keep_checkpoints,
    )
    out = args.out_dir or f"runs/reproduce_{args.model}{'_smoke' if args.smoke else ''}"
    _check_paths(args.data_dir, out)
    runs = settings.configs()
    if args.dry_run:
        return _dry_run(f"rbgp reproduce ({len(runs)} runs) into {out}", {name: c.to_dict() for name, c in runs})
    run_reproduce(settings, out, quiet=args.quiet)
    return 0
