"""The training loop: sparse model building, epochs, metrics, checkpoints and exact resume.

One :class:`TrainConfig` describes a run completely; everything structural (model init, masks,
data order, augmentation) is a pure function of it, so a run killed after epoch ``k`` and resumed
from its checkpoint ends with the same metrics as an uninterrupted one (on CPU, in deterministic
mode). Per-epoch metrics go to ``metrics.jsonl`` and ``metrics.csv``; the checkpoint is written
atomically and checksummed (`rbgp.experiments.checkpoint`).
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rbgp.experiments import ddp
from rbgp.experiments.checkpoint import (
    CHECKPOINT_NAME,
    check_resumable,
    checkpoint_state,
    load_checkpoint,
    restore,
    save_checkpoint,
    warn_other_thread_count,
)
from rbgp.experiments.config import TrainConfig
from rbgp.experiments.data import (
    LoadedDataset,
    TensorLoader,
    check_dataset,
    dataset_shape,
    default_transform,
    get_dataset,
)
from rbgp.experiments.models import MLP, SmallCNN, build_model
from rbgp.files import atomic_write, check_output_dir, folder_lock, remove_stale_temps, write_json
from rbgp.nn import SPARSE_TYPES, SparsifyReport, sparsify
from rbgp.precision import bf16_autocast
from rbgp.resources import check_memory
from rbgp.train.flops import flops, layer_nnz, layer_positions
from rbgp.train.methods import Method, make_method
from rbgp.train.steps import train_step

__all__ = [
    "METRIC_FIELDS",
    "TrainResult",
    "TrainingDiverged",
    "build_run_model",
    "evaluate",
    "preflight",
    "sparse_layers",
    "train",
]

METRIC_FIELDS: tuple[str, ...] = (
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
    "train_ms_per_batch", "train_ms_per_batch_median", "steps", "sparsity", "infer_flops",
    "infer_flops_dense", "train_flops", "train_flops_dense",
)  # fmt: skip


@dataclass
class TrainResult:
    """What :func:`train` returns: the per-epoch history and the trained (unwrapped) model."""

    config: TrainConfig
    history: list[dict[str, float]]
    model: nn.Module
    report: SparsifyReport | None
    out_dir: Path | None
    stopped_early: bool = False

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


# ----------------------------------------------------------------------------------------------
# Model and data
# ----------------------------------------------------------------------------------------------


def _pattern_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples the patterns expect (block sizes etc.)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def build_run_model(
    config: TrainConfig, num_classes: int, input_shape: Sequence[int], from_state: bool = False
) -> tuple[nn.Module, SparsifyReport | None]:
    """The model of ``config`` with its static structure (``pattern``; for method "budgeted", at the
    budget's per-layer sparsities); a pure function of ``config`` (seeds included). Methods that
    make their own masks attach them afterwards (`Method.prepare`).

    from_state: a saved state (a checkpoint, a compressed file) is loaded into the model next. RBGP
    layers take their weights and any structure fitted to the dense start from it, so ``init_from`` is
    then not read (the run needs no file but its own) and nothing is fitted again; masked patterns
    still refit their masks (a compressed file keeps only their digest)."""
    _check_model_memory(config, num_classes, input_shape)
    torch.manual_seed(config.seed)
    model = _build(config, num_classes, input_shape)
    from_state = from_state and config.pattern == "rbgp4"
    if config.init_from is not None and not from_state:
        _load_dense_start(model, config.init_from)
    report = None
    if config.pattern != "dense":  # with init_from and pattern dense: fine-tune the dense model
        budget = config.method_kwargs.get("budget") if config.method == "budgeted" else None
        report = sparsify(
            model,
            budget or config.sparsity,
            config.pattern,
            exclude=tuple(config.exclude),
            seed=config.seed,
            init="kaiming" if from_state and config.init == "magnitude" else config.init,
            distribution=config.distribution,
            **_pattern_kwargs(config.pattern_kwargs),
        )
    return model, report


def _build(config: TrainConfig, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    cin, size = int(input_shape[0]), int(input_shape[-1])
    mk = config.model_kwargs
    if config.model == "mlp" and "hidden" in mk:
        return MLP(cin * size * size, [int(h) for h in mk["hidden"]], num_classes)
    if config.model == "cnn" and "channels" in mk:
        return SmallCNN(cin, num_classes, [int(c) for c in mk["channels"]])
    return build_model(config.model, num_classes, cin, size)


def _check_model_memory(config: TrainConfig, num_classes: int, input_shape: Sequence[int]) -> None:
    """ValueError when the run's model cannot fit in this machine's memory (counted on the meta device)."""
    with torch.device("meta"):  # parameters counted without allocating them
        params = sum(p.numel() for p in _build(config, num_classes, input_shape).parameters())
    # weights, gradients, momentum, masks and a checkpoint copy: about 5 fp32 copies
    check_memory(20 * params, f"model {config.model!r} with {params:,} parameters")


def check_run(config: TrainConfig) -> None:
    """What a run would refuse before its first step, checked without doing the work (`--dry-run`): the
    device exists, the data set's files are there, the model fits in memory, and an `init_from`
    checkpoint loads and fits the model."""
    ddp.resolve_device(config.device)
    check_dataset(config.dataset, config.data_dir)
    num_classes, shape = dataset_shape(config.dataset)
    _check_model_memory(config, num_classes, shape)
    if config.init_from is not None:
        _load_dense_start(_build(config, num_classes, shape), config.init_from)


def _load_dense_start(model: nn.Module, path: str) -> None:
    """Load the weights of a dense run's checkpoint (same model) to convert from (`init_from`)."""
    saved = load_checkpoint(path)
    if saved["args"].get("pattern") != "dense":
        raise ValueError(
            f"{path}: init_from needs the checkpoint of a dense run, this one is "
            f"{saved['args'].get('pattern')!r} (train it with --pattern dense)"
        )
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as err:
        raise ValueError(
            f"{path}: its model does not match this run's (same --model, --hidden and data set "
            f"needed): {str(err).splitlines()[0]}"
        ) from None


def _subset(ds: LoadedDataset, limit: int | None) -> LoadedDataset:
    """A fixed random subset (the same for every seed, so runs stay comparable)."""
    if limit is None or limit >= ds.x.shape[0]:
        return ds
    idx = torch.randperm(ds.x.shape[0], generator=torch.Generator().manual_seed(1234))[:limit]
    idx = idx.sort().values
    return LoadedDataset(ds.x[idx], ds.y[idx], ds.num_classes, ds.input_shape)


def load_data(
    config: TrainConfig, data: tuple[LoadedDataset, LoadedDataset] | None = None
) -> tuple[LoadedDataset, LoadedDataset]:
    """Train and test splits of ``config.dataset`` (or the given ones), with the limits applied."""
    if data is None:
        data = (
            get_dataset(config.dataset, config.data_dir, "train"),
            get_dataset(config.dataset, config.data_dir, "test"),
        )
    return _subset(data[0], config.limit_train), _subset(data[1], config.limit_test)


# ----------------------------------------------------------------------------------------------
# Metrics files
# ----------------------------------------------------------------------------------------------


def _write_metrics(out_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite metrics.jsonl and metrics.csv from ``history`` (each atomically)."""
    for name, render in (("metrics.jsonl", _render_jsonl), ("metrics.csv", _render_csv)):
        with atomic_write(out_dir / name, "w") as f:
            render(f, history)


def _render_jsonl(f: Any, history: list[dict[str, Any]]) -> None:
    for row in history:
        f.write(json.dumps(row) + "\n")


def _render_csv(f: Any, history: list[dict[str, float]]) -> None:
    writer = csv.DictWriter(f, fieldnames=list(METRIC_FIELDS))
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in METRIC_FIELDS})


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    info: ddp.DistInfo | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (in %) on ``(x, y)``; sharded over ranks when distributed."""
    device = torch.device(device)
    if info is not None and info.distributed:
        x, y = x[info.rank :: info.world_size], y[info.rank :: info.world_size]
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0.0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            with bf16_autocast(device, precision == "bf16"):
                out = model(xb)
            loss_sum += float(F.cross_entropy(out.float(), yb, reduction="sum"))
            correct += float((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    count = float(x.shape[0])
    if info is not None:
        loss_sum, correct, count = ddp.all_reduce_sums([loss_sum, correct, count], info)
    return loss_sum / max(count, 1.0), 100.0 * correct / max(count, 1.0)


def _make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    milestones = config.milestones if config.schedule == "multistep" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)


BatchHook = Callable[[int, int, float], None]
_RUN_FILES = (CHECKPOINT_NAME, "metrics.jsonl", "metrics.csv", "run.json")


class TrainingDiverged(ValueError):
    """The loss became NaN or inf: the run stops, keeping the last checkpoint (of a finite epoch)."""


def _train_epoch(
    model: nn.Module,
    loader: TensorLoader,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    info: ddp.DistInfo,
    method: Method,
    epoch: int,
    show_progress: bool,
    on_batch: BatchHook | None,
) -> dict[str, float]:
    model.train()
    device = info.device
    steps = len(loader) if config.max_steps is None else min(len(loader), config.max_steps)
    loss_sum = correct = count = 0.0
    step_times: list[float] = []
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch}/{config.epochs}",
        leave=False,
        file=sys.stderr,
        disable=not show_progress,
        dynamic_ncols=True,
    )
    for step, (xb, yb) in enumerate(loader):
        if step >= steps:
            break
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        _sync(device)
        t0 = time.perf_counter()
        loss, out = train_step(
            model, xb, yb, optimizer, method, (epoch - 1) * steps + step + 1, config.precision == "bf16"
        )
        _sync(device)
        dt = time.perf_counter() - t0
        if xb.shape[0] == config.batch_size:  # a short last batch would skew the per-batch time
            step_times.append(dt)
        loss_value = float(loss)
        if not info.distributed:  # ranks must stop together: distributed runs check the epoch's mean
            _check_finite_loss(loss_value, epoch, f"step {step + 1}")
        n = float(yb.shape[0])
        loss_sum += loss_value * n
        correct += float((out.argmax(1) == yb).sum())
        count += n
        bar.update(1)
        if show_progress:
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        if on_batch is not None:
            on_batch(epoch, step, loss_value)
    bar.close()
    loss_sum, correct, count = ddp.all_reduce_sums([loss_sum, correct, count], info)
    _check_finite_loss(loss_sum, epoch, "the epoch's mean")
    times = step_times or [float("nan")]
    return {
        "train_loss": loss_sum / max(count, 1.0),
        "train_acc": 100.0 * correct / max(count, 1.0),
        "train_ms_per_batch": 1e3 * float(np.mean(times)),
        "train_ms_per_batch_median": 1e3 * float(np.median(times)),
        "steps": steps,
    }


def _check_finite_loss(value: float, epoch: int, where: str) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"training diverged: epoch {epoch}, {where}: the loss is {value}; try a smaller --lr, or --precision fp32"
        )


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    quiet: bool = False,
    stop_after_epoch: int | None = None,
    on_batch: BatchHook | None = None,
    data: tuple[LoadedDataset, LoadedDataset] | None = None,
) -> TrainResult:
    """Train ``config`` and return its history; write metrics and checkpoints under ``out_dir``.

    ``resume`` continues from ``out_dir/checkpoint.pt`` (settings must match; no checkpoint is an
    error, unless ``resume="if-present"``, which then starts fresh); without it an existing
    checkpoint is an error unless ``overwrite``. Temp files of an interrupted write are removed. A
    loss that becomes NaN or inf stops the run with `TrainingDiverged`, keeping the last checkpoint.
    ``stop_after_epoch`` ends the run after that epoch's checkpoint (as if killed there).
    ``on_batch(epoch, step, loss)`` is called after every optimizer step. ``data`` skips loading the dataset.
    Under torchrun (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel, data is
    sharded by rank and only rank 0 writes files or prints.
    """
    info = ddp.setup(config.device)
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = torch.backends.cudnn.benchmark
    try:
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        lock = folder_lock(out_dir, _say_stale) if out_dir is not None and info.is_main else nullcontext()
        with lock:  # one writer per run folder: a second run into it stops here, before touching a file
            return _run(config, info, out_dir, resume, overwrite, quiet, stop_after_epoch, on_batch, data)
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)
        torch.backends.cudnn.benchmark = prev_cudnn
        ddp.cleanup(info)


