"""`rbgp_linear` returns what nn.Linear on the densified weight returns: contiguous, and inf/NaN inputs
propagated as the dense product propagates them, on every path."""

import pytest
import torch
import torch.nn.functional as F

from rbgp.nn import RBGPLinear
from rbgp.patterns import RBGP4

PATHS = {
    "native": (3, False, "auto"),  # small batch, no gradient: the native kernel where it builds
    "grouped": (37, False, "auto"),  # beyond the native kernel's batches: the batched GEMMs
    "grouped-grad": (5, True, "auto"),  # a gradient wanted: the autograd path
    "reference": (4, True, "reference"),
}


def _layer(out_features: int, backend: str) -> RBGPLinear:
    torch.manual_seed(0)
    return RBGPLinear(96, out_features, 0.75, pattern="rbgp4", backend=backend)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("out_features", [64, 50])  # 50: the last row group is padded
def test_output_is_contiguous_and_inplace_safe(path, out_features):
    batch, grad, backend = PATHS[path]
    layer = _layer(out_features, backend)
    x = torch.randn(batch, 96, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        y = layer(x)
        assert y.is_contiguous() and y.shape == (batch, out_features)
        assert y.view(-1).shape == (batch * out_features,)  # nn.Linear's output allows a view
        want = F.linear(x, layer.dense_weight(), layer.bias)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
        if grad:  # an in-place activation after the layer (FSDP2's case) keeps the backward intact
            torch.relu_(y).sum().backward()
            want_grad = torch.autograd.grad(want.relu().sum(), x)[0]
            torch.testing.assert_close(x.grad, want_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", list(PATHS))
def test_inf_and_nan_propagate_as_in_the_dense_product(path):
    batch, grad, backend = PATHS[path]
    layer = _layer(64, backend)
    x = torch.randn(batch, 96)
    x[0, 5] = float("nan")
    x[-1, 90] = float("inf")
    with torch.set_grad_enabled(grad):
        y = layer(x.requires_grad_(grad))
        want = F.linear(x, layer.dense_weight(), layer.bias)
    assert torch.equal(torch.isfinite(y), torch.isfinite(want))
    assert not torch.isfinite(y[0]).any() and not torch.isfinite(y[-1]).any()
    if batch > 2:
        assert torch.isfinite(y[1:-1]).all()  # other samples untouched


def test_huge_finite_inputs_are_not_flagged():
    layer = _layer(64, "auto")
    x = torch.full((20, 96), 1e30)  # far beyond any sum of squares: x * 0 is still 0
    with torch.no_grad():
        y = layer(x)
    assert not torch.isnan(y).any()


@pytest.mark.parametrize(
    "group_rows,sparsity,masked",
    [(4, 0.75, True), (8, 0.9, True), (32, 0.5, True), (16, 0.9, False), (32, 0.9, False), (128, 0.75, False)],
)
def test_training_small_groups_runs_the_masked_dense_weight(group_rows, sparsity, masked, monkeypatch):
    """Training on the CPU: row groups under 16 rows, or up to 64 at density 1/4 or more, run as the dense
    product of the masked weight, the others on the grouped GEMMs; gradients as the reference's either way."""
    from rbgp.ops import dispatch

    calls = []
    grouped = dispatch.grouped_linear
    monkeypatch.setattr(dispatch, "grouped_linear", lambda *a, **k: calls.append(1) or grouped(*a, **k))
    torch.manual_seed(0)
    layer = RBGPLinear(256, 1024, sparsity, pattern=RBGP4(group_rows=group_rows, block=(1, 8)))
    assert layer.values.shape[1] == group_rows
    reference = RBGPLinear(256, 1024, sparsity, pattern=RBGP4(group_rows=group_rows, block=(1, 8)), backend="reference")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(37, 256, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    (layer(x) ** 2).sum().backward()
    (reference(x_ref) ** 2).sum().backward()
    assert (not calls) == masked
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.values.grad, reference.values.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # without a gradient the grouped paths run as before
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-4, atol=1e-4)
