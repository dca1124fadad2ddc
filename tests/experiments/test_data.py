"""Tests for rbgp.experiments.data: file parsing, safety, loader sharding, augmentation."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rbgp.experiments import data as D

# ------------------------------------------------------------------------------------------
# Fashion-MNIST
# ------------------------------------------------------------------------------------------


def _idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


def _write(path: Path, raw: bytes, gz: bool = True) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _make_fashion(root: Path, n: int = 5, split: str = "train", gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    root.mkdir(parents=True, exist_ok=True)
    image_blob = _idx_bytes(2051, (n, 28, 28), images.tobytes())
    ip = _write(root / f"{prefix}-images-idx3-ubyte", image_blob, gz)
    lp = _write(root / f"{prefix}-labels-idx1-ubyte", _idx_bytes(2049, (n,), labels.tobytes()), gz)
    return images, labels, ip, lp


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_round_trip(tmp_path, gz, split):
    images, labels, _, _ = _make_fashion(tmp_path, n=7, split=split, gz=gz)
    x, y = D.load_fashion_mnist(tmp_path, split)
    assert x.dtype == torch.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (7,)
    assert np.array_equal(x.numpy(), images)
    assert np.array_equal(y.numpy(), labels.astype(np.int64))


def test_fashion_env_var(tmp_path, monkeypatch):
    images, _, _, _ = _make_fashion(tmp_path / "fm", n=3)
    monkeypatch.setenv("RBGP_FASHION_MNIST", str(tmp_path / "fm"))
    x, _ = D.load_fashion_mnist()
    assert np.array_equal(x.numpy(), images)


def test_fashion_missing_dir_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        D.load_fashion_mnist(missing)
    msg = str(info.value)
    assert str(missing) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "RBGP_FASHION_MNIST" in msg
    assert "--data-dir DIR (root= in Python)" in msg  # the CLI flag and the Python argument


def test_fashion_truncated_refused(tmp_path):
    _, _, ip, _ = _make_fashion(tmp_path, n=4)
    raw = gzip.decompress(ip.read_bytes())
    ip.write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(ValueError, match="truncated") as info:
        D.load_fashion_mnist(tmp_path)
    assert ip.name in str(info.value)


def test_fashion_truncated_gzip_stream_refused(tmp_path):
    _, _, ip, _ = _make_fashion(tmp_path, n=50)
    blob = ip.read_bytes()
    ip.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=ip.name):
        D.load_fashion_mnist(tmp_path)


def test_fashion_trailing_bytes_refused(tmp_path):
    _, _, ip, _ = _make_fashion(tmp_path, n=4, gz=False)
    ip.write_bytes(ip.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        D.load_fashion_mnist(tmp_path)


def test_fashion_wrong_magic_refused(tmp_path):
    _, labels, _, lp = _make_fashion(tmp_path, n=4, gz=False)
    lp.write_bytes(_idx_bytes(2051, (4,), labels.tobytes()))
    with pytest.raises(ValueError, match="magic") as info:
        D.load_fashion_mnist(tmp_path)
    assert lp.name in str(info.value)


def test_fashion_count_mismatch_refused(tmp_path):
    _make_fashion(tmp_path, n=4, gz=False)
    lp = tmp_path / "train-labels-idx1-ubyte"
    lp.write_bytes(_idx_bytes(2049, (3,), bytes([1, 2, 3])))
    with pytest.raises(ValueError, match="must match"):
        D.load_fashion_mnist(tmp_path)


def test_fashion_bad_label_refused(tmp_path):
    _make_fashion(tmp_path, n=2, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(2049, (2,), bytes([1, 10])))
    with pytest.raises(ValueError, match="label 10"):
        D.load_fashion_mnist(tmp_path)


def test_fashion_bad_split():
    with pytest.raises(ValueError, match="'valid'"):
        D.load_fashion_mnist(split="valid")


@pytest.mark.skipif(
    not D.FASHION_MNIST_DEFAULT_DIR.is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist():
    x, y = D.load_fashion_mnist(D.FASHION_MNIST_DEFAULT_DIR, "train")
    assert x.shape == (60000, 28, 28) and y.shape == (60000,)
    assert torch.bincount(y).tolist() == [6000] * 10
    xt, yt = D.load_fashion_mnist(D.FASHION_MNIST_DEFAULT_DIR, "test")
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    mean = x.double().div(255).mean().item()
    std = x.double().div(255).std().item()
    assert abs(mean - D.FASHION_MEAN[0]) < 1e-3 and abs(std - D.FASHION_STD[0]) < 1e-3


# ------------------------------------------------------------------------------------------
# CIFAR
# ------------------------------------------------------------------------------------------


def _py2_style_pickle(obj) -> bytes:
    """Pickle like the original archives: GLOBAL opcodes naming numpy.core.multiarray."""
    blob = pickle.dumps(obj, protocol=3)
    return blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _batch(n: int, label_key: bytes, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {
        b"batch_label": b"testing batch",
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        out[b"coarse_labels"] = [0] * n
    return out


_LAYOUT = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", b"labels", 10,
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", b"fine_labels", 100,
                 ["train"], ["test"]),
}  # fmt: skip


def _cifar_members(name: str, n: int = 3) -> dict[str, tuple[bytes, dict]]:
    _, _, key, k, train, test = _LAYOUT[name]
    members = {}
    for i, member in enumerate(train + test):
        batch = _batch(n, key, k, seed=i)
        members[member] = (_py2_style_pickle(batch), batch)
    return members


def _write_tar(path: Path, folder: str, payloads: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for member, blob in payloads.items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _expected(members, names, key):
    x = np.concatenate([members[m][1][b"data"] for m in names]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(members[m][1][key]) for m in names])
    return x, y


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_cifar_round_trip(tmp_path, name, layout):
    archive, folder, key, _, train, test = _LAYOUT[name]
    members = _cifar_members(name)
    payloads = {m: blob for m, (blob, _) in members.items()}
    if layout == "archive":
        _write_tar(tmp_path / archive, folder, payloads)
    else:
        (tmp_path / folder).mkdir()
        for m, blob in payloads.items():
            (tmp_path / folder / m).write_bytes(blob)
    for split, names in (("train", train), ("test", test)):
        x, y = D.load_cifar(tmp_path, name, split)
        ex, ey = _expected(members, names, key)
        assert x.dtype == torch.uint8 and x.shape == (3 * len(names), 3, 32, 32)
        assert y.dtype == torch.int64
        assert np.array_equal(x.numpy(), ex) and np.array_equal(y.numpy(), ey)


def test_cifar_pickle_really_uses_legacy_numpy_global():
    blob = _py2_style_pickle(_batch(2, b"labels", 10, 0))
    assert b"numpy.core.multiarray\n_reconstruct" in blob


def _py2_opcode_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """Hand-assembled protocol-2 pickle using Python 2 str opcodes, as in the real archives."""

    def s(b: bytes) -> bytes:  # BINSTRING: what Python 2 wrote for str
        return b"T" + len(b).to_bytes(4, "little") + b

    def i(v: int) -> bytes:  # BININT
        return b"J" + v.to_bytes(4, "little", signed=True)

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b")
        + b"\x87R(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
        + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
        + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
        + b"\x89" + s(data.tobytes()) + b"tb"
    )  # fmt: skip
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + b"u."


def test_cifar_python2_opcode_pickle(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(_py2_opcode_pickle(data, [3, 1, 4, 1]))
    x, y = D.load_cifar(folder, "cifar10", "test")  # root may be the extracted folder itself
    assert np.array_equal(x.numpy(), data.reshape(4, 3, 32, 32))
    assert y.tolist() == [3, 1, 4, 1]


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar_malicious_pickle_refused(tmp_path, protocol):
    canary = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Evil(str(canary)), "labels": []}, protocol=protocol)
    _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py",
               {"test_batch": payload})
    with pytest.raises(D.UnsafePickleError, match="system") as info:
        D.load_cifar(tmp_path, "cifar10", "test")
    assert isinstance(info.value, ValueError) and "test_batch" in str(info.value)
    assert not canary.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_python3_pickles_of_any_protocol_load(tmp_path, protocol):
    # Python 3 writes bytes through _codecs.encode(str, "latin1") (and bytes() when empty) at
    # protocols 0-2, and numpy writes arrays through _frombuffer at protocol 5: all accepted
    batch = _batch(3, b"labels", 10, 0)
    batch[b"batch_label"] = b""
    payload = pickle.dumps(batch, protocol=protocol)
    if protocol <= 2:
        assert b"_codecs" in payload
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    x, y = D.load_cifar(tmp_path, "cifar10", "test")
    assert np.array_equal(x.numpy(), batch[b"data"].reshape(3, 3, 32, 32))
    assert y.tolist() == batch[b"labels"]


class _Reduce:
    """Pickles as call(*args): to forge pickles that use an allowed global with other arguments."""

    def __init__(self, call, args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


def _np_frombuffer():
    core = getattr(np, "_core", None)
    return core.numeric._frombuffer if core is not None else np.core.numeric._frombuffer


@pytest.mark.parametrize(
    "forged, message",
    [
        (_Reduce(__import__("codecs").encode, (b"x" * 100, "zlib")), r"_codecs\.encode.*only \(str, 'latin1'\)"),
        (_Reduce(__import__("codecs").encode, ("abc", "rot13")), r"_codecs\.encode.*only \(str, 'latin1'\)"),
        (_Reduce(bytes, (10**12,)), r"bytes\(1000000000000,\): only bytes\(\) \(empty\)"),
        (_Reduce(_np_frombuffer(), (b"\0" * 8, np.dtype(object), (1,), "C")), "_frombuffer"),
        (_Reduce(eval, ("1+1",)), "eval"),
        (_Reduce(np.load, ("x.npy",)), "refusing to load global numpy.*load"),
    ],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_allowed_globals_only_with_their_safe_arguments(tmp_path, forged, message, protocol):
    payload = pickle.dumps({b"data": forged, b"labels": []}, protocol=protocol)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(D.UnsafePickleError, match=message):
        D.load_cifar(tmp_path, "cifar10", "test")


def test_cifar_truncated_archive_refused(tmp_path):
    members = _cifar_members("cifar10", n=40)
    path = tmp_path / "cifar-10-python.tar.gz"
    _write_tar(path, "cifar-10-batches-py", {m: b for m, (b, _) in members.items()})
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz"):
        D.load_cifar(tmp_path, "cifar10", "train")


def test_cifar_truncated_pickle_refused(tmp_path):
    blob, _ = _cifar_members("cifar10")["test_batch"]
    _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py",
               {"test_batch": blob[:-10]})
    with pytest.raises(ValueError, match="corrupt pickle"):
        D.load_cifar(tmp_path, "cifar10", "test")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.update({b"data": b[b"data"][:, :100]}), "shape"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "uint8"),
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "counts must match"),
        (lambda b: b.update({b"labels": [99] * len(b[b"labels"])}), "0..9"),
        (lambda b: b.pop(b"labels"), "lacks key"),
    ],
)
def test_cifar_bad_batch_refused(tmp_path, mutate, message):
    batch = _batch(3, b"labels", 10, 0)
    mutate(batch)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(_py2_style_pickle(batch))
    with pytest.raises(ValueError, match=message):
        D.load_cifar(tmp_path, "cifar10", "test")


def test_cifar_missing_member_refused(tmp_path):
    _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", {"x": b""})
    with pytest.raises(ValueError, match="lacks member"):
        D.load_cifar(tmp_path, "cifar10", "test")


def test_cifar_missing_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        D.load_cifar(tmp_path / "absent", "cifar100")
    assert str(tmp_path / "absent") in str(info.value)
    assert "cifar-100-python.tar.gz" in str(info.value)
    assert "--data-dir DIR (root= in Python)" in str(info.value) and "RBGP_CIFAR" in str(info.value)


def test_cifar_bad_name():
    with pytest.raises(ValueError, match="cifar10"):
        D.load_cifar(".", "cifar11")


# ------------------------------------------------------------------------------------------
# Loader
# ------------------------------------------------------------------------------------------


def _collect(loader: D.TensorLoader) -> torch.Tensor:
    return torch.cat([yb for _, yb in loader])


@pytest.mark.parametrize("n, world", [(12, 3), (10, 3), (5, 8), (64, 4)])
def test_loader_shards_cover_dataset(n, world):
    x = torch.arange(n).float().unsqueeze(1)
    y = torch.arange(n)
    shards = [
        _collect(D.TensorLoader(x, y, batch_size=2, seed=3, rank=r, world_size=world))
        for r in range(world)
    ]
    sizes = {len(s) for s in shards}
    assert sizes == {-(-n // world)}
    every = torch.cat(shards)
    assert set(every.tolist()) == set(range(n))
    if n % world == 0:
        assert sorted(every.tolist()) == list(range(n))  # disjoint and complete


def test_loader_batches_match_features_and_labels():
    x = torch.arange(20).float().view(10, 2)
    y = torch.arange(10)
    for xb, yb in D.TensorLoader(x, y, batch_size=3, seed=0):
        assert torch.equal(xb[:, 0], 2 * yb.float())


def test_loader_epochs_and_seeds():
    y = torch.arange(100)
    loader = D.TensorLoader(y.float(), y, batch_size=16, seed=1)
    first = _collect(loader)
    assert torch.equal(first, _collect(loader))  # same epoch -> same order
    loader.set_epoch(1)
    second = _collect(loader)
    assert not torch.equal(first, second)
    assert sorted(second.tolist()) == list(range(100))
    other = D.TensorLoader(y.float(), y, batch_size=16, seed=2)
    assert not torch.equal(first, _collect(other))
    plain = D.TensorLoader(y.float(), y, batch_size=16, shuffle=False)
    assert torch.equal(_collect(plain), y)


def test_loader_len_and_drop_last():
    y = torch.arange(10)
    assert len(D.TensorLoader(y, y, 4)) == 3
    dropping = D.TensorLoader(y, y, 4, drop_last=True)
    assert len(dropping) == 2 and all(len(b) == 4 for _, b in dropping)
    assert len(D.TensorLoader(y, y, 2, rank=1, world_size=3)) == 2  # 4 samples per rank


def test_loader_transform_gets_reproducible_generator():
    x = torch.zeros(8, 3, 8, 8)
    x[:, :, :, :4] = 1.0
    y = torch.arange(8)

    def run(epoch):
        loader = D.TensorLoader(x, y, 4, seed=0, transform=D.random_crop_flip)
        loader.set_epoch(epoch)
        return torch.cat([xb for xb, _ in loader])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 2, "seed": -1}, "seed"),
    ],
)
def test_loader_rejects_bad_args(kwargs, match):
    y = torch.arange(4)
    with pytest.raises(ValueError, match=match):
        D.TensorLoader(y, y, **kwargs)


def test_loader_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="y has 5"):
        D.TensorLoader(torch.zeros(4), torch.zeros(5), 2)


# ------------------------------------------------------------------------------------------
# Augmentation, normalisation, synthetic data, dispatch
# ------------------------------------------------------------------------------------------


def _reference_crops(img: torch.Tensor, padding: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    c, h, w = img.shape
    padded = torch.nn.functional.pad(img, (padding,) * 4)
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out.append((dy, dx, False, crop))
            out.append((dy, dx, True, crop.flip(-1)))
    return out


def test_random_crop_flip_matches_reference_and_varies():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 2, 8, 8, generator=g)
    out = D.random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for i in range(x.shape[0]):
        crops = _reference_crops(x[i], 2)
        matches = [(dy, dx, f) for dy, dx, f, c in crops if torch.equal(c, out[i])]
        assert len(matches) == 1, f"sample {i} is not a crop/flip of its input"
        seen.add(matches[0])
    assert {f for _, _, f in seen} == {True, False}  # flips both happen and not
    assert len({(dy, dx) for dy, dx, _ in seen}) > 5  # offsets vary
    assert any((dy, dx) != (2, 2) for dy, dx, _ in seen)


def test_random_crop_flip_deterministic():
    x = torch.randn(16, 3, 32, 32)
    a = D.random_crop_flip(x, generator=torch.Generator().manual_seed(1))
    b = D.random_crop_flip(x, generator=torch.Generator().manual_seed(1))
    c = D.random_crop_flip(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(D.random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
                       .flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)


def test_random_crop_flip_fill_and_errors():
    x = torch.zeros(64, 2, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = D.random_crop_flip(x, padding=4, fill=(1.0, -1.0), generator=g)
    assert set(out[:, 0].unique().tolist()) == {0.0, 1.0}
    assert set(out[:, 1].unique().tolist()) == {0.0, -1.0}
    with pytest.raises(ValueError, match="float batch"):
        D.random_crop_flip(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_normalize():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = D.normalize(x, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    assert torch.allclose(out[1, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
    with pytest.raises(TypeError, match="uint8"):
        D.normalize(x.float(), 0.5, 0.5)
    with pytest.raises(ValueError, match="2 values for 3 channels"):
        D.normalize(x, (0.5, 0.5), (1.0, 1.0))


def test_synthetic_deterministic_and_learnable():
    xa, ya = D.synthetic(400, (3, 16, 16), 5, seed=0)
    xb, yb = D.synthetic(400, (3, 16, 16), 5, seed=0)
    assert xa.dtype == torch.float32 and xa.shape == (400, 3, 16, 16) and ya.dtype == torch.int64
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xt, yt = D.synthetic(200, (3, 16, 16), 5, seed=1)
    assert not torch.equal(xt[:10], xa[:10])
    means = torch.stack([xa[ya == k].mean(0) for k in range(5)]).flatten(1)
    pred = torch.cdist(xt.flatten(1), means).argmin(1)
    assert (pred == yt).float().mean() > 0.9  # same task across seeds, easily learnable


def test_get_dataset_synthetic_and_errors():
    ds = D.get_dataset("synthetic_cifar10", split="test")
    assert ds.x.shape[1:] == (3, 32, 32) and ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    with pytest.raises(ValueError) as info:
        D.get_dataset("imagenet")
    for name in D.DATASET_NAMES:
        assert name in str(info.value)


def test_get_dataset_files(tmp_path):
    images, labels, _, _ = _make_fashion(tmp_path / "fm", n=6, split="test")
    ds = D.get_dataset("fashion_mnist", tmp_path / "fm", "test")
    assert ds.x.shape == (6, 1, 28, 28) and ds.x.dtype == torch.float32
    expected = (torch.from_numpy(images).float() / 255 - D.FASHION_MEAN[0]) / D.FASHION_STD[0]
    assert torch.allclose(ds.x[:, 0], expected)
    assert torch.equal(ds.y, torch.from_numpy(labels.astype(np.int64)))

    members = _cifar_members("cifar100")
    _write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python",
               {m: b for m, (b, _) in members.items()})
    ds = D.get_dataset("cifar100", tmp_path, "train")
    assert ds.x.shape == (3, 3, 32, 32) and ds.num_classes == 100
    assert D.default_transform("cifar100") is D.random_crop_flip
    assert D.default_transform("fashion_mnist") is None
