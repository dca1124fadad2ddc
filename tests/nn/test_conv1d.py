"""nn.Conv1d through RBGPConv1d (a height-1 RBGPConv2d): equal to the densified nn.Conv1d in every
argument combination, in sparsify (data-free and calibrated), densify, state dicts, compressed files
and a transformers Whisper encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rbgp
from rbgp.compress.format import load, save
from rbgp.nn import RBGPConv1d, densify, sparsify

CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=5, stride=2, padding=2),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=1),
    dict(kernel_size=(3,), padding=(1,), padding_mode="reflect"),
    dict(kernel_size=4, stride=3, padding=3, padding_mode="circular"),
    dict(kernel_size=2, padding=1, padding_mode="replicate", bias=False),
]


def _twin(layer: RBGPConv1d, args: dict) -> nn.Conv1d:
    dense = nn.Conv1d(layer.in_channels, layer.out_channels, **args)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        if dense.bias is not None:
            dense.bias.copy_(layer.bias)
    return dense


@pytest.mark.parametrize("args", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_the_dense_conv1d_forward_and_backward(args, dtype):
    torch.manual_seed(0)
    layer = RBGPConv1d.from_dense(nn.Conv1d(48, 80, **args), 0.75).to(dtype)
    dense = _twin(layer, args).to(dtype)
    x = torch.randn(3, 48, 29, dtype=dtype, requires_grad=True)
    xd = x.detach().clone().requires_grad_()
    y, yd = layer(x), dense(xd)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert y.shape == yd.shape and y.is_contiguous()
    torch.testing.assert_close(y, yd, atol=tol, rtol=tol)
    torch.testing.assert_close(layer(x[0]), dense(xd[0]), atol=tol, rtol=tol)  # unbatched (C, L)
    g = torch.randn_like(y)
    y.backward(g)
    yd.backward(g)
    torch.testing.assert_close(x.grad, xd.grad, atol=tol, rtol=tol)
    assert layer.mask.shape == dense.weight.shape
    assert not layer.dense_weight()[~layer.mask].any()


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match="kernel_size"):
        RBGPConv1d(16, 16, (3, 3))
    with pytest.raises(ValueError, match="stride"):
        RBGPConv1d(16, 16, 3, stride=0)
    layer = RBGPConv1d(16, 32, 3, sparsity=0.5)
    with pytest.raises(ValueError, match=r"expected input \(N, 16, L\)"):
        layer(torch.randn(2, 16, 5, 5))
    with pytest.raises(TypeError, match="nn.Conv1d"):
        RBGPConv1d.from_dense(nn.Conv2d(16, 32, 3))
    with pytest.raises(ValueError, match="groups=4"):
        RBGPConv1d.from_dense(nn.Conv1d(16, 32, 3, groups=4))


def _audio_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(16, 64, 3, padding=1), nn.GELU(), nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv1d(64, 64, 5, padding=2), nn.GELU(), nn.Conv1d(64, 8, 1),
    ).eval()


@pytest.mark.parametrize("calibrated", [False, True])
def test_sparsify_densify_and_state_dict(calibrated):
    model = _audio_net()
    x = torch.randn(4, 16, 40)
    extra = {"calibration": [x]} if calibrated else {}
    report = sparsify(model, 0.75, inplace=False, **extra)
    sparse = report.model
    assert [type(m).__name__ for m in sparse if isinstance(m, nn.Conv1d | RBGPConv1d)] == [
        "Conv1d", "RBGPConv1d", "RBGPConv1d", "Conv1d"]  # first and last kept dense
    dense = densify(sparse, inplace=False)
    assert all(type(m) is not RBGPConv1d for m in dense.modules())
    assert isinstance(dense[2], nn.Conv1d) and dense[2].stride == (2,)
    torch.testing.assert_close(sparse(x), dense(x), atol=1e-5, rtol=1e-5)
    twin = sparsify(model, 0.75, inplace=False, **extra).model
    twin.load_state_dict(sparse.state_dict())
    torch.testing.assert_close(twin(x), sparse(x), atol=0, rtol=0)
    if calibrated:  # the calibrated fit reconstructs the dense outputs far better than the data-free one
        free = sparsify(model, 0.75, inplace=False).model
        assert (sparse(x) - model(x)).norm() < 0.5 * (free(x) - model(x)).norm()


def test_masked_patterns_leave_conv1d_dense_with_a_reason():
    model = nn.Sequential(nn.Linear(8, 32), nn.Unflatten(1, (4, 8)), nn.Conv1d(4, 8, 3), nn.Flatten(), nn.Linear(48, 4))
    report = sparsify(model, 0.5, "unstructured", keep_first_last=False, inplace=False)
    assert isinstance(report.model[2], nn.Conv1d)
    assert any(name == "2" and "RBGP patterns only" in why for name, why in report.skipped)


def test_compressed_file_round_trip(tmp_path):
    model = _audio_net()
    sparsify(model, 0.75)
    save(model, tmp_path / "m.rbgp")
    blank = _audio_net()
    sparsify(blank, 0.75)
    twin = load(tmp_path / "m.rbgp", blank)
    x = torch.randn(2, 16, 24)
    assert torch.equal(twin(x), model(x))


def test_whisper_encoder_convs_are_converted():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.WhisperConfig(
        vocab_size=96, num_mel_bins=16, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=32,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.WhisperModel(cfg).eval()
    feats = torch.randn(2, 16, 64)
    ids = torch.randint(0, 96, (2, 5))
    report = rbgp.sparsify(model, 0.5, inplace=False)
    sparse = report.model
    assert isinstance(sparse.encoder.conv2, RBGPConv1d)
    dense = densify(sparse, inplace=False)
    a = sparse(input_features=feats, decoder_input_ids=ids).last_hidden_state
    b = dense(input_features=feats, decoder_input_ids=ids).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
