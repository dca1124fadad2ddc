"""The compressed model file: exact round trips, quantisation error bounds, and refusal of bad files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import rbgp
from rbgp.compress.format import CompressedFileError, load, save
from rbgp.compress.quantize import QUANTIZERS, dequantize, quantize


def _net(pattern: str = "rbgp4", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                          nn.Flatten(), nn.Linear(64 * 36, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    rbgp.sparsify(model, 0.9, pattern, init="kaiming", distribution="uniform", seed=seed)
    return model.eval()


def _blank(pattern: str = "rbgp4", seed: int = 0) -> nn.Module:
    model = _net(pattern, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    return model


X = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("pattern", ["rbgp4", "unstructured"])
def test_round_trip_is_bit_exact(tmp_path, pattern):
    model = _net(pattern)
    model[1].running_mean.uniform_()
    header = save(model, tmp_path / "m.rbgp")
    kinds = {e["kind"] for e in header["entries"].values()}
    assert kinds == ({"raw", "csr", "mask"} if pattern == "unstructured" else {"raw"})
    twin = load(tmp_path / "m.rbgp", _blank(pattern))
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(twin(X), model(X))


def test_rbgp_file_stores_values_not_indices(tmp_path):
    model = _net("rbgp4")
    header = save(model, tmp_path / "m.rbgp")
    assert any(isinstance(m, rbgp.RBGPConv2d) for m in model.modules())
    stored = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    dense = sum(m.weight.numel() * 4 for m in _dense_twin().modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert header["file_bytes"] < stored + 16_000  # values, biases, structure ids and the header
    assert header["file_bytes"] * 8 < dense  # 90% sparse layers: the zeros are not stored


def _dense_twin() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 64, 3), nn.Conv2d(64, 64, 3), nn.Linear(64 * 36, 128),
                         nn.Linear(128, 128), nn.Linear(128, 10))


@pytest.mark.parametrize("kind", list(QUANTIZERS))
@pytest.mark.parametrize("huffman", [False, True])
def test_quantised_round_trip_within_the_bound(tmp_path, kind, huffman):
    model = _net("unstructured")
    header = save(model, tmp_path / "q.rbgp", quantize=kind, huffman=huffman)
    twin = load(tmp_path / "q.rbgp", _blank("unstructured"))
    for key, a in model.state_dict().items():
        b = twin.state_dict()[key]
        entry = header["entries"][key]
        if "max_error" in entry:
            assert (a - b).abs().max().item() <= entry["max_error"] * (1 + 1e-5) + 1e-7, key
        elif a.is_floating_point():
            assert torch.equal(a, b), key  # biases and norms are not quantised
    masked = [m for m in twin.modules() if isinstance(m, rbgp.MaskedLinear)]
    assert masked and all((m.weight[m.mask == 0] == 0).all() for m in masked)  # off the mask: exact zeros


@pytest.mark.parametrize("huffman", [False, True])
def test_int8_file_loads_into_int8_values(tmp_path, huffman):
    """An int8 file loads straight into int8 RBGPLinear values with per-row scales: the file's
    weights (to within an ulp), one quarter of the fp32 bytes, the same outputs."""
    model = _net("rbgp4")
    save(model, tmp_path / "q.rbgp", quantize="int8", huffman=huffman)
    widened = load(tmp_path / "q.rbgp", _blank("rbgp4"))
    narrow = load(tmp_path / "q.rbgp", _blank("rbgp4"), int8_values=True)
    linears = [(n, m) for n, m in narrow.named_modules() if isinstance(m, rbgp.RBGPLinear)]
    assert linears and all(m.values.dtype == torch.int8 for _, m in linears)
    assert not any(m.values.dtype == torch.int8 for m in narrow.modules() if isinstance(m, rbgp.RBGPConv2d))
    for name, m in linears:
        torch.testing.assert_close(m.sparse_weight.float_values(), widened.get_submodule(name).values,
                                   rtol=1e-6, atol=0)
    head = narrow[-1]  # the dense head: an int8 StoredLinear holding the file's weights
    assert isinstance(head, rbgp.nn.StoredLinear) and head.values.dtype == torch.int8
    torch.testing.assert_close(head.weight, widened[-1].weight, rtol=1e-6, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(narrow(X), widened(X), rtol=1e-5, atol=1e-5)
    plain = load(tmp_path / "q.rbgp", _blank("rbgp4"), int8_values=False)
    assert all(m.values.dtype == torch.float32 for m in plain.modules() if isinstance(m, rbgp.RBGPLinear))
    assert type(plain[-1]) is nn.Linear


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**31))
def test_layer_int8_is_the_file_int8(g, r, k, seed):
    """`rbgp.ops.quantize_rows` (int8 layers) and the files' "int8" are one rule."""
    from rbgp.ops import quantize_rows

    values = torch.randn(g, r, k, generator=torch.Generator().manual_seed(seed)) * 3
    values[0, 0] = 0  # an all-zero row: scale 0, symbols 0
    q, scales = quantize_rows(values)
    ref = quantize(values.numpy().reshape(-1), np.repeat(np.arange(g * r), k), g * r, "int8")
    assert np.array_equal(q.numpy().reshape(-1).astype(np.int64), ref.symbols.astype(np.int64) - 128)
    assert np.array_equal(scales.numpy().reshape(-1), ref.table)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["int8", "int4"]), st.integers(1, 40), st.integers(1, 60), st.integers(0, 2**31))
