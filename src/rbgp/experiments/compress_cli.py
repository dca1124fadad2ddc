"""`rbgp compress`: write a training run's model as a compressed file and print the size report."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from rbgp.compress.quantize import QUANTIZERS
from rbgp.files import check_input_dir, check_output_file
from rbgp.resources import check_memory

if TYPE_CHECKING:
    from rbgp.compress.infer import BudgetPlan, CompressedRunner

__all__ = ["add_compress_parser", "model_from_checkpoint", "model_from_config"]


def add_compress_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="write a run's model as a compressed file; print its size in every representation",
        description="Rebuild the model of an `rbgp train` checkpoint, write it to OUT in the compressed "
        "format (safetensors, no pickle; RBGP layers as values + structure id) and print the "
        "bytes it takes as dense fp32, CSR, BSR and RBGP succinct, each raw, quantised and "
        "quantised + Huffman-coded, with the ratios to dense fp32.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="RUN/checkpoint.pt of `rbgp train` (or the RUN folder)")
    p.add_argument("out", metavar="OUT", help="the compressed file to write")
    p.add_argument(
        "--quantize",
        choices=tuple(QUANTIZERS),
        help="quantise the weights in OUT (per-row scales; the report uses it, default int8)",
    )
    p.add_argument("--huffman", action="store_true", help="Huffman-code the quantised symbols in OUT")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.set_defaults(func=_cmd_compress)
    _add_infer(sub)


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="run a compressed model under a memory (and latency) budget, batch size chosen for speed",
        description="Read a file written by `rbgp compress`, rebuild its model, and run it on data under a "
        "memory budget: weights decoded once if they fit, else layer by layer; the batch size "
        "(a power of two) with the best measured throughput within the budgets is chosen and "
        "compared with a fixed batch size.",
    )
    p.add_argument("file", metavar="FILE", help="a compressed model file from `rbgp compress`")
    p.add_argument(
        "--data",
        default="test",
        choices=("test", "synthetic"),
        help="the test split of the model's data set (default), or synthetic inputs of its shape",
    )
    p.add_argument("--data-dir", help="folder of the data set")
    p.add_argument("--samples", type=int, default=2048, help="inputs to run (default 2048)")
    p.add_argument("--memory-budget", default="64MB", help="e.g. 64MB (default), 512KB, 1GB")
    p.add_argument("--latency-budget", metavar="MS", help="largest time per batch, e.g. 50ms or 0.05s")
    p.add_argument(
        "--fixed-batch", default="1,16", metavar="B1,B2,...", help="fixed batch sizes to compare with (default 1,16)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.set_defaults(func=_cmd_infer)


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    t = text.strip().lower()
    try:
        value = float(t[:-2]) / 1e3 if t.endswith("ms") else float(t[:-1]) if t.endswith("s") else float(t) / 1e3
    except ValueError:
        raise ValueError(f"--latency-budget {text!r}: expected e.g. 50ms or 0.05s") from None
    if not value > 0:
        raise ValueError(f"--latency-budget {text!r} must be positive")
    return value


def _cmd_infer(args: argparse.Namespace) -> int:
    from rbgp.compress.format import read
    from rbgp.compress.infer import CompressedRunner, parse_bytes, process_memory, run_all
    from rbgp.experiments.data import dataset_shape, get_dataset, synthetic
    from rbgp.files import write_json

    budget, latency = parse_bytes(args.memory_budget), _seconds(args.latency_budget)
    try:
        fixed_batches = [int(b) for b in args.fixed_batch.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--fixed-batch {args.fixed_batch!r}: expected comma-separated integers") from None
    if args.samples < 1 or not fixed_batches or min(fixed_batches) < 1:
        raise ValueError(f"--samples and --fixed-batch must be >= 1, got {args.samples} and {args.fixed_batch}")
    if args.json:
        check_output_file(args.json, "--json")
    if args.data_dir is not None:
        check_input_dir(args.data_dir, "--data-dir")
    baseline = process_memory("VmRSS")
    header, _ = read(args.file)
    config = header.get("extra", {}).get("train_config")
    if not isinstance(config, dict):
        raise ValueError(f"{args.file} does not say how to build its model (write it with `rbgp compress`)")
    run = CompressedRunner(args.file, model_from_config(config))
    classes, shape = dataset_shape(config["dataset"])
    if args.data == "synthetic":
        check_memory(args.samples * math.prod(shape) * 4, f"--samples {args.samples} synthetic inputs")
        x = synthetic(args.samples, shape, classes, seed=0)[0]
    else:
        x = get_dataset(config["dataset"], args.data_dir, "test").x[: args.samples]
    if args.dry_run:
        print(
            f"[dry run] {args.file} and the settings checked; would run {x.shape[0]} inputs of shape "
            f"{tuple(shape)} under a {budget:,} B memory budget, compared with fixed batches {fixed_batches}"
        )
        return 0
    plan = run.plan(x, budget, latency)
    chosen = run_all(run, x, plan.batch_size)
    fixed: dict[int, dict | None] = {}
    for b in fixed_batches:
        mode = run.fixed_mode(x, budget, b)
        if mode is not None:
            run.set_mode(mode)
        fixed[b] = None if mode is None else {"mode": mode, **run_all(run, x, b)}
    _print_inference(args.file, run, plan, chosen, fixed, budget, latency, baseline, x.shape[0])
    if args.json:
        write_json(
            args.json,
            {
                "file": str(args.file),
                "memory_budget": budget,
                "latency_budget_s": latency,
                "compressed_bytes": run.compressed_bytes,
                "decoded_bytes": run.decoded_bytes,
                "plan": {
                    "mode": plan.mode,
                    "batch": plan.batch_size,
                    "estimate_bytes": plan.estimate_bytes,
                    "candidates": plan.candidates,
                },
                "chosen": chosen,
                "fixed": {str(b): f for b, f in fixed.items()},
                "baseline_rss_bytes": baseline,
            },
        )
    return 0


def _print_inference(
    file: str,
    run: CompressedRunner,
    plan: BudgetPlan,
    chosen: dict,
    fixed: dict,
    budget: int,
    latency: float | None,
    baseline: int,
    n: int,
) -> None:
    """The `rbgp infer` summary: the plan's candidates, the chosen mode and batch, each fixed batch."""
    print(
        f"{file}: {run.compressed_bytes:,} B compressed, {run.decoded_bytes:,} B decoded; memory budget "
        f"{budget:,} B" + (f", latency budget {latency * 1e3:g} ms" if latency else "")
    )
    print("| mode | batch | throughput (samples/s) | latency (ms) | estimated bytes |\n|---|---|---|---|---|")
    for name, c in plan.candidates.items():
        mode, batch = name.split()
        print(f"| {mode} | {batch} | {c['throughput']:.0f} | {c['latency_s'] * 1e3:.1f} | {c['estimate_bytes']:,.0f} |")
    print(
        f"chosen: {plan.mode}, batch {plan.batch_size}: {chosen['throughput']:.0f} samples/s over {n} "
        f"inputs, peak RSS {chosen['peak_rss_bytes'] / 2**20:.1f} MiB (process; {baseline / 2**20:.1f} MiB "
        f"before the file was read)"
    )
    for b, f in fixed.items():
        print(
            f"fixed batch {b}: does not fit the memory budget in either mode"
            if f is None
            else f"fixed batch {b} ({f['mode']}): {f['throughput']:.0f} samples/s; chosen / fixed = "
            f"{chosen['throughput'] / f['throughput']:.2f}x"
        )


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The trained model of an `rbgp train` checkpoint and its training config, with plain weights (masks
    and thresholds of magnitude / AutoSparse runs baked in)."""
    from rbgp.experiments.checkpoint import CHECKPOINT_NAME, load_checkpoint

    path = Path(path)
    saved = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
    model = model_from_config(saved["args"], saved["model"])
    return model, saved["args"]


def model_from_config(args: dict, state: dict | None = None) -> nn.Module:
    """The model a training config builds (sparsified, methods' masks baked in), in eval mode, for weights
    that come from a file next (`state`, the checkpoint's model state loaded before baking, or a
    compressed file): a converted run's dense start (`init_from`) is not read, the files hold it all."""
    from rbgp.experiments.checkpoint import mismatch_reason
    from rbgp.experiments.config import LEGACY_DEFAULTS, TrainConfig
    from rbgp.experiments.data import dataset_shape
    from rbgp.experiments.loop import build_run_model
    from rbgp.train.methods import bake, make_method

    config = TrainConfig.from_dict({**LEGACY_DEFAULTS, **args})
    classes, shape = dataset_shape(config.dataset)
    model, _ = build_run_model(config, classes, shape, from_state=True)
    make_method(config).prepare(model, 1)
    if state is not None:
        try:
            model.load_state_dict(state)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"the saved weights do not fit the model their config builds ({mismatch_reason(err)})"
            ) from err
    return bake(model).eval()


def _cmd_compress(args: argparse.Namespace) -> int:
    from rbgp.compress.format import save
    from rbgp.compress.report import size_report, size_table
    from rbgp.files import write_json

    check_output_file(args.out, "OUT")
    if args.json:
        check_output_file(args.json, "--json")

    model, config = model_from_checkpoint(args.checkpoint)
    header = save(model, args.out, quantize=args.quantize, huffman=args.huffman, extra={"train_config": config})
    table = size_table(model, args.quantize or "int8")
    what = f"{args.quantize or 'fp32'}{' + Huffman' if args.huffman else ''}"
    print(size_report(table))
    print(
        f"\nwrote {args.out}: {header['file_bytes']:,} bytes ({what}); dense fp32 would take "
        f"{table['rows'][0]['raw']:,} ({table['rows'][0]['raw'] / header['file_bytes']:.1f}x)"
    )
    if args.json:
        write_json(
            args.json,
            {
                **table,
                "file": str(args.out),
                "file_bytes": header["file_bytes"],
                "file_quantize": args.quantize,
                "file_huffman": args.huffman,
            },
        )
    return 0
