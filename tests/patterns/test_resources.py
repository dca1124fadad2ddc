"""Resource limits are decided before allocating; planning is arithmetic, so huge shapes fail fast."""

import os
import subprocess
import sys
import textwrap
import time
import tracemalloc

import pytest

from rbgp.patterns import PATTERNS, RBGP4, get_pattern
from rbgp.patterns.rbgp import largest_divisor
from rbgp.patterns.resources import ResourceError
from rbgp.tools.describe import build_and_describe

HUGE = [(10**9, 64), (64, 10**9)]


@pytest.mark.parametrize("kind", sorted(PATTERNS))
@pytest.mark.parametrize("shape", HUGE)
def test_every_pattern_refuses_huge_shapes_quickly(kind, shape):
    start = time.perf_counter()
    with pytest.raises(ResourceError) as err:
        get_pattern(kind).build(shape, 0.5, 0)
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "\n" not in message
    assert f"a {shape[0]} x {shape[1]} {kind} mask at sparsity 0.5 needs about" in message
    assert "limit" in message and "RBGP_MEMORY_LIMIT" in message
    assert isinstance(err.value, ValueError)


def test_refusal_follows_the_limit(monkeypatch):
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "1M")
    with pytest.raises(ResourceError, match=r"a 1024 x 1024 rbgp4 mask .* more than the 1.0 MiB limit \(set by "
                                            r"RBGP_MEMORY_LIMIT=1M\)"):
        RBGP4().build((1024, 1024), 0.875)
    with pytest.raises(ResourceError, match=r"a 256 x 2304 \(weight 256x256x3x3\) unstructured mask"):
        get_pattern("unstructured").build((256, 256, 3, 3), 0.9)
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "unlimited")
    assert RBGP4().build((1024, 1024), 0.875).nnz == 1024 * 128


def test_describe_checks_its_own_cost_before_building(monkeypatch):
    pattern = get_pattern("unstructured")
    build_only = pattern.estimate((2048, 2048), 0.5).bytes
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", str(build_only + 1))
    pattern.build((2048, 2048), 0.5)  # building fits
    with pytest.raises(ResourceError, match="to build and describe"):
        build_and_describe("unstructured", 2048, 2048, 0.5)


@pytest.mark.parametrize("kind, shape, sparsity", [
    ("rbgp4", (4096, 4096), 0.875), ("rbgp4", (4096, 4096), 0.9375), ("rbgp4", (512, 512, 3, 3), 0.9),
    ("rbgp4", (512, 4608), 0.9), ("unstructured", (4096, 4096), 0.9), ("block", (4096, 4096), 0.9),
    ("nm", (4096, 4096), 0.5), ("hbsnn", (4096, 4096), 0.9),
])
def test_normal_sizes_are_small(kind, shape, sparsity):
    """Estimates of ordinary layers stay far below any machine's limit (VGG19, the 4096^2 target)."""
    assert get_pattern(kind).estimate(shape, sparsity).bytes < 512 << 20


@pytest.mark.parametrize("kind, shape, sparsity", [("rbgp4", (1024, 1024), 0.875), ("rbgp4", (16384, 64), 0.5),
                                                   ("unstructured", (1024, 1024), 0.9), ("nm", (1024, 1024), 0.5),
                                                   ("block", (1024, 1024), 0.9), ("hbsnn", (1024, 1024), 0.75)])
def test_estimate_bounds_the_measured_peak(kind, shape, sparsity):
    """The estimate is an upper bound of the traced peak, and not a loose one (within 4x)."""
    pattern = get_pattern(kind)
    estimate = pattern.estimate(shape, sparsity).bytes
    tracemalloc.start()
    try:
        pattern.build(shape, sparsity, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= estimate <= 4 * peak


@pytest.mark.parametrize("shape", HUGE + [(10**12, 10**12), (3, 10**15), (10**15, 3), (2**40, 3 * 2**40)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_planning_is_arithmetic(shape, sparsity):
    start = time.perf_counter()
    try:
        RBGP4.plan(*shape, sparsity)
    except ValueError as err:
        assert "RBGP4 cannot make" in str(err)
    assert time.perf_counter() - start < 0.5


def test_largest_divisor():
    for n in range(1, 200):
        for at_most in (1, 2, 3, 7, 16, n, n + 3):
            assert largest_divisor(n, at_most) == max(t for t in range(1, at_most + 1) if n % t == 0)
    start = time.perf_counter()
    assert largest_divisor(10**9 + 7, 4) == 1  # a prime: trial division up to its square root only
    assert time.perf_counter() - start < 1.0


SCRIPT = textwrap.dedent("""
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (2_000_000 * 1024, 2_000_000 * 1024))  # ulimit -v 2000000
    from rbgp.patterns import PATTERNS, get_pattern
    from rbgp.tools.describe import build_and_describe
    for kind in sorted(PATTERNS):
        for shape in [(10**9, 64), (64, 10**9)]:
            for call in ("build", "describe"):
                start = time.perf_counter()
                try:
                    if call == "build":
                        get_pattern(kind).build(shape, 0.5, 0)
                    else:
                        build_and_describe(kind, *shape, 0.5)
                except ValueError as err:
                    print(kind, shape, call, f"{time.perf_counter() - start:.3f}", type(err).__name__, flush=True)
                else:
                    sys.exit(f"{kind} {shape} was built")
""")


def test_huge_requests_fail_fast_under_an_address_space_limit():
    """`rbgp pattern --out 1000000000 --in 64` (and --in 1000000000) under `ulimit -v 2000000`: a
    ValueError, not an allocation, within seconds, for every pattern kind."""
    env = {**os.environ}
    env.pop("RBGP_MEMORY_LIMIT", None)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == 4 * len(PATTERNS)
    for line in lines:
        *_, seconds, error = line.split()
        assert error == "ResourceError" and float(seconds) < 5.0, line
    assert time.perf_counter() - start < 60
