"""`rbgp bench`: layer benchmarks written to benchmarks/ as JSON, markdown and PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rbgp.allocator import ALLOCATORS, tune_cpu_allocator
from rbgp.nn.distribution import DEFAULT_DISTRIBUTION

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time RBGP layers against dense, torch CSR and torch BSR",
        description="Time forward and forward+backward of RBGP layers against dense, torch CSR "
        "and torch BSR at the same density; write JSON, a markdown table and a plot.",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="fp32 on cpu (default), bf16 on cuda (default); fp32 on cuda runs without TF32",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement (median reported)")
    p.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    p.add_argument("--out-dir", default="benchmarks", help="where results go (default benchmarks/)")
    p.add_argument("--name", help="file stem (default cpu, gpu-<device name> or models-<device name>)")
    p.add_argument(
        "--suite",
        default="layers",
        choices=["layers", "models", "decode"],
        help="layers: single layers against dense/CSR/BSR/2:4 (default); models: VGG19-bn, ResNet-18 "
        "and WRN-40-4 for CIFAR, dense vs sparsified, inference and a training step; decode: a "
        "LLaMA-shaped decoder, prefill and greedy decode, dense vs RBGP with fp32/bf16/int8 values (CPU)",
    )
    p.add_argument(
        "--decode-sparsity",
        default="0.75,0.9",
        help="decode suite: comma-separated sparsities of the converted models (default 0.75,0.9)",
    )
    p.add_argument("--only", choices=["linear", "conv"], help="layers on cuda: run only the linear or the conv cases")
    p.add_argument("--models", default="vgg19,resnet18,wrn40_4", help="models suite: comma-separated names")
    p.add_argument("--batch", type=int, default=128, help="models suite: images per batch (default 128)")
    p.add_argument("--sparsity", type=float, default=0.9, help="models suite: global sparsity of the converted layers")
    p.add_argument(
        "--distribution",
        default=DEFAULT_DISTRIBUTION,
        help=f"models suite: comma-separated sparsity distributions (uniform, erk, hw; default {DEFAULT_DISTRIBUTION})",
    )
    p.add_argument("--per-layer", action="store_true", help="models suite: also time every converted layer alone")
    p.add_argument(
        "--compile",
        choices=["no", "yes", "both"],
        default="no",
        help="models suite: time eager, torch.compile (inductor) or both (default no)",
    )
    p.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="tuned",
        help="tuned (default): keep freed memory for reuse (rbgp.tune_cpu_allocator), so that timings "
        "do not depend on page faults; default: the C library's own settings",
    )
    p.set_defaults(func=_cmd_bench)


def _set_allocator(choice: str) -> None:
    """Tune the process's allocator for timing (see rbgp.allocator), or say why it could not be."""
    if choice == "tuned" and not tune_cpu_allocator():
        print(
            "[bench] note: the allocator could not be tuned (not glibc); timings use the C library's defaults",
            file=sys.stderr,
        )