def _say_stale(message: str) -> None:
    print(f"[rbgp train] {message}", file=sys.stderr)


def preflight(
    config: TrainConfig, out_dir: str | Path | None, resume: bool | str = False, overwrite: bool = False
) -> dict[str, Any] | None:
    """The checks `train` makes before any work: the run folder can be written, ``resume`` and
    ``overwrite`` fit what it holds, a checkpoint to resume is sound and made with the same settings.
    Returns that checkpoint (None when starting fresh); ValueError otherwise."""
    out = check_output_dir(out_dir, "out_dir (--out-dir)") if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    if resume not in (False, True, "if-present"):
        raise ValueError(f"resume must be True, False or 'if-present', got {resume!r}")
    if ckpt_path is not None and ckpt_path.exists() and not (resume or overwrite):
        raise ValueError(
            f"{out} already holds a checkpoint; pass --resume to continue it, --overwrite to "
            f"start over, or choose another --out-dir"
        )
    if resume and out is None:
        raise ValueError("resume needs an out_dir holding the checkpoint")
    if not resume:
        return None
    assert ckpt_path is not None  # resume has an out_dir (checked above)
    if resume is True and not ckpt_path.exists():
        raise ValueError(
            f"--resume: no checkpoint at {ckpt_path}, nothing to continue; drop --resume to start "
            f"a new run there, or pass --resume-if-present to start fresh when there is none"
        )
    if not ckpt_path.exists():
        return None
    saved = load_checkpoint(ckpt_path)  # fail on a bad file before any expensive work
    check_resumable(saved["args"], config, ckpt_path)
    warn_other_thread_count(saved, ckpt_path)
    return saved


