"""Calibration: the input statistics of each layer, collected layer by layer on the model as it is converted.

`sequential(model, layers, batches, convert)` runs the calibration batches through the model with
forward hooks and hands each layer its input Gram matrix (`GramStats`), then swaps in what `convert`
returns before the next layers are measured, so later layers see the inputs the already-converted
layers produce (as SparseGPT does). Layers that read the same input tensor (a transformer's q/k/v,
gate/up projections) form one wave and share one Gram matrix; a wave's passes stop as soon as its
layers have run, so peak memory is the model plus one wave's Gram (float64) and one batch. With
`dense_targets` every batch is also run with the unconverted layers put back (kept for that and for
the roll-back anyway), and the cross products of the two inputs are kept with the dense inputs' Gram
(`GramStats.cross`, `GramStats.dense_gram`): three Gram matrices and two forwards per wave.

A calibration batch is what the model is called with: a tensor (`model(t)`), a dict (`model(**d)`,
transformers' tokenizer output), or a tuple or list whose first element is the input (a DataLoader's
`(inputs, targets)`); any iterable of them (a list, a DataLoader) is calibration data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rbgp.nn.rbgp_layers import is_hf_conv1d


class CalibrationError(ValueError):
    """Calibration data that cannot be used (empty, or of a kind the model cannot be called with)."""


TARGETS = ("dense", "layer")
"""What a converted layer is fitted to: "dense", the unconverted model's outputs of the layer (the
errors of the layers converted before it are corrected where the structure allows); "layer", the
dense layer applied to the inputs the converted model gives it (SparseGPT's choice)."""


class _Stop(Exception):
    """Raised by a hook once the current wave's input is measured: the rest of the forward is not needed."""


@dataclass
class GramStats:
    """The augmented Gram matrix [X 1]^T [X 1] (float64) of one layer's inputs, and how many rows X has."""

    gram: torch.Tensor
    rows: int = 0
    cross: torch.Tensor | None = None
    """With dense targets: [X 1]^T [X_d 1], X_d the inputs the unconverted model gives the layer."""
    dense_gram: torch.Tensor | None = None
    """With dense targets: [X_d 1]^T [X_d 1]."""

    @property
    def inputs(self) -> torch.Tensor:
        """X^T X (without the ones column)."""
        return self.gram[:-1, :-1]

    def add(self, x: torch.Tensor) -> None:
        """Accumulate rows x (n, in): X^T X from float32 (or wider) products of the rows scaled by a power
        of two (exact) into [1, 2), so that large activations do not overflow float32, summed in float64;
        the ones column's entries (column sums, the row count) in float64. Inf or NaN inputs make the
        Gram matrix non-finite, which the conversion refuses."""
        x, unit = _scaled(x)
        _add_product(self.gram, x, unit, x, unit)
        self.rows += x.shape[0]

    def add_pair(self, x: torch.Tensor, dense: torch.Tensor) -> None:
        """`add(x)`, and the products of x and of the rows `dense` the unconverted model gives with `dense`."""
        self.add(x)
        if self.cross is None or self.dense_gram is None:
            self.cross, self.dense_gram = torch.zeros_like(self.gram), torch.zeros_like(self.gram)
        xs, d = _scaled(x), _scaled(dense)
        _add_product(self.cross, *xs, *d)
        _add_product(self.dense_gram, *d, *d)


def power_of_two_unit(t: torch.Tensor) -> float:
    """The power of two at or below max |t| (1 for an empty, all-zero or non-finite t): dividing by it is
    exact and brings the largest magnitude into [1, 2)."""
    peak = float(t.abs().max()) if t.numel() else 0.0
    return 2.0 ** math.floor(math.log2(peak)) if 0 < peak < math.inf else 1.0


def _scaled(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(x / unit, unit): x (float32 or wider) divided by its `power_of_two_unit` (exact)."""
    x = x.detach()
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    unit = power_of_two_unit(x)
    return x / unit, unit


SYMMETRIC_BLOCK = 512
"""a^T a of rows at least twice this wide is taken a block row at a time from the diagonal on and mirrored:
about half the multiply-adds of one product (`benchmarks/conversion_time.md`), the same values up to rounding."""


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^T b; where b is a and wide, by blocks on and above the diagonal only (SYMMETRIC_BLOCK)."""
    n, step = a.shape[1], SYMMETRIC_BLOCK
    if b is not a or n < 2 * step:
        return a.t() @ b
    out = a.new_empty(n, n)
    for i in range(0, n, step):
        block = a[:, i : i + step].t() @ a[:, i:]
        out[i : i + step, i:] = block
        out[i:, i : i + step] = block.t()
    return out


def _add_product(acc: torch.Tensor, a: torch.Tensor, ua: float, b: torch.Tensor, ub: float) -> None:
    """acc += [a 1]^T [b 1] (a, b scaled rows with their units), summed in float64."""
    acc[:-1, :-1] += _product(a, b).double() * (ua * ub)
    acc[:-1, -1] += a.sum(0, dtype=torch.float64) * ua
    acc[-1, :-1] += b.sum(0, dtype=torch.float64) * ub
    acc[-1, -1] += a.shape[0]


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows (n, in) that multiply a layer's (out, in) weight matrix: the flattened features of a
    linear layer, the im2col patches (c_in * kh * kw per output pixel) of a conv (nn.Conv1d: kh = 1)."""
    if isinstance(module, (nn.Conv2d, nn.Conv1d)):
        if isinstance(module.padding, str) or module.padding_mode != "zeros" or any(module.padding):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        if isinstance(module, nn.Conv1d):  # a height-1 image
            x = x.unsqueeze(-2)
            kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
        cols = F.unfold(x, kernel, dilation, 0, stride)  # (N, c*kh*kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    weight = cast(torch.Tensor, module.weight)
    width = weight.shape[0] if is_hf_conv1d(module) else weight.shape[1]
    return x.reshape(-1, width)


def _input_width(module: nn.Module) -> int:
    if isinstance(module, (nn.Conv2d, nn.Conv1d)):
        return module.weight[0].numel()
    weight = cast(torch.Tensor, module.weight)
    return weight.shape[0] if is_hf_conv1d(module) else weight.shape[1]


def call_model(model: nn.Module, batch) -> None:
    """Run `model` on one calibration batch (see the module docstring for the kinds)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(batch, torch.Tensor):
        model(batch.to(device))
    elif isinstance(batch, Mapping):
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (torch.Tensor, Mapping)):
        call_model(model, batch[0])
    else:
        raise CalibrationError(
            f"a calibration batch must be a tensor, a dict of model inputs, or a tuple/list whose "
            f"first element is one; got {type(batch).__name__}"
        )


def as_batches(calibration: Iterable) -> list:
    """The calibration data as a list of batches (it is read once per wave); refuses empty data."""
    if isinstance(calibration, (torch.Tensor, Mapping)):
        raise CalibrationError(
            "calibration must be an iterable of batches (a list of tensors, a DataLoader), not a "
            "single tensor or dict: wrap it in a list ([batch])"
        )
    try:
        batches = list(calibration)
    except TypeError:
        raise CalibrationError(
            f"calibration must be an iterable of batches, got {type(calibration).__name__}"
        ) from None
    if not batches:
        raise CalibrationError("calibration data is empty: give at least one batch (a few hundred samples are typical)")
    return batches


def max_positions(config: object) -> int | None:
    """The longest sequence a transformers config takes (None: not stated)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _tensors(batch) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of each tensor the model is called with on `batch`."""
    if isinstance(batch, torch.Tensor):
        yield "input", batch
    elif isinstance(batch, Mapping):
        yield from ((str(k), v) for k, v in batch.items() if isinstance(v, torch.Tensor))
    elif isinstance(batch, (tuple, list)) and batch:
        yield from _tensors(batch[0])


def _describe(batch) -> str:
    return ", ".join(f"{name} {str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}" for name, t in _tensors(batch))


def check_batches(model: nn.Module, batches: list) -> None:
    """Refuse, by batch and tensor, calibration data the model cannot be run on: empty or non-finite
    tensors, token ids outside the input embedding's vocabulary, sequences longer than the model's
    positions (transformers models)."""
    embedding = cast(Any, model).get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = embedding.num_embeddings if isinstance(embedding, nn.Embedding) else None
    positions = max_positions(getattr(model, "config", None))
    for i, batch in enumerate(batches):
        for name, t in _tensors(batch):
            where = f"calibration batch {i}: {name} {tuple(t.shape)}"
            if t.numel() == 0:
                raise CalibrationError(f"{where} is empty")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CalibrationError(f"{where} holds inf or NaN")
            if name not in ("input", "input_ids") or t.is_floating_point() or t.dtype == torch.bool:
                continue
            if vocab is not None and (int(t.min()) < 0 or int(t.max()) >= vocab):
                bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
                raise CalibrationError(f"{where} holds token id {bad}, outside the model's vocabulary (0..{vocab - 1})")
            if positions is not None and t.dim() >= 2 and t.shape[-1] > positions:
                raise CalibrationError(
                    f"{where} holds sequences of {t.shape[-1]} tokens, longer than the model takes ({positions} "
                    f"positions)"
                )


def _run_batch(model: nn.Module, batch, index: int) -> None:
    """`call_model`, with a failure of the model on the batch turned into a CalibrationError naming it (used
    while the model is still untouched, so such a failure is the data's)."""
    try:
        call_model(model, batch)
    except (_Stop, CalibrationError):
        raise
    except Exception as err:  # the model's own error, reported with the batch that caused it
        line = (str(err).strip().splitlines() or [""])[0][:300]
        raise CalibrationError(
            f"the model failed on calibration batch {index} ({_describe(batch)}): {type(err).__name__}: {line}"
        ) from err


def _waves(model: nn.Module, layers: list[tuple[str, nn.Module]], batch) -> list[list[int]]:
    """Indices into `layers` grouped by the input tensor they read, in the order they run (one probe
    forward). Layers the model never calls on `batch` come last, one wave each (they get no samples)."""
    seen: list[tuple[int, torch.Tensor]] = []

    def hook(i):
        def fn(_module, args):
            if args and isinstance(args[0], torch.Tensor) and all(j != i for j, _ in seen):
                seen.append((i, args[0]))

        return fn

    handles = [m.register_forward_pre_hook(hook(i)) for i, (_, m) in enumerate(layers)]
    try:
        with torch.no_grad():
            _run_batch(model, batch, 0)
    finally:
        for h in handles:
            h.remove()
    waves: list[list[int]] = []
    last = None
    for i, x in seen:
        if (
            waves
            and x is last
            and _input_width(layers[i][1]) == _input_width(layers[waves[-1][0]][1])
            and type(layers[i][1]) is type(layers[waves[-1][0]][1])
            and not isinstance(layers[i][1], (nn.Conv2d, nn.Conv1d))
        ):
            waves[-1].append(i)
        else:
            waves.append([i])
        last = x
    called = {i for i, _ in seen}
    return waves + [[i] for i in range(len(layers)) if i not in called]


def _measure(
    model: nn.Module,
    first: nn.Module,
    batches: list,
    untouched: bool = False,
    originals: list[tuple[str, nn.Module]] | None = None,
) -> GramStats:
    """The Gram matrix of the input of `first` (which the rest of its wave shares), over every batch. Each
    forward stops as soon as that input is seen: nothing after it is needed (a layer the model calls
    twice per forward is measured on its first call). `untouched`: the model is as the user gave it, so
    a failure is reported as the calibration data's. `originals` (name, unconverted layer): each batch
    is also run with them put back, and the cross products with those dense inputs kept (`GramStats.cross`),
    unless the two passes give the layer different numbers of rows (tokens routed elsewhere)."""
    width = _input_width(first)
    stats = GramStats(
        torch.zeros(width + 1, width + 1, dtype=torch.float64, device=cast(torch.Tensor, first.weight).device)
    )
    seen: list[torch.Tensor] = []

    def pre(module, args):
        seen.append(layer_inputs(module, args[0]))
        raise _Stop

    def run(batch, i: int) -> torch.Tensor | None:
        seen.clear()
        try:
            _run_batch(model, batch, i) if untouched else call_model(model, batch)
        except _Stop:
            pass
        return seen[0] if seen else None

    paired = bool(originals)
    handle = first.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                dense = None
                if originals:
                    with _put_back(model, originals):
                        dense = run(batch, i)
                if (x := run(batch, i)) is None:
                    continue
                paired = paired and dense is not None and dense.shape == x.shape
                stats.add_pair(x, cast(torch.Tensor, dense)) if paired else stats.add(x)
    finally:
        handle.remove()
    if not paired:  # rows that do not correspond (routed MoE tokens): the layer's own targets
        stats.cross = stats.dense_gram = None
    return stats


@contextmanager
def _put_back(model: nn.Module, originals: list[tuple[str, nn.Module]]) -> Iterator[None]:
    """The unconverted layers in the model for the duration (the converted ones back afterwards)."""
    converted = [(name, model.get_submodule(name)) for name, _ in originals]
    for name, module in originals:
        set_module(model, name, module)
    try:
        yield
    finally:
        for name, module in converted:
            set_module(model, name, module)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called `name`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def sequential(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    calibration: Iterable,
    convert: Callable[[str, nn.Module, GramStats], nn.Module | None],
    desc: str = "calibrate",
    dense_targets: bool | Callable[[str], bool] = False,
) -> None:
    """For each layer, in the order the model runs them, `convert(name, module, stats)`; a module it returns
    replaces the layer before the next wave is measured (None: the layer stays, changed in place or not).
    On any error every replaced layer is put back. `dense_targets` (or a predicate on the wave's first
    layer name): measure the cross products with the unconverted model's inputs (see `_measure`)."""
    batches = as_batches(calibration)
    check_batches(model, batches)
    was_training = model.training
    model.eval()
    swapped: list[tuple[str, nn.Module]] = []
    try:
        waves = _waves(model, layers, batches[0])
        bar = tqdm(total=len(layers), desc=desc, unit="layer", leave=False, disable=None if len(layers) > 1 else True)
        for wave in waves:
            name = layers[wave[0]][0]
            pair = dense_targets(name) if callable(dense_targets) else dense_targets
            stats = _measure(
                model, layers[wave[0]][1], batches, untouched=not swapped, originals=swapped if pair else None
            )
            for i in wave:
                name, module = layers[i]
                bar.set_postfix_str(name)
                new = convert(name, module, stats)
                if new is not None and new is not module:
                    set_module(model, name, new)
                    swapped.append((name, module))
                bar.update()
            del stats
        bar.close()
    except BaseException:
        for name, module in reversed(swapped):
            set_module(model, name, module)
        raise
    finally:
        model.train(was_training)
