"""FSDP2 (`fully_shard`) over RBGP layers followed by in-place activations: 2 gloo processes on CPU.
A sparse layer that returned a view (a transposed one, or a reshape of 3-D inputs) would break
FSDP2's backward here."""

from __future__ import annotations

import textwrap

import pytest

WORKER = textwrap.dedent(
    """
    import copy, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from rbgp.nn import RBGPLinear

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(RBGPLinear(64, 128, 0.75), nn.ReLU(inplace=True), RBGPLinear(128, 96, 0.75),
                          nn.Hardtanh(inplace=True), RBGPLinear(96, 10, 0.75))
    reference = copy.deepcopy(model)
    inputs = [torch.randn(4, 6, 64, generator=torch.Generator().manual_seed(r)) for r in range(2)]
    for layer in model:
        if isinstance(layer, RBGPLinear):
            fully_shard(layer)
    fully_shard(model)
    out = model(inputs[rank])
    out.add_(1.0)  # in place on the last sparse layer's output
    out.square().mean().backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    for x in inputs:  # FSDP2 averages the ranks' gradients
        y = reference(x)
        y.add_(1.0)
        (y.square().mean() / 2).backward()
    for n, p in reference.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in grads.values())
    dist.destroy_process_group()
    open(f"{sys.argv[1]}/rank{rank}.ok", "w").close()
    """
)


@pytest.mark.slow
def test_fsdp2_with_inplace_activations(tmp_path, torchrun_two):
    torchrun_two(WORKER)
    assert (tmp_path / "rank0.ok").exists() and (tmp_path / "rank1.ok").exists()
