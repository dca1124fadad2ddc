"""In-memory datasets, a fast tensor loader and pure-torch CIFAR augmentation.

Every dataset used here (Fashion-MNIST, CIFAR-10/100) fits in memory, so instead of a
``Dataset``/``DataLoader`` pair we load whole splits as tensors once and slice batches from
them. Files on disk are parsed defensively: sizes are checked against their headers before
anything is returned, and the CIFAR pickles go through an unpickler that can build nothing but
plain containers, bytes and numpy arrays (protocols 0-5, written by Python 2 or 3), so a corrupt,
truncated or malicious file is refused rather than half-read.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASET_NAMES",
    "FASHION_MEAN",
    "FASHION_STD",
    "LoadedDataset",
    "TensorLoader",
    "UnsafePickleError",
    "default_transform",
    "get_dataset",
    "load_cifar",
    "load_fashion_mnist",
    "normalize",
    "random_crop_flip",
    "synthetic",
]

# Per-channel statistics of the training splits, on pixel values scaled to [0, 1].
FASHION_MEAN: tuple[float, ...] = (0.2860,)
FASHION_STD: tuple[float, ...] = (0.3530,)
CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, ...] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, ...] = (0.2673, 0.2564, 0.2762)

DATASET_NAMES: tuple[str, ...] = ("fashion_mnist", "cifar10", "cifar100", "synthetic_cifar10")
SPLITS: tuple[str, ...] = ("train", "test")

FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "RBGP_FASHION_MNIST"
CIFAR_ENV = "RBGP_CIFAR"
CIFAR_DEFAULT_DIR = Path("data")

_CHUNK = 1 << 20  # bytes read per call when reading a file of known expected size
_MAX_MEMBER_BYTES = 1 << 30  # no CIFAR batch comes near this; refuse anything larger


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# --------------------------------------------------------------------------------------------

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_HW = 28
_FASHION_CLASSES = 10
_FASHION_MAX_ITEMS = 10_000_000


def _fashion_root(root: str | Path | None) -> tuple[Path, str]:
    """Resolve the Fashion-MNIST folder and say where the choice came from (for errors)."""
    if root is not None:
        return Path(root), "--data-dir / the root argument"
    env = os.environ.get(FASHION_MNIST_ENV)
    if env:
        return Path(env), f"${FASHION_MNIST_ENV}"
    return FASHION_MNIST_DEFAULT_DIR, "the default location"


def _find_idx_file(root: Path, stem: str, origin: str) -> Path:
    candidates = [root / f"{stem}.gz", root / stem]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root} ({origin}); looked for {looked}. "
        f"Install the data with `sudo apt-get install dataset-fashion-mnist` (it goes to "
        f"{FASHION_MNIST_DEFAULT_DIR}), or pass --data-dir DIR (root= in Python) or set "
        f"${FASHION_MNIST_ENV} to a folder holding the four IDX files (gzipped or raw)."
    )


def _read_at_most(f: Any, n: int) -> bytearray:
    """Read up to ``n`` bytes in chunks, so a header claiming a huge size allocates nothing."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, checking its magic number and that its size is exact."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            header = _read_at_most(f, 4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header ({len(header)} bytes)")
            found = int.from_bytes(header[:4], "big")
            if found != magic:
                raise ValueError(
                    f"{path}: bad IDX magic number {found} (0x{found:08x}); expected {magic} "
                    f"(0x{magic:08x}) for a {ndim}-d unsigned-byte file"
                )
            dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            if dims[0] > _FASHION_MAX_ITEMS:
                raise ValueError(f"{path}: implausible item count {dims[0]} in the IDX header")
            expected = math.prod(dims)
            data = _read_at_most(f, expected)
            if len(data) != expected:
                raise ValueError(
                    f"{path}: truncated: header promises {expected} data bytes for shape "
                    f"{tuple(dims)}, found {len(data)}"
                )
            if f.read(1):
                raise ValueError(f"{path}: trailing bytes after the {expected} the header promises")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot decompress/read IDX file: {exc}") from exc
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def load_fashion_mnist(root: str | Path | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split as uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.

    ``root`` defaults to ``$RBGP_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``). Files may be gzipped or raw.
    """
    _check_split(split)
    folder, origin = _fashion_root(root)
    images_stem, labels_stem = _FASHION_FILES[split]
    images_path = _find_idx_file(folder, images_stem, origin)
    labels_path = _find_idx_file(folder, labels_stem, origin)
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, 1)
    if images.shape[1:] != (_FASHION_HW, _FASHION_HW):
        raise ValueError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the counts must match"
        )
    if labels.size and int(labels.max()) >= _FASHION_CLASSES:
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles, optionally inside the .tar.gz)
# --------------------------------------------------------------------------------------------


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for something other than plain data and numpy arrays; nothing was executed."""


def _numpy_reconstruct() -> Callable[..., Any]:
    core = getattr(np, "_core", None)  # numpy >= 2; numpy.core is a deprecated alias there
    if core is not None and hasattr(core, "multiarray"):
        return core.multiarray._reconstruct
    from numpy.core import multiarray  # pragma: no cover - numpy 1.x

    return multiarray._reconstruct  # pragma: no cover


def _numpy_frombuffer() -> Callable[..., Any]:
    core = getattr(np, "_core", None)
    if core is not None and hasattr(core, "numeric"):
        return core.numeric._frombuffer
    from numpy.core import numeric  # pragma: no cover - numpy 1.x

    return numeric._frombuffer  # pragma: no cover


def _latin1_bytes(*args: Any) -> bytes:
    """``_codecs.encode(text, "latin1")``: how Python 3 writes a bytes object at protocols 0-2 (the
    array data and dict keys of a CIFAR batch re-saved with protocol 2). No other codec is run."""
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode{_short(args)}: only (str, 'latin1') is allowed")
    return args[0].encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: how Python 3 writes an empty bytes object at protocols 0-2; nothing else."""
    if args:
        raise UnsafePickleError(f"refusing bytes{_short(args)}: only bytes() (empty) is allowed")
    return b""


def _frombuffer(*args: Any) -> np.ndarray:
    """numpy's ``_frombuffer(buf, dtype, shape, order[, axis_order])``, how numpy writes an array at
    protocol 5, for plain (non-object) dtypes only."""
    buf, dtype, shape, order = args[:4] if 4 <= len(args) <= 5 else (None, None, None, None)
    if (
        not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer))
        or not isinstance(dtype, np.dtype)
        or dtype.hasobject
        or not isinstance(shape, tuple)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or order not in ("C", "F", "K")
    ):
        raise UnsafePickleError(
            f"refusing numpy _frombuffer{_short(args)}: only a buffer, a plain dtype, a shape and an order are allowed"
        )
    return _numpy_frombuffer()(*args)


def _short(args: tuple) -> str:
    text = repr(args)
    return text if len(text) <= 80 else text[:77] + "..."


# Each allowed global maps to a factory of what it resolves to. The numpy ones rebuild arrays
# (protocols 0-4: _reconstruct + ndarray.__setstate__; 5: _frombuffer); _codecs.encode and bytes are
# how Python 3 writes bytes at protocols 0-2, accepted only with the arguments it writes.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.numeric", "_frombuffer"): lambda: _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): lambda: _frombuffer,
    ("_codecs", "encode"): lambda: _latin1_bytes,
    ("__builtin__", "bytes"): lambda: _empty_bytes,
    ("builtins", "bytes"): lambda: _empty_bytes,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild bytes and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise UnsafePickleError(f"refusing to load global {module}.{name}: only {allowed} are allowed")
        return factory()


def _safe_unpickle(data: bytes, source: str) -> Any:
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from exc
    except Exception as exc:  # any failure to parse means the file is corrupt
        raise ValueError(f"{source}: corrupt pickle ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class _CifarSpec:
    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    num_classes: int


_CIFAR_SPECS = {
    "cifar10": _CifarSpec(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        label_key="labels",
        num_classes=10,
    ),
    "cifar100": _CifarSpec(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        label_key="fine_labels",
        num_classes=100,
    ),
}
_CIFAR_PIXELS = 3 * 32 * 32


def _parse_cifar_batch(obj: Any, spec: _CifarSpec, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check one unpickled batch dict and return its ``(N, 3072)`` uint8 data and labels."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a dict batch, got {type(obj).__name__}")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for key in ("data", spec.label_key):
        if key not in entries:
            raise ValueError(f"{source}: batch lacks key {key!r} (has {sorted(map(str, entries))})")
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = getattr(data, "dtype", type(data).__name__)
        raise ValueError(f"{source}: 'data' must be a uint8 numpy array, got {what}")
    if data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise ValueError(f"{source}: 'data' has shape {data.shape}, expected (N, {_CIFAR_PIXELS})")
    raw_labels = entries[spec.label_key]
    if not isinstance(raw_labels, (list, np.ndarray)):
        raise ValueError(f"{source}: labels must be a list, got {type(raw_labels).__name__}")
    if isinstance(raw_labels, list) and not all(isinstance(v, int) and not isinstance(v, bool) for v in raw_labels):
        raise ValueError(f"{source}: labels must all be ints")
    labels = np.asarray(raw_labels)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(f"{source}: {labels.shape} labels for {data.shape[0]} images; counts must match")
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"{source}: labels have dtype {labels.dtype}, expected integers")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(f"{source}: labels span {labels.min()}..{labels.max()}, expected 0..{spec.num_classes - 1}")
    return data, labels


def _read_cifar_folder(folder: Path, names: Sequence[str]) -> dict[str, bytes]:
    out = {}
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing batch file (folder {folder} is incomplete)")
        out[name] = path.read_bytes()
    return out


def _read_cifar_archive(archive: Path, folder: str, names: Sequence[str]) -> dict[str, bytes]:
    """Read the wanted batch members of the tarball in one sequential pass, in memory."""
    wanted = {f"{folder}/{name}": name for name in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                key = member.name.removeprefix("./")
                if key not in wanted or wanted[key] in out:
                    continue
                if not member.isfile():
                    raise ValueError(f"{archive}: member {key} is not a regular file")
                if member.size > _MAX_MEMBER_BYTES:
                    raise ValueError(f"{archive}: member {key} is too large ({member.size} B)")
                handle = tar.extractfile(member)
                payload = handle.read() if handle is not None else b""
                if len(payload) != member.size:
                    raise ValueError(f"{archive}: member {key} is truncated")
                out[wanted[key]] = payload
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{archive}: corrupt or truncated archive ({exc})") from exc
    missing = [k for k, v in wanted.items() if v not in out]
    if missing:
        raise ValueError(f"{archive}: archive lacks member(s) {missing}")
    return out


def _cifar_payloads(root: Path, spec: _CifarSpec, names: Sequence[str]) -> tuple[dict[str, bytes], str]:
    """Find the batches under ``root`` (extracted folder first, then the archive)."""
    where, is_folder = _locate_cifar(root, spec, names)
    if is_folder:
        return _read_cifar_folder(where, names), str(where)
    return _read_cifar_archive(where, spec.folder, names), str(where)


def _locate_cifar(root: Path, spec: _CifarSpec, names: Sequence[str]) -> tuple[Path, bool]:
    """(the extracted folder or the archive under ``root``, whether it is a folder); FileNotFoundError."""
    folder = root / spec.folder
    if folder.is_dir():
        return folder, True
    if (root / names[0]).is_file():  # root is the extracted folder itself
        return root, True
    archive = root / spec.archive
    if archive.is_file():
        return archive, False
    if root.is_file():  # root is the archive itself
        return root, False
    raise FileNotFoundError(
        f"CIFAR data not found in {root}: looked for the folder {folder} and the archive "
        f"{archive}. Download {spec.archive} from https://www.cs.toronto.edu/~kriz/cifar.html "
        f"into that folder (no need to extract it), or pass --data-dir DIR (root= in Python) or set "
        f"${CIFAR_ENV}."
    )


def load_cifar(
    root: str | Path | None = None, name: str = "cifar10", split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10/100 split as uint8 images ``(N, 3, 32, 32)`` and int64 labels.

    ``root`` holds ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` or their extracted
    folders; it defaults to ``$RBGP_CIFAR``, else ``./data``. CIFAR-100 uses the fine labels.
    """
    if name not in _CIFAR_SPECS:
        raise ValueError(f"CIFAR name must be one of {tuple(_CIFAR_SPECS)}, got {name!r}")
    _check_split(split)
    spec = _CIFAR_SPECS[name]
    if root is None:
        root = os.environ.get(CIFAR_ENV) or CIFAR_DEFAULT_DIR
    names = spec.train if split == "train" else spec.test
    payloads, where = _cifar_payloads(Path(root), spec, names)
    datas, labels = [], []
    for batch in names:
        source = f"{where}: {batch}"
        data, lab = _parse_cifar_batch(_safe_unpickle(payloads[batch], source), spec, source)
        datas.append(data)
        labels.append(lab)
    images = np.concatenate(datas).reshape(-1, 3, 32, 32)
    return torch.from_numpy(images), torch.from_numpy(np.concatenate(labels))


# --------------------------------------------------------------------------------------------
# Synthetic data, normalisation, augmentation
# --------------------------------------------------------------------------------------------


def synthetic(
    n: int,
    shape: Sequence[int],
    num_classes: int,
    seed: int = 0,
    *,
    pattern_seed: int = 0,
    noise: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic learnable data: float32 ``(n, *shape)`` = class pattern + Gaussian noise.

    Each class has a fixed random pattern (spatially smooth for ``(C, H, W)`` shapes, so
    convolutional nets can pick it up); ``pattern_seed`` fixes the patterns and ``seed`` the
    samples, so splits drawn with different ``seed`` share one task.
    """
    shape = tuple(int(s) for s in shape)
    if n < 0 or num_classes < 1 or not shape or min(shape) < 1:
        raise ValueError(
            f"need n >= 0, num_classes >= 1 and a non-empty positive shape; "
            f"got n={n}, num_classes={num_classes}, shape={shape}"
        )
    g = torch.Generator().manual_seed(pattern_seed)
    if len(shape) == 3:
        c, h, w = shape
        coarse = torch.randn(num_classes, c, max(1, h // 4), max(1, w // 4), generator=g)
        patterns = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        patterns = patterns / patterns.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    else:
        patterns = torch.randn(num_classes, *shape, generator=g)
    g.manual_seed(seed + 1_000_003)  # keep sample noise independent of the pattern stream
    labels = torch.randint(0, num_classes, (n,), generator=g)
    x = patterns[labels] + noise * torch.randn(n, *shape, generator=g)
    return x.float(), labels


def _per_channel(values: float | Sequence[float], channels: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{what} has {t.numel()} values for {channels} channels")
    return t.view(1, channels, 1, 1)


def normalize(x: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float]) -> torch.Tensor:
    """Scale uint8 images ``(N, C, H, W)`` to [0, 1] and standardise each channel (float32)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"normalize expects (N, C, H, W), got shape {tuple(x.shape)}")
    m = _per_channel(mean, x.shape[1], "mean").to(x.device)
    s = _per_channel(std, x.shape[1], "std").to(x.device)
    if (s <= 0).any():
        raise ValueError(f"std must be positive, got {s.flatten().tolist()}")
    return (x.float().div_(255.0).sub_(m)).div_(s)


def random_crop_flip(
    x: torch.Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Standard CIFAR augmentation on a float batch ``(N, C, H, W)``, vectorised.

    Pads each image by ``padding`` with ``fill`` (per channel or scalar; 0 is the dataset mean
    for normalised inputs), takes a random ``H x W`` crop per sample and flips each sample
    horizontally with probability 1/2. Deterministic for a given ``generator``.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float batch (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = x.shape
    rng_device = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rng_device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rng_device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=rng_device).bool()
    dy, dx, flip = dy.to(x.device), dx.to(x.device), flip.to(x.device)

    fill_t = _per_channel(fill, c, "fill").to(x.device, x.dtype)
    padded = fill_t.expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (N, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (N, W)
    n_idx = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    c_idx = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[n_idx, c_idx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------


def _mixed_seed(*parts: int) -> int:
    """Hash several non-negative ints into one well-mixed 63-bit seed."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class TensorLoader:
    """Batches from in-memory tensors, with per-epoch shuffling and rank sharding.

    The epoch's order is a permutation drawn from a generator seeded by ``(seed, epoch)``, so
    every rank draws the same one; like ``DistributedSampler`` it is padded by wrapping around
    to a multiple of ``world_size`` and rank ``r`` takes positions ``r, r + world_size, ...``,
    giving equal-size shards that are disjoint whenever ``world_size`` divides ``len(x)``.
    Call :meth:`set_epoch` before each epoch to get a new order. ``transform(xb, generator=g)``
    is applied to each image batch with a generator seeded by ``(seed, epoch, rank)``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        transform: Callable[..., torch.Tensor] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("cannot load batches from an empty dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.transform = drop_last, transform
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation and augmentation the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last`` trims a partial batch)."""
        return math.ceil(self.x.shape[0] / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in batch order (CPU int64)."""
        n = self.x.shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(_mixed_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices().to(self.x.device)
        aug = torch.Generator().manual_seed(_mixed_seed(self.seed, self.epoch, self.rank + 1))
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            xb = self.x[sel]
            if self.transform is not None:
                xb = self.transform(xb, generator=aug)
            yield xb, self.y[sel.to(self.y.device)]


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


class LoadedDataset(NamedTuple):
    """A normalised split: float32 images ``(N, C, H, W)``, int64 labels and metadata."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]


SYNTHETIC_SIZES = {"train": 1024, "test": 256}


def dataset_shape(name: str) -> tuple[int, tuple[int, int, int]]:
    """(classes, input shape) of data set `name`, without loading it."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if name == "fashion_mnist":
        return 10, (1, 28, 28)
    return (100 if name == "cifar100" else 10), (3, 32, 32)


def check_dataset(name: str, data_dir: str | Path | None = None) -> None:
    """Raise what loading data set `name` would raise for missing files (FileNotFoundError naming them),
    without reading them: what `--dry-run` checks."""
    dataset_shape(name)  # a valid name
    if name == "fashion_mnist":
        folder, origin = _fashion_root(data_dir)
        for split in SPLITS:
            for stem in _FASHION_FILES[split]:
                _find_idx_file(folder, stem, origin)
    elif name in _CIFAR_SPECS:
        spec = _CIFAR_SPECS[name]
        root = data_dir if data_dir is not None else os.environ.get(CIFAR_ENV) or CIFAR_DEFAULT_DIR
        where, is_folder = _locate_cifar(Path(root), spec, spec.train)
        if is_folder:
            missing = [n for n in (*spec.train, *spec.test) if not (where / n).is_file()]
            if missing:
                raise FileNotFoundError(f"CIFAR folder {where} lacks {missing}")


def get_dataset(name: str, data_dir: str | Path | None = None, split: str = "train") -> LoadedDataset:
    """Load ``name`` (one of :data:`DATASET_NAMES`) as normalised float32 tensors."""
    _check_split(split)
    if name == "fashion_mnist":
        x, y = load_fashion_mnist(data_dir, split)
        x = normalize(x.unsqueeze(1), FASHION_MEAN, FASHION_STD)
        return LoadedDataset(x, y, 10, (1, 28, 28))
    if name in ("cifar10", "cifar100"):
        x, y = load_cifar(data_dir, name, split)
        if name == "cifar10":
            mean, std = CIFAR10_MEAN, CIFAR10_STD
        else:
            mean, std = CIFAR100_MEAN, CIFAR100_STD
        num_classes = _CIFAR_SPECS[name].num_classes
        return LoadedDataset(normalize(x, mean, std), y, num_classes, (3, 32, 32))
    if name == "synthetic_cifar10":
        x, y = synthetic(SYNTHETIC_SIZES[split], (3, 32, 32), 10, seed=SPLITS.index(split))
        return LoadedDataset(x, y, 10, (3, 32, 32))
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def default_transform(name: str) -> Callable[..., torch.Tensor] | None:
    """The training augmentation for ``name``: crop+flip for CIFAR-shaped data, else none."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return random_crop_flip if name != "fashion_mnist" else None
