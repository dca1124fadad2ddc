"""The minimal loop: `train_step` is one plain optimizer step plus the method's hook; `fit` trains with a
method to its target."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rbgp.train import fit, make_method, train_step


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))


def _batches(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n * 16, 16, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return list(zip(x.split(16), y.split(16)))


def test_train_step_is_one_plain_step():
    model, twin = _mlp(), _mlp()
    opt, opt_twin = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    x, y = _batches(1)[0]
    loss, out = train_step(model, x, y, opt)
    ref = F.cross_entropy(twin(x), y)
    ref.backward()
    opt_twin.step()
    assert torch.equal(loss, ref.detach()) and not out.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_fit_with_magnitude_pruning_reaches_its_sparsity_and_learns():
    model = _mlp()
    batches = _batches()
    method = make_method("magnitude", sparsity=0.75, end_step=16, frequency=4)
    method.prepare(model, total_steps=4 * len(batches))
    opt = torch.optim.SGD(method.param_groups(model), lr=0.1, momentum=0.9)
    losses = fit(model, batches, 4, opt, method)
    assert len(losses) == 4 and losses[-1] < losses[0]
    middle = dict(model.named_modules())["2"]  # first and last layer stay dense, as sparsify keeps them
    assert abs(float((middle.weight == 0).float().mean()) - 0.75) < 0.02


def test_fit_bf16_and_bad_arguments():
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert len(fit(model, _batches(2), 1, opt, bf16=True)) == 1
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        fit(model, _batches(), 0, opt)
    with pytest.raises(ValueError, match="batches is empty"):
        fit(model, [], 1, opt)