def _check_out_dir(
    saved: dict | None, out: Path | None, ckpt_path: Path | None, info: ddp.DistInfo, quiet: bool
) -> None:
    """Refuse resuming with another process count; remove temp files an interrupted write left."""
    if saved is not None and saved.get("world_size", 1) != info.world_size:
        raise ValueError(
            f"{ckpt_path}: checkpoint was written by a run of {saved.get('world_size')} "
            f"process(es), this one has {info.world_size}; the data shards (and numbers) "
            f"would differ, so resume with the same number of processes"
        )
    if out is not None and info.is_main and out.is_dir():
        for stale in remove_stale_temps(out, _RUN_FILES):
            if not quiet:
                print(f"[rbgp train] removed {stale.name}, a temp file left by an interrupted write", file=sys.stderr)


def _start_run_files(
    out: Path | None, config: TrainConfig, info: ddp.DistInfo, report, history: list, resumed_at: int | None, log: bool
) -> None:
    """Write run.json and the metrics so far (main process), and say what runs."""
    if out is not None and info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / "run.json",
            {
                "config": config.to_dict(),
                "world_size": info.world_size,
                "sparsify": report.to_dict() if report else None,
            },
        )
        _write_metrics(out, history)
    if log:
        what = _describe(config, report)
        where = f", resuming after epoch {resumed_at - 1}" if resumed_at is not None else ""
        print(
            f"[rbgp train] {config.model} on {config.dataset}, {what}, {config.precision}, "
            f"{info.world_size} process(es) on {info.device}{where}",
            flush=True,
        )


