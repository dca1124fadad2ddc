"""The native kernel fuzzed against the fp64 reference (random layouts, batches, strides, value dtypes, inf and
NaN inputs), called from several threads at once, and the same tests re-run on a build under AddressSanitizer
and UndefinedBehaviorSanitizer.

`RBGP_TEST_SANITIZE=1` (set by `test_under_sanitizers` for its child pytest) builds the kernel with the
sanitizers before anything loads it; the child runs with libasan preloaded, as a sanitized shared library
loaded into Python needs."""

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbgp.ops import LayoutTensors, native, reference_linear

SANITIZER_FLAGS = ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
if os.environ.get("RBGP_TEST_SANITIZE") == "1":
    native.FLAGS = (*native.FLAGS, *SANITIZER_FLAGS)  # later -O1 wins over -O3; a new cache name (flags hashed)

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler to build the native kernel")

TOL = 1e-5  # relative to max |y| over the finite outputs; see test_native.py
SPECIALS = (float("nan"), float("inf"), float("-inf"))


def block_layout(groups: int, rows: int, pad: int, in_blocks: int, extra: int, bw: int, kb: int, seed: int):
    """Groups of `rows` rows (the last `pad` row ids are padding) each reading `kb` random aligned blocks of
    `bw` columns out of `in_blocks * bw + extra` inputs."""
    rng = np.random.default_rng(seed)
    row_index = rng.permutation(groups * rows).reshape(groups, rows)
    blocks = np.sort(np.stack([rng.choice(in_blocks, kb, replace=False) for _ in range(groups)]), axis=1)
    col_index = (blocks[:, :, None] * bw + np.arange(bw)).reshape(groups, kb * bw)
    return LayoutTensors.from_indices(
        torch.from_numpy(row_index), torch.from_numpy(col_index), in_blocks * bw + extra,
        out_features=groups * rows - pad,
    )


def make_values(layout: LayoutTensors, kind: str, g: torch.Generator):
    """(values as the kernel takes them, their per-row scales or None, the exact values in fp64)."""
    values = torch.randn(layout.values_shape, generator=g)
    if kind == "bf16":
        return values.bfloat16(), None, values.bfloat16().double()
    if kind == "int8":
        scales = values.abs().amax(-1).clamp_min(1e-3) / 127
        q = torch.round(values / scales[..., None]).clamp(-127, 127).to(torch.int8)
        return q, scales, q.double() * scales.double()[..., None]
    return values, None, values.double()


def make_input(batch: int, width: int, stride: str, g: torch.Generator) -> torch.Tensor:
    if stride == "wide":  # rows further apart than the width (a slice of a wider tensor)
        return torch.randn(batch, width + 5, generator=g)[:, :width]
    if stride == "step":  # every other column of a wider tensor
        return torch.randn(batch, 2 * width, generator=g)[:, ::2]
    x = torch.randn(batch, width, generator=g)
    return x.t().contiguous().t() if stride == "transposed" else x


def check_against_reference(y: torch.Tensor, x: torch.Tensor, exact: torch.Tensor, layout, bias) -> None:
    ref = reference_linear(x.double(), exact, layout, None if bias is None else bias.double())
    assert y.shape == ref.shape and y.dtype == torch.float32 and y.is_contiguous()
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(y), finite), "inf/NaN not where the densified product has them"
    if finite.any():
        scale = max(1.0, ref[finite].abs().max().item())
        assert (y.double()[finite] - ref[finite]).abs().max().item() <= TOL * scale