def test_uniform_quantisation_bound(kind, rows, cols, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)) * rng.uniform(0.01, 3, size=(rows, 1))
    ids = np.repeat(np.arange(rows), cols)
    q = quantize(w.reshape(-1), ids, rows, kind)
    restored = dequantize(kind, q.symbols, q.table, ids).reshape(rows, cols)
    step = np.abs(w).max(axis=1, keepdims=True) / QUANTIZERS[kind][0]
    assert (np.abs(restored - w) <= step / 2 * (1 + 1e-5) + 1e-7).all()


def test_kmeans_codebook_error_bound():
    w = np.random.default_rng(0).standard_t(3, size=5000)
    q = quantize(w, np.zeros(5000, dtype=np.int64), 1, "kmeans16")
    c = np.sort(q.table.astype(np.float64))
    bound = max(np.diff(c).max() / 2, w.max() - c[-1], c[0] - w.min())
    assert q.max_error <= bound + 1e-6 and len(np.unique(q.symbols)) == 16


# ----------------------------------------------------------------------------------------------
# Bad files
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path):
    path = tmp_path / "m.rbgp"
    save(_net("unstructured"), path, quantize="int8", huffman=True)
    return path


def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _rewrite_header(path, change) -> None:
    data = path.read_bytes()
    n = _header_len(data)
    head = json.loads(data[8 : 8 + n])
    meta = json.loads(head["__metadata__"]["rbgp"])
    change(meta)
    head["__metadata__"]["rbgp"] = json.dumps(meta, sort_keys=True)
    raw = json.dumps(head).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_bad_files_are_refused(saved, tmp_path):
    good = saved.read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], "truncated|corrupt tensor data"),
        "too short": (good[:5], "too short"),
        "huge header": (struct.pack("<Q", 2**60) + good[8:], "header claims"),
        "not ours": (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": 1}        ' + b"x" * 64, "not an rbgp compressed"),
        "flipped": (good[:-100] + bytes([good[-100] ^ 0x04]) + good[-99:], "checksum mismatch"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.rbgp"
        path.write_bytes(data)
        with pytest.raises(CompressedFileError, match=message):
            load(path, _blank("unstructured"))
    for change, message in ((lambda m: m.update(version=2), "version 2, this rbgp reads version 1"),
                            (lambda m: m.update(format="zip"), "format 'zip'"),
                            (lambda m: m["entries"]["0.weight"].update(shape=[9]), "checksum mismatch")):
        path = tmp_path / "edited.rbgp"
        path.write_bytes(good)
        _rewrite_header(path, change)
        with pytest.raises(CompressedFileError, match=message):
            load(path, _blank("unstructured"))


def test_a_model_that_does_not_match_is_refused(tmp_path):
    path = tmp_path / "m.rbgp"
    save(_net("rbgp4"), path)
    with pytest.raises(CompressedFileError, match="structure"):
        load(path, _blank("rbgp4", seed=1))  # another seed, another structure
    with pytest.raises(CompressedFileError, match="does not match the model: missing"):
        load(path, _blank("unstructured"))
    save(_net("unstructured"), path)
    with pytest.raises(CompressedFileError, match="mask differs"):
        load(path, _blank("unstructured", seed=1))
    with pytest.raises(ValueError, match="huffman=True codes quantised symbols"):
        save(_net(), path, huffman=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_files_load_identically_or_are_refused(saved, tmp_path_factory, data):
    good = saved.read_bytes()
    buf = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["flip", "set", "cut"]))
        if op == "flip":
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            buf[i] = data.draw(st.integers(0, 255))
        else:
            del buf[i:]
            break
        if not buf:
            break
    path = tmp_path_factory.mktemp("fuzz") / "f.rbgp"
    path.write_bytes(bytes(buf))
    reference = load(saved, _blank("unstructured"))
    try:
        twin = load(path, _blank("unstructured"))
    except CompressedFileError:
        return
    assert torch.equal(twin(X), reference(X))  # a change that left the content intact (header spaces)


def test_fashion_mnist_accuracy_after_quantisation(tmp_path, fake_fashion):
    from rbgp.experiments import TrainConfig, build_run_model, evaluate, get_dataset, train

    config = TrainConfig(model="mlp", dataset="fashion_mnist", model_kwargs={"hidden": [256, 256, 256]},
                         pattern="rbgp4", sparsity=0.9, epochs=2, batch_size=32)
    trained = train(config, None, quiet=True).model.eval()
    test = get_dataset("fashion_mnist", None, "test")
    _, base = evaluate(trained, test.x, test.y)
    assert base > 80  # the tiny stand-in is easy: the model really learnt it
    for kind, max_drop in (("int8", 1.0), ("int4", 5.0), ("kmeans16", 5.0)):
        path = tmp_path / f"{kind}.rbgp"
        save(trained, path, quantize=kind, huffman=True)
        twin, _ = build_run_model(config, test.num_classes, test.input_shape)
        _, acc = evaluate(load(path, twin).eval(), test.x, test.y)
        assert acc >= base - max_drop, (kind, base, acc)


def test_round_trip_of_a_transformers_model_with_tied_weights(tmp_path):
    transformers = pytest.importorskip("transformers")

    def make():
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=16)
        model = transformers.GPT2LMHeadModel(config)
        rbgp.sparsify(model, 0.75, init="kaiming")
        return model.eval()

    model, ids = make(), torch.randint(0, 128, (2, 8))
    save(model, tmp_path / "g.rbgp")
    twin = make()
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    load(tmp_path / "g.rbgp", twin)
    assert torch.equal(twin(ids).logits, model(ids).logits)
    assert twin.lm_head.weight.data_ptr() == twin.transformer.wte.weight.data_ptr()  # still tied