def _run(
    config: TrainConfig,
    info: ddp.DistInfo,
    out_dir: str | Path | None,
    resume: bool | str,
    overwrite: bool,
    quiet: bool,
    stop_after_epoch: int | None,
    on_batch: BatchHook | None,
    data: tuple[LoadedDataset, LoadedDataset] | None,
) -> TrainResult:
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    saved = preflight(config, out, resume, overwrite)
    _check_out_dir(saved, out, ckpt_path, info, quiet)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    train_ds, test_ds = _run_data(config, data, info)
    model, report = build_run_model(config, train_ds.num_classes, train_ds.input_shape, from_state=saved is not None)
    loader = _train_loader(config, train_ds, info)
    steps = len(loader) if config.max_steps is None else min(len(loader), config.max_steps)
    method = make_method(config)
    method.prepare(model, steps * config.epochs)
    model.to(info.device)
    positions = layer_positions(model, train_ds.input_shape, info.device)
    optimizer = _make_optimizer(config, method.param_groups(model))
    scheduler = _make_scheduler(config, optimizer)
    history: list[dict[str, float]] = []
    start_epoch = 1
    if saved is not None:
        assert ckpt_path is not None  # preflight loads a checkpoint only from an out_dir
        restore(saved, model, optimizer, scheduler, ckpt_path)
        history = [dict(r) for r in saved["history"]]
        start_epoch = int(saved["epoch"]) + 1

    log = info.is_main and not quiet
    _start_run_files(out, config, info, report, history, start_epoch if saved is not None else None, log)

    net = ddp.wrap(model, info)
    show_progress = log and sys.stderr.isatty()
    stopped = False
    for epoch in range(start_epoch, config.epochs + 1):
        loader.set_epoch(epoch - 1)
        method.on_epoch_start(epoch)
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        row: dict[str, Any] = {"epoch": epoch}
        before = _sparsity_metrics(model, method, positions)
        try:
            row.update(_train_epoch(net, loader, optimizer, config, info, method, epoch, show_progress, on_batch))
        except TrainingDiverged as err:
            kept = f"the checkpoint of epoch {epoch - 1} in {out} is kept" if out and epoch > 1 else "no checkpoint"
            raise TrainingDiverged(f"{err}; {kept}") from None
        scheduler.step()
        row.update(_epoch_accounting(model, method, positions, before, history, row["steps"], config, info))
        row["test_loss"], row["test_acc"] = evaluate(
            model, test_ds.x, test_ds.y, config.eval_batch_size, info.device, config.precision, info
        )
        row["lr"] = lr
        row["epoch_time_s"] = time.perf_counter() - t0
        history.append(row)
        if out is not None and info.is_main:
            save_checkpoint(
                out / CHECKPOINT_NAME,
                {
                    **checkpoint_state(config, epoch, model, optimizer, scheduler, history),
                    "world_size": info.world_size,
                },
            )
            _write_metrics(out, history)
        if log:
            print(_epoch_line(row, config.epochs), flush=True)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
            stopped = True
            break
    return TrainResult(config, history, model, report, out, stopped)