@st.composite
def cases(draw):
    bw = draw(st.sampled_from([1, 2, 3, 4, 8, 9, 16]))
    rows, groups = draw(st.integers(1, 9)), draw(st.integers(1, 6))
    in_blocks = draw(st.integers(1, 10))
    layout = block_layout(
        groups, rows, draw(st.integers(0, rows - 1)), in_blocks, draw(st.integers(0, bw - 1)), bw,
        draw(st.integers(1, in_blocks)), draw(st.integers(0, 2**16)),
    )
    batch = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 16, 17, 33]))
    specials = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(SPECIALS)),
                             max_size=3))
    return (layout, batch, draw(st.sampled_from(["fp32", "bf16", "int8"])),
            draw(st.sampled_from(["contiguous", "transposed", "wide", "step"])), specials, draw(st.booleans()),
            draw(st.integers(0, 2**16)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_fuzz_against_the_reference(case):
    layout, batch, kind, stride, specials, with_bias, seed = case
    g = torch.Generator().manual_seed(seed)
    values, scales, exact = make_values(layout, kind, g)
    x = make_input(batch, layout.in_features, stride, g)
    for s, j, v in specials if batch else ():
        x[s % batch, j % layout.in_features] = v
    bias = torch.randn(layout.out_features, generator=g) if with_bias else None
    default, default_wide, default_rows = native.isa(), native.wide_from(), native.wide_rows()
    default_bits = native.vector_bits()
    runs = (("plain", default_wide, 4, 256), ("avx2", default_wide, 4, 256), ("avx2", 1, 4, 256),
            ("avx2", 1, 8, 256), ("avx2", 1, 8, 512))
    try:
        for isa, wide_from, rows, bits in runs:  # both builds, where the CPU has them; AVX2's wide tiles at
            # every batch, 4 and 8 rows high, 8 (where the CPU has AVX-512VL) with 256- and 512-bit vectors
            if native.isa(isa) == isa and native.wide_rows(rows) == rows and native.vector_bits(bits) == bits:
                native.wide_from(wide_from)
                check_against_reference(native.grouped_small(x, values, layout, scales, bias), x, exact, layout, bias)
    finally:
        native.isa(default)
        native.wide_from(default_wide)
        native.wide_rows(default_rows)
        native.vector_bits(default_bits)


def test_threads_with_mixed_batches():
    """Six threads calling the kernel at once at batches 1..16 get exactly what one caller gets."""
    layout = block_layout(40, 8, 3, 24, 0, 16, 6, 1)
    g = torch.Generator().manual_seed(0)
    values = torch.randn(layout.values_shape, generator=g)
    inputs = [torch.randn(b, layout.in_features, generator=g) for b in (1, 2, 3, 5, 8, 13, 16)]
    expected = [native.grouped_small(x, values, layout) for x in inputs]
    failures: list[str] = []

    def work(offset: int) -> None:
        try:
            for step in range(60):
                i = (offset + step) % len(inputs)
                if not torch.equal(native.grouped_small(inputs[i], values, layout), expected[i]):
                    failures.append(f"thread {offset}, batch {inputs[i].shape[0]}")
        except Exception as err:  # reported below
            failures.append(repr(err))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]


def _asan_runtime() -> str | None:
    compiler = native._compiler()
    if compiler is None:
        return None
    run = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = run.stdout.strip()
    return path if run.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(os.environ.get("RBGP_TEST_SANITIZE") == "1", reason="the sanitized child itself")
def test_under_sanitizers(tmp_path):
    """The fuzz and thread tests on an ASan+UBSan build of the kernel, in a child process; and a positive
    control (a block id past the input's end, which the checked tables never let through) that the
    sanitizer must report, so this test cannot pass with the sanitizers off."""
    runtime = _asan_runtime()
    if runtime is None:
        pytest.skip("the C compiler has no AddressSanitizer runtime")
    env = {
        **os.environ, "RBGP_TEST_SANITIZE": "1", "RBGP_CACHE_DIR": str(tmp_path), "LD_PRELOAD": runtime,
        "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1", "OMP_NUM_THREADS": "2",
    }
    conv = Path(__file__).with_name("test_native_conv.py")  # its runs read whole vectors past a row's end
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), str(conv),
         "-k", "fuzz or threads or dense_conv or any_tables"], env=env, capture_output=True, text=True, timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "Sanitizer" not in output, output[-4000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= (2 if native.isa() != "avx2" else 12), output[-2000:]
    assert any("grouped_small" in p.name for p in tmp_path.iterdir()), "the sanitized build was not made"
    control = (
        "import torch\nfrom rbgp.ops import native\n"
        f"native.FLAGS = (*native.FLAGS, *{SANITIZER_FLAGS!r})\n"
        "x, v = torch.randn(1, 64), torch.randn(1, 1, 16)\n"
        "assert native.library() is not None\n"
        "native._run(x, v, None, torch.tensor([[4]]), torch.tensor([[0]]), 16, 1)\n"
    )
    run = subprocess.run([sys.executable, "-c", control], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in run.stderr, run.stderr[-3000:]
