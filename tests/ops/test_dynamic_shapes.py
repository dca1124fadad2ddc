"""Sparsified models keep a dynamic batch through torch.export, ONNX export and torch.compile: no
Python value derived from the batch size decides the graph (chunk sizes, the native kernel's batch
limit and its tables are taken so that they put no guard on it)."""

import warnings

import pytest
import torch
from torch import nn

import rbgp

BATCHES = (1, 2, 3, 5, 8, 16, 17, 33, 64, 100, 256, 300)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def _mobilenet_block(c: int, e: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, c * e, 1), nn.BatchNorm2d(c * e), nn.ReLU6(),
        nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e), nn.ReLU6(),
        nn.Conv2d(c * e, c, 1), nn.BatchNorm2d(c),
    )


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), _mobilenet_block(64, 4), _mobilenet_block(64, 4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


class _Llama(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        transformers = pytest.importorskip("transformers")
        cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)
        self.lm = transformers.LlamaForCausalLM(cfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits


MODELS = {
    "mlp": (_mlp, lambda n: torch.randn(n, 256)),
    "cnn": (_cnn, lambda n: torch.randn(n, 3, 12, 12)),
    "llama": (_Llama, lambda n: torch.randint(0, 300, (n, 7))),
}


def _sparse(name: str) -> tuple[nn.Module, nn.Module]:
    make, _ = MODELS[name]
    torch.manual_seed(0)
    dense = make().eval()
    sparse = make().eval()
    sparse.load_state_dict(dense.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rbgp.sparsify(sparse, 0.75, inplace=True)
    return dense, sparse


@pytest.mark.parametrize("name", list(MODELS))
def test_export_with_a_dynamic_batch(name):
    _, sparse = _sparse(name)
    inp = MODELS[name][1]
    with torch.no_grad():
        program = torch.export.export(sparse, (inp(4),), dynamic_shapes=({0: torch.export.Dim("b", max=1024)},))
        for n in (1, 3, 37):
            x = inp(n)
            torch.testing.assert_close(program.module()(x), sparse(x), rtol=1e-5, atol=1e-5)


def _compiles(model: nn.Module, inp) -> list[int]:
    """Graphs compiled so far after each batch size of BATCHES (outputs checked against eager)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True)
    counts = []
    with torch.no_grad():
        for n in BATCHES:
            x = inp(n)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
            counts.append(counter.frame_count)
    return counts


@pytest.mark.parametrize("name", list(MODELS))
def test_compile_does_not_recompile_per_batch_size(name):
    """Two compilations at most over 12 batch sizes (batch 1 is specialised by dynamo itself): after
    the second batch size nothing compiles again, except where the dense twin recompiles too (a dense
    conv's fake kernel guards on the batch on its own). Graph breaks inside transformers count as
    frames, so the MLP, which has none, also bounds the total."""
    dense, sparse = _sparse(name)
    inp = MODELS[name][1]
    sparse_counts, dense_counts = _compiles(sparse, inp), _compiles(dense, inp)
    # graphs compiled after the second batch size
    assert sparse_counts[-1] - sparse_counts[1] <= dense_counts[-1] - dense_counts[1], (sparse_counts, dense_counts)
    if name == "mlp":
        assert sparse_counts[-1] <= 2


def test_onnx_export_with_a_dynamic_batch(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    _, sparse = _sparse("mlp")
    path = tmp_path / "mlp.onnx"
    with torch.no_grad():
        torch.onnx.export(sparse, (torch.randn(4, 256),), str(path), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("b", max=1024)},))
    session = ort.InferenceSession(str(path))
    for n in (1, 3, 37):
        x = torch.randn(n, 256)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), sparse(x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_legacy_onnx_export(tmp_path, grad):
    """The TorchScript-based exporter (dynamo=False) traces the plain torch path: the graph takes its
    input and computes (a traced native kernel would be a baked constant)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    _, sparse = _sparse("mlp")
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings(), torch.set_grad_enabled(grad):
        warnings.simplefilter("ignore")
        torch.onnx.export(sparse, (torch.randn(5, 256),), str(path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["x"]
    x = torch.randn(5, 256)
    (got,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), sparse(x).detach(), rtol=1e-4, atol=1e-5)


def test_traced_model_computes(tmp_path):
    """torch.jit.trace too: the trace runs the torch path, not a constant."""
    _, sparse = _sparse("mlp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(sparse, (torch.randn(5, 256),))
        x = torch.randn(5, 256)
        torch.testing.assert_close(traced(x), sparse(x), rtol=1e-5, atol=1e-5)