def _run_data(
    config: TrainConfig, data: tuple[LoadedDataset, LoadedDataset] | None, info: ddp.DistInfo
) -> tuple[LoadedDataset, LoadedDataset]:
    """(train, test) of the run, moved to the GPU when training there (they fit: no per-batch copies)."""
    train_ds, test_ds = load_data(config, data)
    if info.device.type == "cuda":
        train_ds = train_ds._replace(x=train_ds.x.to(info.device), y=train_ds.y.to(info.device))
        test_ds = test_ds._replace(x=test_ds.x.to(info.device), y=test_ds.y.to(info.device))
    return train_ds, test_ds


def _train_loader(config: TrainConfig, train_ds: LoadedDataset, info: ddp.DistInfo) -> TensorLoader:
    """The run's shuffled (and, with `augment`, augmented) batches of this process's shard."""
    return TensorLoader(
        train_ds.x,
        train_ds.y,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        transform=default_transform(config.dataset) if config.augment else None,
        rank=info.rank,
        world_size=info.world_size,
    )


def _make_optimizer(config: TrainConfig, param_groups: Any) -> torch.optim.SGD:
    return torch.optim.SGD(
        param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"[rbgp train] epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc "
        f"{row['test_acc']:.2f}% | lr {row['lr']:.4g} | {row['epoch_time_s']:.1f}s, "
        f"{row['train_ms_per_batch']:.2f} ms/batch{_sparsity_note(row)}"
    )


def _describe(config: TrainConfig, report: SparsifyReport | None) -> str:
    if config.method in ("magnitude", "autosparse"):
        target = f" to {config.sparsity:g} sparsity" if config.method == "magnitude" else ""
        return f"{config.method} pruning from dense{target}"
    if report is None:
        return "dense"
    if config.method == "budgeted":
        return f"{config.pattern} at a learnt per-layer budget (global {report.global_sparsity or 0:.3f})"
    return f"{config.pattern} at {config.sparsity:g} sparsity"


def _sparsity_note(row: dict[str, Any]) -> str:
    return f" | sparsity {row['sparsity']:.3f}" if row.get("sparsity") else ""


def _sparsity_metrics(model: nn.Module, method: Method, positions: dict[str, int]) -> dict[str, Any]:
    """Global and per-layer sparsity of the method's layers, and the model's per-sample FLOPs."""
    layers = method.sparse_layers(model)
    counts = {name: layer_nnz(m) for name, m in layers.items()}
    total = sum(n for _, n in counts.values())
    dense_grad = layers if method.dense_weight_grad() else ()
    return {
        "sparsity": 1 - sum(k for k, _ in counts.values()) / total if total else 0.0,
        "layer_sparsity": {name: 1 - k / n for name, (k, n) in counts.items()},
        **flops(model, positions, dense_grad),
    }


def _epoch_accounting(
    model: nn.Module,
    method: Method,
    positions: dict[str, int],
    before: dict[str, Any],
    history: list[dict[str, Any]],
    steps: int,
    config: TrainConfig,
    info: ddp.DistInfo,
) -> dict[str, Any]:
    """The epoch's metrics beyond loss and time: sparsity now, inference FLOPs per sample now, and
    the run's training FLOPs so far (this epoch's steps at the mean of its start and end costs)."""
    after = _sparsity_metrics(model, method, positions)
    samples = steps * config.batch_size * info.world_size
    done = history[-1] if history else {}
    row = {k: after[k] for k in ("sparsity", "layer_sparsity", "infer_flops", "infer_flops_dense")}
    for key in ("train_flops", "train_flops_dense"):
        row[key] = done.get(key, 0.0) + samples * (before[key] + after[key]) / 2
    row.update(method.epoch_metrics())
    return row


def sparse_layers(model: nn.Module) -> list[nn.Module]:
    """The model's sparse layers (RBGP and masked), in module order."""
    return [m for m in model.modules() if isinstance(m, SPARSE_TYPES)]
