"""The one-shot baselines (magnitude, Wanda, SparseGPT; unstructured and 2:4) against hand-computed cases."""

import copy

import pytest
import torch
from torch import nn

from rbgp.nn.oneshot import magnitude_prune, prune_oneshot, sparsegpt_prune, wanda_prune


def test_magnitude_prunes_the_smallest_of_the_layer():
    w = torch.tensor([[1.0, -4.0, 2.0], [0.5, 3.0, -6.0]])
    assert torch.equal(magnitude_prune(w, 0.5), torch.tensor([[0.0, -4.0, 0.0], [0.0, 3.0, -6.0]]))
    assert torch.equal(magnitude_prune(torch.tensor([[1.0, -4.0, 2.0, 3.0]]), 0.0, nm=(2, 4)),
                       torch.tensor([[0.0, -4.0, 0.0, 3.0]]))


def test_wanda_scores_by_input_norm_per_row():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    h = torch.diag(torch.tensor([100.0, 1.0, 1.0, 0.25]))  # ||x|| = 10, 1, 1, 0.5: scores row 0: 10, 2, 3, 2
    assert torch.equal(wanda_prune(w, h, 0.5), torch.tensor([[1.0, 0.0, 3.0, 0.0], [4.0, 3.0, 0.0, 0.0]]))
    assert torch.equal(wanda_prune(w, h, 0.0, nm=(2, 4)), wanda_prune(w, h, 0.5))  # one run of 4: the same here
    assert torch.equal((wanda_prune(torch.randn(3, 8), torch.eye(8), 0.0, nm=(2, 4)) != 0).view(3, 2, 4).sum(-1),
                       torch.full((3, 2), 2))


def test_sparsegpt_obs_update_by_hand():
    """W = [0.5, 1], H = [[2, 1], [1, 2]]: column 0 has the lower w^2/[H^-1]_jj^2 and is pruned; the OBS update
    moves w_1 by w_0 * H_01 / H_11 = 0.25."""
    h = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    out = sparsegpt_prune(torch.tensor([[0.5, 1.0]]), h, 0.5, damp=0.0)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.25]]))
    # with H = I nothing is correlated: SparseGPT is magnitude pruning per block
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sparsegpt_prune(w, torch.eye(8), 0.5, damp=0.0), magnitude_prune(w, 0.5))


def test_sparsegpt_sparsity_and_2_4_structure():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 40, generator=g)
    w = torch.randn(6, 40, generator=g)
    h = x.t() @ x
    assert int((sparsegpt_prune(w, h, 0.75, blocksize=16) == 0).sum()) >= int(0.75 * 240)
    nm = sparsegpt_prune(w, h, 0.0, nm=(2, 4), blocksize=16)
    assert torch.equal((nm != 0).view(6, 10, 4).sum(-1), torch.full((6, 10), 2))
    # the updates help: SparseGPT's output error is below that of the same-sparsity Wanda / magnitude
    err = lambda v: float(((x @ (v - w).t()) ** 2).sum())  # noqa: E731
    assert err(sparsegpt_prune(w, h, 0.5)) < min(err(wanda_prune(w, h, 0.5)), err(magnitude_prune(w, 0.5)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="nm=.* multiple of 4"):
        magnitude_prune(torch.ones(2, 6), 0.0, nm=(2, 4))
    with pytest.raises(ValueError, match="0 < n < m"):
        wanda_prune(torch.ones(2, 4), torch.eye(4), 0.0, nm=(4, 4))
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        magnitude_prune(torch.ones(2, 4), 1.0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_oneshot(model, 0.5, method="wanda")
    with pytest.raises(ValueError, match="method must be one of"):
        prune_oneshot(model, 0.5, [torch.randn(4, 8)], method="obc")


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_oneshot_on_a_tiny_gpt2(method):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2,
                                                                 n_head=2, bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    report = prune_oneshot(model, 0.5, [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}], method=method)
    assert [n for n, _, _ in report.layers] == [f"transformer.h.{i}.{m}" for i in range(2)
                                                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    for name, sparsity, _ in report.layers:
        assert abs(float((model.get_submodule(name).weight == 0).double().mean()) - 0.5) < 0.01
        assert abs(sparsity - 0.5) < 0.01
    assert "calibration output error" in str(report)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_dense_targets_prune_the_refit_of_the_unconverted_outputs(method):
    """targets="dense": every layer after the first is pruned from the full least-squares fit of the
    unconverted model's outputs (bias re-fitted), which lands closer to the dense model than the papers'
    targets on this net; the layers are pruned copies (the originals untouched), at the same sparsity."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    x = torch.randn(256, 16) @ torch.randn(16, 16)
    ref = model(x).detach()
    errors = {}
    for targets in ("layer", "dense"):
        pruned = copy.deepcopy(model)
        first, second = pruned[2], pruned[4]
        report = prune_oneshot(pruned, 0.75, list(x.split(64)), method=method, targets=targets)
        assert (pruned[2] is first) == (pruned[4] is second) == (targets == "layer")  # "dense": pruned copies
        assert all(abs(s - 0.75) < 0.01 for _, s, _ in report.layers)
        errors[targets] = float((pruned(x).detach() - ref).pow(2).mean() / ref.pow(2).mean())
    assert errors["dense"] < errors["layer"]
    with pytest.raises(ValueError, match="targets must be one of"):
        prune_oneshot(model, 0.5, [x], method=method, targets="outputs")