def _first(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix))


def _poke(suffix, value):
    def change(header, tensors):
        t = tensors[_first(tensors, suffix)].clone()
        t.view(-1)[0] = value
        tensors[_first(tensors, suffix)] = t
    return change


@pytest.mark.parametrize("kind,suffix,value,message", [
    ("int8", "::table", float("nan"), "scale or centroid is inf or NaN"),
    ("int8", "::table", float("inf"), "scale or centroid is inf or NaN"),
    ("kmeans16", "::table", float("-inf"), "scale or centroid is inf or NaN"),
    ("int8", "::sym", 0, "symbol outside 1..255"),  # symbol 0 would decode to -128 x scale
    ("int4", "::sym", 0, "symbol outside 1..15"),  # int4 symbol 0: -8 x scale, outside -7..7
    (None, "bias", float("nan"), "inf or NaN"),
    (None, "::val", float("inf"), "inf or NaN"),
])
def test_crafted_values_are_refused(tmp_path, craft, kind, suffix, value, message):
    good, bad = tmp_path / "good.rbgp", tmp_path / "bad.rbgp"
    save(_net("unstructured"), good, quantize=kind)
    craft(good, bad, _poke(suffix, value))
    twin = _blank("unstructured")
    before = {k: v.clone() for k, v in twin.state_dict().items()}
    with pytest.raises(CompressedFileError, match=message):
        load(bad, twin)
    assert all(torch.equal(before[k], v) for k, v in twin.state_dict().items())  # a refused load changes nothing


def test_crafted_csr_entries_are_refused(tmp_path, craft):
    good = tmp_path / "good.rbgp"
    save(_net("unstructured"), good)

    def duplicate(header, tensors):  # row 0's second entry moved onto its first column
        key = _first(tensors, "::col")
        col = tensors[key].clone()
        col[1] = col[0]
        tensors[key] = col

    def off_mask(header, tensors):  # an entry moved to a column the mask does not hold
        key = _first(tensors, "::col")
        weight = key.removesuffix("::col")
        mask = _blank("unstructured").state_dict()[weight.removesuffix("weight") + "mask"].reshape(
            header["entries"][weight]["shape"][0], -1)
        crow = tensors[weight + "::crow"]
        free = (~mask[0].bool()).nonzero().view(-1)
        col = tensors[key].clone()
        col[int(crow[1]) - 1] = int(free[free > col[int(crow[1]) - 2]][0])  # still sorted, off the mask
        tensors[key] = col

    for name, change, message in (("dup", duplicate, "increase within each row"), ("off", off_mask, "off its saved mask")):
        bad = tmp_path / f"{name}.rbgp"
        craft(good, bad, change)
        with pytest.raises(CompressedFileError, match=message):
            load(bad, _blank("unstructured"))


def test_non_finite_weights_are_not_saved(tmp_path):
    model = _net("unstructured")
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="'0.bias' holds inf or NaN"):
        save(model, tmp_path / "m.rbgp")
    assert not (tmp_path / "m.rbgp").exists()