def _allocator_flag(choice: str) -> str:
    return "" if choice == "tuned" else f" --allocator {choice}"


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from rbgp.experiments.bench.kernels import default_cases, environment, run_case
    from rbgp.experiments.bench.report import markdown_table, plot_speedups

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} asked for but torch sees no CUDA device; use --device cpu")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    args.dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    from rbgp.files import check_output_dir, check_output_file

    check_output_dir(args.out_dir, "--out-dir")
    if args.name is not None and (not args.name.strip() or Path(args.name).name != args.name):
        raise ValueError(f"--name {args.name!r} must be a plain file stem (no folders); use --out-dir for the folder")
    if args.name is not None:
        check_output_file(Path(args.out_dir) / f"{args.name}.json", "--name")
    if args.suite == "models":
        return _cmd_models(args)
    if args.suite == "decode":
        return _cmd_decode(args)
    if args.dry_run:
        print(
            f"[dry run] settings checked; would run the layer benchmarks on {args.device} ({args.dtype}) "
            f"into {args.out_dir}"
        )
        return 0
    _set_allocator(args.allocator)
    command = (
        f"rbgp bench --device {args.device} --dtype {args.dtype} --repeats {args.repeats}"
        + (" --quick" if args.quick else "")
        + (f" --only {args.only}" if args.only else "")
        + _allocator_flag(args.allocator)
    )
    if args.device.startswith("cuda"):
        from rbgp.experiments.bench.gpu import run_gpu_bench

        run_gpu_bench(args.out_dir, args.dtype, args.quick, command, only=args.only, stem=args.name)
        return 0
    dtype = getattr(torch, DTYPES[args.dtype])
    env = environment(args.device)
    stem = args.name or (
        "cpu" if args.device == "cpu" else "gpu-" + env.get("device_name", "cuda").replace(" ", "-").lower()
    )
    if args.quick and not args.name:
        stem += "-quick"
    results = []
    cases = default_cases(args.quick)
    for case in tqdm(cases, desc="bench", unit="case", file=sys.stderr):
        results.append(run_case(case, args.device, dtype, args.repeats))
    data = {"command": command, "dtype": args.dtype, "environment": env, "results": results}
    _write_results(Path(args.out_dir), stem, data, markdown_table(data), plot_speedups)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from rbgp.experiments.bench.models import markdown_table, run_model_bench

    modes = {"no": (False,), "yes": (True,), "both": (False, True)}[args.compile]
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    dists = tuple(d.strip() for d in args.distribution.split(",") if d.strip())
    from rbgp.nn.distribution import DISTRIBUTIONS

    bad = [d for d in dists if d not in DISTRIBUTIONS]
    if bad or not dists:
        raise ValueError(f"--distribution {args.distribution!r}: valid names are {', '.join(DISTRIBUTIONS)}")
    from rbgp.experiments.bench.models import MODELS

    if not models or any(m not in MODELS for m in models):
        raise ValueError(f"--models {args.models!r}: valid names are {', '.join(MODELS)}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if not 0 < args.sparsity < 1:
        raise ValueError(f"--sparsity must be in (0, 1), got {args.sparsity}")
    command = (
        f"rbgp bench --suite models --device {args.device} --dtype {args.dtype} --models {','.join(models)} "
        f"--batch {args.batch} --sparsity {args.sparsity} --distribution {','.join(dists)} "
        f"--compile {args.compile}"
        + (" --per-layer" if args.per_layer else "")
        + (" --quick" if args.quick else "")
        + _allocator_flag(args.allocator)
    )
    if args.dry_run:
        print(f"[dry run] settings checked; would run: {command}")
        return 0
    _set_allocator(args.allocator)
    data = run_model_bench(
        args.out_dir,
        args.device,
        args.dtype,
        models,
        args.batch,
        args.sparsity,
        modes,
        args.quick,
        args.name,
        command,
        dists,
        args.per_layer,
    )
    print(markdown_table(data))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from rbgp.experiments.bench.decode import decode_markdown, plot_decode, run_decode_bench

    if args.device != "cpu" or args.dtype != "fp32":
        raise ValueError("--suite decode runs on the CPU with fp32 activations (--device cpu --dtype fp32)")
    try:
        sparsities = [float(s) for s in args.decode_sparsity.split(",")]
    except ValueError:
        raise ValueError(f"--decode-sparsity must be comma-separated numbers, got {args.decode_sparsity!r}") from None
    bad = [s for s in sparsities if not 0 < s < 1]
    if bad or not sparsities:
        raise ValueError(f"--decode-sparsity values must lie in (0, 1), got {args.decode_sparsity!r}")
    if args.dry_run:
        print(f"[dry run] settings checked; would time the decode suite at sparsity {sparsities} into {args.out_dir}")
        return 0
    _set_allocator(args.allocator)
    command = (
        f"rbgp bench --suite decode --decode-sparsity {','.join(f'{s:g}' for s in sparsities)} "
        f"--repeats {args.repeats}" + (" --quick" if args.quick else "") + _allocator_flag(args.allocator)
    )
    progress = lambda line: print(f"[decode] {line}", file=sys.stderr, flush=True)
    data = run_decode_bench(sparsities, args.repeats, args.quick, command, progress)
    stem = args.name or ("decode-quick" if args.quick else "decode")
    _write_results(Path(args.out_dir), stem, data, decode_markdown(data), plot_decode)
    return 0


def _write_results(out: Path, stem: str, data: dict, table: str, plot) -> None:
    """`stem`.json, .md (the table, also printed) and .png (`plot(data, path)`) in `out`."""
    from rbgp.files import write_json, write_text

    write_json(out / f"{stem}.json", data)
    write_text(out / f"{stem}.md", table)
    plot(data, out / f"{stem}.png")
    print(table)
    print(f"wrote {out / (stem + '.json')}, .md and .png")
