"""The training loop: sparse model building, epochs, metrics, checkpoints and exact resume.

One :class:`TrainConfig` describes a run completely; everything structural (model init, masks,
data order, augmentation) is a pure function of it, so a run killed after epoch ``k`` and resumed
from its checkpoint ends with the same metrics as an uninterrupted one (on CPU, in deterministic
mode). Per-epoch metrics go to ``metrics.jsonl`` and ``metrics.csv``; the checkpoint is written
atomically (temp file in the same folder, then ``os.replace``) and holds only tensors and plain
Python values so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rbgp.nn import SPARSE_TYPES, MaskedConv2d, MaskedLinear, SparsifyReport, sparsify
from rbgp.nn.distribution import DEFAULT_DISTRIBUTION, DISTRIBUTIONS
from rbgp.nn.sparsify import INITS
from rbgp.precision import bf16_autocast
from rbgp.train import ddp
from rbgp.train.data import (
    DATASET_NAMES,
    LoadedDataset,
    TensorLoader,
    default_transform,
    get_dataset,
)
from rbgp.train.models import MLP, MODEL_NAMES, SmallCNN, build_model
from rbgp.train.recipes import SCHEDULES

__all__ = [
    "CHECKPOINT_NAME",
    "METRIC_FIELDS",
    "PATTERN_NAMES",
    "PRECISIONS",
    "TrainConfig",
    "TrainResult",
    "build_run_model",
    "evaluate",
    "load_checkpoint",
    "atomic_write",
    "save_checkpoint",
    "sparse_layers",
    "train",
]

PATTERN_NAMES: tuple[str, ...] = ("dense", "rbgp4", "unstructured", "block", "hbsnn", "nm")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "rbgp-train-checkpoint"
CHECKPOINT_VERSION = 1
METRIC_FIELDS: tuple[str, ...] = (
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
    "train_ms_per_batch", "train_ms_per_batch_median", "steps",
)  # fmt: skip
# Fields that may change between a run and its resumption (they do not affect the numbers).
_RESUME_FREE = frozenset({"epochs", "data_dir"})


@dataclass
class TrainConfig:
    """Everything that determines a training run's numbers (the checkpoint's ``args``).

    ``max_steps`` caps the optimizer steps per epoch and ``limit_train``/``limit_test`` take a
    fixed random subset of a split (for quick runs). ``model_kwargs`` sizes the small models:
    ``{"hidden": [...]}`` for ``mlp``, ``{"channels": [...]}`` for ``cnn``.
    """

    model: str = "mlp"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    pattern: str = "dense"
    sparsity: float = 0.9
    pattern_kwargs: dict[str, Any] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    seed: int = 0
    precision: str = "fp32"
    augment: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    max_steps: int | None = None
    eval_batch_size: int = 1000
    deterministic: bool = True
    device: str = "auto"
    init: str = "kaiming"
    init_from: str | None = None
    distribution: str = DEFAULT_DISTRIBUTION

    def __post_init__(self) -> None:
        self.pattern_kwargs = {k: _plain(v) for k, v in dict(self.pattern_kwargs).items()}
        self.model_kwargs = {k: _plain(v) for k, v in dict(self.model_kwargs).items()}
        self.exclude = [str(e) for e in self.exclude]
        self.milestones = [int(m) for m in self.milestones]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and its valid options."""
        checks: list[tuple[bool, str]] = [
            (self.model in MODEL_NAMES, f"unknown model {self.model!r}; valid: {', '.join(MODEL_NAMES)}"),
            (self.dataset in DATASET_NAMES,
             f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASET_NAMES)}"),
            (self.pattern in PATTERN_NAMES,
             f"unknown pattern {self.pattern!r}; valid: {', '.join(PATTERN_NAMES)}"),
            (self.precision in PRECISIONS,
             f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"),
            (self.schedule in SCHEDULES,
             f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"),
            (0.0 < self.sparsity < 1.0, f"sparsity must be in (0, 1), got {self.sparsity}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}"),
            (not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.milestones == sorted(set(self.milestones)) and all(m >= 1 for m in self.milestones),
             f"milestones must be increasing positive epochs, got {self.milestones}"),
            (self.limit_train is None or self.limit_train >= 1,
             f"limit_train must be >= 1, got {self.limit_train}"),
            (self.limit_test is None or self.limit_test >= 1,
             f"limit_test must be >= 1, got {self.limit_test}"),
            (self.max_steps is None or self.max_steps >= 1,
             f"max_steps must be >= 1, got {self.max_steps}"),
            (self.device in ("auto", "cpu", "cuda"),
             f"unknown device {self.device!r}; valid: auto, cpu, cuda"),
            (self.init in INITS, f"unknown init {self.init!r}; valid: {', '.join(INITS)}"),
            (self.distribution in DISTRIBUTIONS,
             f"unknown distribution {self.distribution!r}; valid: {', '.join(DISTRIBUTIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        allowed = {"mlp": {"hidden"}, "cnn": {"channels"}}.get(self.model, set())
        extra = set(self.model_kwargs) - allowed
        if extra:
            raise ValueError(
                f"model_kwargs {sorted(extra)} not supported for model {self.model!r}; "
                f"valid: {sorted(allowed) or 'none'}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)


def _plain(v: Any) -> Any:
    """Tuples -> lists recursively, so configs store as plain JSON-like values."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


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
    config: TrainConfig, num_classes: int, input_shape: Sequence[int]
) -> tuple[nn.Module, SparsifyReport | None]:
    """The model of ``config``, made sparse; a pure function of ``config`` (seeds included)."""
    cin, size = int(input_shape[0]), int(input_shape[-1])
    torch.manual_seed(config.seed)
    mk = config.model_kwargs
    if config.model == "mlp" and "hidden" in mk:
        model: nn.Module = MLP(cin * size * size, [int(h) for h in mk["hidden"]], num_classes)
    elif config.model == "cnn" and "channels" in mk:
        model = SmallCNN(cin, num_classes, [int(c) for c in mk["channels"]])
    else:
        model = build_model(config.model, num_classes, cin, size)
    if config.init_from is not None:
        _load_dense_start(model, config.init_from)
    report = None
    if config.pattern != "dense":  # with init_from and pattern dense: fine-tune the dense model
        report = sparsify(
            model, config.sparsity, config.pattern, exclude=tuple(config.exclude),
            seed=config.seed, init=config.init, distribution=config.distribution,
            **_pattern_kwargs(config.pattern_kwargs),
        )
    return model, report


def _load_dense_start(model: nn.Module, path: str) -> None:
    """Load the weights of a dense run's checkpoint (same model) to convert from (`init_from`)."""
    saved = load_checkpoint(path)
    if saved["args"].get("pattern") != "dense":
        raise ValueError(f"{path}: init_from needs the checkpoint of a dense run, this one is "
                         f"{saved['args'].get('pattern')!r} (train it with --pattern dense)")
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: its model does not match this run's (same --model, --hidden and data set "
                         f"needed): {str(err).splitlines()[0]}") from None


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
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


def _plain_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """Counters (MultiStepLR milestones) -> dicts, which ``weights_only`` loading accepts."""
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in state.items()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success fsync it and ``os.replace`` it into place.

    Readers see either the old file or the complete new one, never a partial write; on error
    the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


_CHECKPOINT_KEYS = ("format", "version", "epoch", "args", "model", "optimizer", "scheduler",
                    "rng", "history")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint (``weights_only=True``); ValueError if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, disallowed globals, ...
        raise ValueError(
            f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to start over"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an rbgp training checkpoint (no {CHECKPOINT_FORMAT!r} marker)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {state.get('version')!r}, this rbgp reads {CHECKPOINT_VERSION}"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    return state


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume a checkpoint made with different settings (the numbers would differ)."""
    mine = config.to_dict()
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {mine[k]!r}"
        for k in mine
        if k not in _RESUME_FREE and saved.get(k) != mine[k]
    ]
    if diffs:
        raise ValueError(
            f"{path}: checkpoint was made with different settings, cannot resume: " + "; ".join(diffs)
        )
    if config.schedule == "cosine" and saved.get("epochs") != config.epochs:
        raise ValueError(
            f"{path}: the cosine schedule depends on epochs; checkpoint has epochs="
            f"{saved.get('epochs')}, now {config.epochs}"
        )


# ----------------------------------------------------------------------------------------------
# Metrics files
# ----------------------------------------------------------------------------------------------


def _write_metrics(out_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite metrics.jsonl and metrics.csv from ``history`` (each atomically)."""
    for name, render in (("metrics.jsonl", _render_jsonl), ("metrics.csv", _render_csv)):
        with atomic_write(out_dir / name, "w") as f:
            render(f, history)


def _render_jsonl(f: Any, history: list[dict[str, float]]) -> None:
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


def _masked_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (MaskedLinear, MaskedConv2d))]


@torch.no_grad()
def _reapply_masks(layers: list[nn.Module]) -> None:
    """Zero the stored weights off the mask (keeps them exact whatever the optimizer does)."""
    for m in layers:
        m.weight.mul_(m.mask)


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


def _make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    milestones = config.milestones if config.schedule == "multistep" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)


BatchHook = Callable[[int, int, float], None]


def _train_epoch(
    model: nn.Module,
    loader: TensorLoader,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    info: ddp.DistInfo,
    masked: list[nn.Module],
    epoch: int,
    show_progress: bool,
    on_batch: BatchHook | None,
) -> dict[str, float]:
    model.train()
    device = info.device
    steps = len(loader) if config.max_steps is None else min(len(loader), config.max_steps)
    loss_sum = correct = count = 0.0
    step_times: list[float] = []
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", leave=False, file=sys.stderr,
               disable=not show_progress, dynamic_ncols=True)
    for step, (xb, yb) in enumerate(loader):
        if step >= steps:
            break
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with bf16_autocast(device, config.precision == "bf16"):
            out = model(xb)
            loss = F.cross_entropy(out.float(), yb)
        loss.backward()
        optimizer.step()
        if masked:
            _reapply_masks(masked)
        _sync(device)
        dt = time.perf_counter() - t0
        if xb.shape[0] == config.batch_size:  # a short last batch would skew the per-batch time
            step_times.append(dt)
        loss_value = float(loss.detach())
        n = float(yb.shape[0])
        loss_sum += loss_value * n
        correct += float((out.detach().argmax(1) == yb).sum())
        count += n
        bar.update(1)
        if show_progress:
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        if on_batch is not None:
            on_batch(epoch, step, loss_value)
    bar.close()
    loss_sum, correct, count = ddp.all_reduce_sums([loss_sum, correct, count], info)
    times = step_times or [float("nan")]
    return {
        "train_loss": loss_sum / max(count, 1.0),
        "train_acc": 100.0 * correct / max(count, 1.0),
        "train_ms_per_batch": 1e3 * float(np.mean(times)),
        "train_ms_per_batch_median": 1e3 * float(np.median(times)),
        "steps": steps,
    }


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    stop_after_epoch: int | None = None,
    on_batch: BatchHook | None = None,
    data: tuple[LoadedDataset, LoadedDataset] | None = None,
) -> TrainResult:
    """Train ``config`` and return its history; write metrics and checkpoints under ``out_dir``.

    ``resume`` continues from ``out_dir/checkpoint.pt`` when it exists (settings must match);
    without it an existing checkpoint is an error unless ``overwrite``. ``stop_after_epoch``
    ends the run after that epoch's checkpoint (as if killed there). ``on_batch(epoch, step,
    loss)`` is called after every optimizer step. ``data`` skips loading the dataset.
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
        return _run(config, info, out_dir, resume, overwrite, quiet, stop_after_epoch, on_batch, data)
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)
        torch.backends.cudnn.benchmark = prev_cudnn
        ddp.cleanup(info)


def _run(
    config: TrainConfig,
    info: ddp.DistInfo,
    out_dir: str | Path | None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    stop_after_epoch: int | None,
    on_batch: BatchHook | None,
    data: tuple[LoadedDataset, LoadedDataset] | None,
) -> TrainResult:
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    if ckpt_path is not None and ckpt_path.exists() and not (resume or overwrite):
        raise ValueError(
            f"{out} already holds a checkpoint; pass --resume to continue it, --overwrite to "
            f"start over, or choose another --out-dir"
        )
    if resume and out is None:
        raise ValueError("resume needs an out_dir holding the checkpoint")
    saved = None
    if resume and ckpt_path is not None and ckpt_path.exists():
        saved = load_checkpoint(ckpt_path)  # fail on a bad file before any expensive work
        _check_resumable(saved["args"], config, ckpt_path)
        if saved.get("world_size", 1) != info.world_size:
            raise ValueError(
                f"{ckpt_path}: checkpoint was written by a run of {saved.get('world_size')} "
                f"process(es), this one has {info.world_size}; the data shards (and numbers) "
                f"would differ, so resume with the same number of processes"
            )

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    train_ds, test_ds = load_data(config, data)
    if info.device.type == "cuda":  # the data sets used here fit in GPU memory: no per-batch copies
        train_ds = train_ds._replace(x=train_ds.x.to(info.device), y=train_ds.y.to(info.device))
        test_ds = test_ds._replace(x=test_ds.x.to(info.device), y=test_ds.y.to(info.device))
    model, report = build_run_model(config, train_ds.num_classes, train_ds.input_shape)
    model.to(info.device)
    masked = _masked_layers(model)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    scheduler = _make_scheduler(config, optimizer)
    history: list[dict[str, float]] = []
    start_epoch = 1
    if saved is not None:
        _restore(saved, model, optimizer, scheduler, ckpt_path)
        history = [dict(r) for r in saved["history"]]
        start_epoch = int(saved["epoch"]) + 1

    log = info.is_main and not quiet
    if out is not None and info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "run.json", {"config": config.to_dict(), "world_size": info.world_size,
                                       "sparsify": report.to_dict() if report else None})
        _write_metrics(out, history)
    if log:
        what = "dense" if report is None else f"{config.pattern} at {config.sparsity:g} sparsity"
        where = f", resuming after epoch {start_epoch - 1}" if saved is not None else ""
        print(f"[rbgp train] {config.model} on {config.dataset}, {what}, {config.precision}, "
              f"{info.world_size} process(es) on {info.device}{where}", flush=True)

    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    transform = default_transform(config.dataset) if config.augment else None
    loader = TensorLoader(train_ds.x, train_ds.y, config.batch_size, shuffle=True, seed=config.seed,
                          transform=transform, rank=info.rank, world_size=info.world_size)
    show_progress = log and sys.stderr.isatty()
    stopped = False
    for epoch in range(start_epoch, config.epochs + 1):
        loader.set_epoch(epoch - 1)
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        row: dict[str, float] = {"epoch": epoch}
        row.update(_train_epoch(net, loader, optimizer, config, info, masked, epoch, show_progress,
                                on_batch))
        scheduler.step()
        row["test_loss"], row["test_acc"] = evaluate(
            model, test_ds.x, test_ds.y, config.eval_batch_size, info.device, config.precision, info
        )
        row["lr"] = lr
        row["epoch_time_s"] = time.perf_counter() - t0
        history.append(row)
        if out is not None and info.is_main:
            state = _checkpoint_state(config, epoch, model, optimizer, scheduler, history)
            state["world_size"] = info.world_size
            save_checkpoint(ckpt_path, state)
            _write_metrics(out, history)
        if log:
            print(f"[rbgp train] epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f} "
                  f"acc {row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc "
                  f"{row['test_acc']:.2f}% | lr {lr:.4g} | {row['epoch_time_s']:.1f}s, "
                  f"{row['train_ms_per_batch']:.2f} ms/batch", flush=True)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
            stopped = True
            break
    return TrainResult(config, history, model, report, out, stopped)


def _checkpoint_state(
    config: TrainConfig,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict[str, float]],
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "args": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": _plain_scheduler_state(scheduler.state_dict()),
        "rng": _rng_state(),
        "history": [dict(r) for r in history],
    }


def _restore(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    path: Path,
) -> None:
    try:
        model.load_state_dict(saved["model"], strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        sched_state = dict(saved["scheduler"])
        for k, v in scheduler.state_dict().items():
            if isinstance(v, Counter) and isinstance(sched_state.get(k), dict):
                sched_state[k] = Counter(sched_state[k])
        scheduler.load_state_dict(sched_state)
        _set_rng_state(saved["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: checkpoint does not fit the model built from its settings "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def sparse_layers(model: nn.Module) -> list[nn.Module]:
    """The model's sparse layers (RBGP and masked), in module order."""
    return [m for m in model.modules() if isinstance(m, SPARSE_TYPES)]
