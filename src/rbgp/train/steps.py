"""The minimal training loop: one optimizer step with a sparse training method's hooks, and `fit`, epochs of
them over a user's batches. The experiment harness (`rbgp.experiments`) takes its steps from here.

    method = make_method("magnitude", sparsity=0.9, end_step=1000)
    method.prepare(model, total_steps=epochs * len(loader))
    optimizer = torch.optim.SGD(method.param_groups(model), lr=0.05, momentum=0.9)
    losses = fit(model, loader, epochs, optimizer, method)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from rbgp.precision import bf16_autocast
from rbgp.train.methods.base import Method

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    method: Method | None = None,
    step: int = 0,
    bf16: bool = False,
    loss_fn: LossFn = F.cross_entropy,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on the batch (x, y): forward (under bf16 autocast, fp32 master weights, when `bf16`), loss in
    fp32, backward, `optimizer.step()`, then the method's `after_step(model, step)` (`step` counts from 1:
    the steps taken so far, this one included). Returns (the loss, detached; the model's output, detached)."""
    optimizer.zero_grad(set_to_none=True)
    with bf16_autocast(x.device, bf16):
        out = model(x)
        loss = loss_fn(out.float(), y)
    loss.backward()
    optimizer.step()
    if method is not None:
        method.after_step(model, step)
    return loss.detach(), out.detach()


def fit(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
    optimizer: torch.optim.Optimizer,
    method: Method | None = None,
    bf16: bool = False,
    loss_fn: LossFn = F.cross_entropy,
) -> list[float]:
    """`epochs` passes over `batches` (re-iterated each epoch: a DataLoader, a list) with `train_step`, the
    method's `on_epoch_start(epoch)` (from 1) before each; the model is left in train mode. Returns each
    epoch's mean loss per sample. Call `method.prepare(model, total_steps)` before building the optimizer."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.train()
    step, means = 0, []
    for epoch in range(1, epochs + 1):
        if method is not None:
            method.on_epoch_start(epoch)
        total, count = 0.0, 0
        for x, y in batches:
            step += 1
            loss, _ = train_step(model, x.to(device), y.to(device), optimizer, method, step, bf16, loss_fn)
            total += float(loss) * y.shape[0]
            count += y.shape[0]
        if count == 0:
            raise ValueError("batches is empty: fit needs at least one (x, y) batch per epoch")
        means.append(total / count)
    return means
