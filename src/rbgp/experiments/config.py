"""`TrainConfig`: everything that determines a training run's numbers, checked up front."""

from __future__ import annotations

import math
import reprlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rbgp.experiments.data import DATASET_NAMES
from rbgp.experiments.models import MODEL_NAMES
from rbgp.experiments.recipes import SCHEDULES
from rbgp.nn.distribution import DEFAULT_DISTRIBUTION, DISTRIBUTIONS
from rbgp.nn.sparsify import INITS
from rbgp.patterns import PATTERNS, get_pattern
from rbgp.train.methods import METHOD_NAMES, check_method

__all__ = ["PATTERN_NAMES", "PRECISIONS", "TrainConfig"]

PATTERN_NAMES: tuple[str, ...] = ("dense", *PATTERNS)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
# Settings of runs saved before the field existed (so their checkpoints still resume).
LEGACY_DEFAULTS: dict[str, Any] = {"distribution": "uniform", "method": "static", "method_kwargs": {}}


@dataclass
class TrainConfig:
    """Everything that determines a training run's numbers (the checkpoint's ``args``).

    ``max_steps`` caps the optimizer steps per epoch and ``limit_train``/``limit_test`` take a
    fixed random subset of a split (for quick runs). ``model_kwargs`` sizes the small models:
    ``{"hidden": [...]}`` for ``mlp``, ``{"channels": [...]}`` for ``cnn``. ``method`` is the sparse
    training method (`rbgp.train.methods`) and ``method_kwargs`` its options.
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
    method: str = "static"
    method_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_types(self)
        self.pattern_kwargs = {k: _plain(v) for k, v in dict(self.pattern_kwargs).items()}
        self.model_kwargs = {k: _plain(v) for k, v in dict(self.model_kwargs).items()}
        self.method_kwargs = {k: _plain(v) for k, v in dict(self.method_kwargs).items()}
        self.exclude = [str(e) for e in self.exclude]
        self.milestones = [int(m) for m in self.milestones]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and its valid options."""
        checks: list[tuple[bool, str]] = [
            (self.model in MODEL_NAMES, f"unknown model {self.model!r}; valid: {', '.join(MODEL_NAMES)}"),
            (self.dataset in DATASET_NAMES, f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASET_NAMES)}"),
            (self.pattern in PATTERN_NAMES, f"unknown pattern {self.pattern!r}; valid: {', '.join(PATTERN_NAMES)}"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"),
            (0.0 < self.sparsity < 1.0, f"sparsity must be in (0, 1), got {self.sparsity}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}"),
            (not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0"),
            (0 <= self.weight_decay < math.inf, f"weight_decay must be a number >= 0, got {self.weight_decay}"),
            (0 < self.gamma < math.inf, f"gamma must be a positive number, got {self.gamma}"),
            (0 <= self.seed < 2**63, f"seed must be in [0, 2**63), got {self.seed}"),
            (
                self.milestones == sorted(set(self.milestones)) and all(m >= 1 for m in self.milestones),
                f"milestones must be increasing positive epochs, got {self.milestones}",
            ),
            (self.limit_train is None or self.limit_train >= 1, f"limit_train must be >= 1, got {self.limit_train}"),
            (self.limit_test is None or self.limit_test >= 1, f"limit_test must be >= 1, got {self.limit_test}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}; valid: auto, cpu, cuda"),
            (self.init in INITS, f"unknown init {self.init!r}; valid: {', '.join(INITS)}"),
            (
                self.distribution in DISTRIBUTIONS,
                f"unknown distribution {self.distribution!r}; valid: {', '.join(DISTRIBUTIONS)}",
            ),
            (self.method in METHOD_NAMES, f"unknown method {self.method!r}; valid: {', '.join(METHOD_NAMES)}"),
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
        for key, widths in self.model_kwargs.items():
            flag = "hidden widths" if key == "hidden" else "channel widths"
            if not (
                isinstance(widths, list)
                and widths
                and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
            ):
                raise ValueError(f"{flag} (--hidden) must be a non-empty list of integers >= 1, got {widths!r}")
        if self.pattern != "dense":  # block sizes, group rows, ... checked by the pattern itself
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in self.pattern_kwargs.items()}
            try:
                get_pattern(self.pattern, **kwargs)
            except TypeError as err:
                raise ValueError(str(err)) from None
        check_method(self)

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)


_KINDS: dict[str, tuple[tuple[type, ...], str]] = {  # a field's annotation -> (accepted types, description)
    "str": ((str,), "a string"),
    "str | None": ((str, type(None)), "a string or null"),
    "float": ((int, float), "a number"),
    "int": ((int,), "an integer"),
    "int | None": ((int, type(None)), "an integer or null"),
    "bool": ((bool,), "true or false"),
    "dict[str, Any]": ((dict,), "a mapping"),
    "list[str]": ((list, tuple), "a list of strings"),
    "list[int]": ((list, tuple), "a list of integers"),
}


def _check_types(config: TrainConfig) -> None:
    """ValueError naming the first field whose value has the wrong type (a config read from a file may hold
    anything), before any comparison could raise a TypeError."""
    for f in fields(config):
        value = getattr(config, f.name)
        kinds, what = _KINDS[str(f.type)]
        ok = isinstance(value, kinds) and (not isinstance(value, bool) or bool in kinds)
        if ok and f.type in ("list[str]", "list[int]"):
            item = str if f.type == "list[str]" else int
            ok = all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        if not ok:
            raise ValueError(
                f"config field {f.name!r} must be {what}, got {reprlib.repr(value)} ({type(value).__name__})"
            )


def _plain(v: Any) -> Any:
    """Tuples -> lists recursively, so configs store as plain JSON-like values."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v
