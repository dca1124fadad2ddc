"""Graph constructions: complete bipartite graphs and verified Ramanujan biregular graphs.

`ramanujan` is a pure function of its arguments: try t draws from np.random.default_rng([seed, t])
only, so the same call gives the same graph on every machine. Every result is checked with
`is_ramanujan()`; failures are retried with the next derived seed.

Every method honours the seed: the random method and the lifts draw their edges from it, and the
algebraic (affine-lift) graph, deterministic by itself, is relabelled by a random permutation of its
rows and one of its columns drawn from the same generator. A relabelling keeps the degrees and every
singular value (B -> P B Q with permutation matrices P, Q), so Ramanujan-ness and sigma2 do not
depend on the seed, while different seeds give different graphs (with overwhelming probability:
two seeds agree only when their relabellings differ by an automorphism of the graph). Complete
graphs have a single labelling and ignore the seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from numbers import Integral
from typing import Any

import numpy as np

from .affine import affine_lift, affine_shape_error
from .bipartite import BipartiteGraph, degree_bound, require_int
from .lifts import certified_2lifts, lift_shape_error
from .random_biregular import SamplingError, random_bipartite, random_biregular

METHODS = ("auto", "random", "algebraic", "lift")
AUTO_ALGEBRAIC_TRIES = 4


class RamanujanError(ValueError):
    """No Ramanujan graph was found for the requested shape and degree within the try budget."""


class RamanujanWarning(UserWarning):
    """ramanujan(strict=False) returned a graph that is not Ramanujan."""


def _positive_int(value: Any, what: str, minimum: int = 1) -> int:
    return require_int(value, what, minimum)


def complete(m: int, n: int) -> BipartiteGraph:
    """The complete bipartite graph K_{m,n} (all-ones m x n mask), named "complete"."""
    m = _positive_int(m, "m")
    n = _positive_int(n, "n")
    indptr = np.arange(m + 1, dtype=np.int64) * n
    return BipartiteGraph(m, n, indptr, np.tile(np.arange(n, dtype=np.int64), m), "complete")


def _valid_degrees_message(m: int, n: int, c: int) -> str:
    step = n // math.gcd(m, n)  # m*c % n == 0  <=>  c is a multiple of n / gcd(m, n)
    below = (c // step) * step
    near = [v for v in (below, below + step) if 1 <= v <= n]
    return (
        f"left_degree={c} is impossible for a {m}x{n} biregular graph: m*left_degree = "
        f"{m * c} is not a multiple of n = {n}; valid left degrees are the multiples of "
        f"{step} up to {n} (nearest: {', '.join(map(str, near))})"
    )


def _check_arguments(
    m: Any, n: Any, left_degree: Any, seed: Any, method: Any, strict: Any, max_tries: Any
) -> tuple[int, int, int, int, int]:
    m = _positive_int(m, "m (number of rows / outputs)")
    n = _positive_int(n, "n (number of columns / inputs)")
    if isinstance(left_degree, (bool, np.bool_)) or not isinstance(left_degree, Integral):
        raise ValueError(f"left_degree must be an integer in [1, n={n}], got {left_degree!r}")
    c = int(left_degree)
    if not 1 <= c <= n:
        raise ValueError(f"left_degree must be in [1, n={n}], got {c}")
    if (m * c) % n:
        raise ValueError(_valid_degrees_message(m, n, c))
    seed = _positive_int(seed, "seed", minimum=0)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if not isinstance(strict, (bool, np.bool_)):
        raise ValueError(f"strict must be a bool, got {strict!r}")
    max_tries = _positive_int(max_tries, "max_tries")
    return m, n, c, seed, max_tries


def _preference(graph: BipartiteGraph) -> tuple[bool, float]:
    """Order of non-Ramanujan fallbacks: connected first, then the largest margin."""
    return graph.normalized_sigma2() < 1 - 1e-9, graph.margin()


def _search(
    build: Callable[[np.random.Generator, int], BipartiteGraph],
    m: int,
    n: int,
    c: int,
    seed: int,
    max_tries: int,
    strict: bool,
    method: str,
) -> BipartiteGraph:
    """Build with derived seeds until a graph is Ramanujan; else raise or warn and return best."""
    best: BipartiteGraph | None = None
    failures: list[str] = []
    for t in range(max_tries):
        try:
            graph = build(np.random.default_rng([seed, t]), t)
        except SamplingError as exc:
            failures.append(str(exc))
            continue
        if graph.is_ramanujan():
            return graph
        if best is None or _preference(graph) > _preference(best):
            best = graph
    d = m * c // n
    message = (
        f"no Ramanujan graph found for shape {m}x{n}, left degree {c} (right degree {d}), "
        f"method {method!r}, seed {seed}, in {max_tries} tries"
    )
    if best is not None:
        message += (
            f"; best margin {best.margin():.6g} (sigma2 {best.sigma2():.6g}, bound "
            f"{best.ramanujan_bound():.6g}, sigma1 {best.sigma1():.6g}"
            f"{', disconnected' if best.normalized_sigma2() >= 1 - 1e-9 else ''})"
        )
    if failures:
        message += f"; {len(failures)} tries failed to build: {failures[-1]}"
    if strict or best is None:
        raise RamanujanError(message)
    warnings.warn(message + "; returning the best graph found (strict=False)", RamanujanWarning, stacklevel=3)
    return best


def _random_builder(m: int, n: int, c: int) -> Callable[[np.random.Generator, int], BipartiteGraph]:
    name = "ramanujan-random(complement)" if 2 * c > n else "ramanujan-random"

    def build(rng: np.random.Generator, t: int) -> BipartiteGraph:
        return BipartiteGraph(m, n, *random_biregular(m, n, c, rng), name=name)

    return build


def relabel_neighbors(neighbors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The neighbour lists (m, c) of the same graph with its m rows and n columns relabelled by
    random permutations drawn from `rng` (rows first, then columns): row i becomes row
    rows[i] and column j column cols[j]. Degrees and singular values are unchanged."""
    nb = np.asarray(neighbors, dtype=np.int64)
    rows = rng.permutation(nb.shape[0])
    cols = rng.permutation(n)
    out = np.empty_like(nb)
    out[rows] = cols[nb]
    return out


def _algebraic_builder(m: int, n: int, c: int) -> Callable[[np.random.Generator, int], BipartiteGraph]:
    def build(rng: np.random.Generator, t: int) -> BipartiteGraph:
        # Try 0 uses the canonical multipliers; later tries draw random distinct ones. Either way
        # the graph is then relabelled from the same generator, so the seed picks the labelling.
        nb, q = affine_lift(m, n, c, None if t == 0 else rng)
        return BipartiteGraph.from_neighbors(n, relabel_neighbors(nb, n, rng), name=f"ramanujan-algebraic(q={q})")

    return build


def _lift_builder(m: int, n: int, c: int) -> Callable[[np.random.Generator, int], BipartiteGraph]:
    ratio = n // c

    def build(rng: np.random.Generator, t: int) -> BipartiteGraph:
        nb = certified_2lifts(m // ratio, c, ratio.bit_length() - 1, rng)
        return BipartiteGraph.from_neighbors(n, nb, name="ramanujan-lift")

    return build


def _algebraic_should_work(m: int, n: int, c: int) -> bool:
    """Shape fits the affine lift and its guarantee sigma2 <= sqrt(q) meets the bound."""
    if affine_shape_error(m, n, c) is not None:
        return False
    q = n // c
    return math.sqrt(q) <= degree_bound(c, m // q)


def ramanujan(
    m: int, n: int, left_degree: int, seed: int = 0, method: str = "auto", strict: bool = True, max_tries: int = 20
) -> BipartiteGraph:
    """A verified Ramanujan (c, m c / n)-biregular m x n graph, c = left_degree (fan-in).

    method: "random" (configuration model + swap repair, any shape with m*c % n == 0; above
    density 1/2 the complement of a random (n - c)-regular graph), "algebraic" (affine lift over
    GF(q), q = n/c prime or 2^e, shape (k q) x (l q), k, l <= q), "lift" (certified 2-lifts of
    K_{k,l}, shape (k 2^L) x (l 2^L)), or "auto" (algebraic when it fits and is Ramanujan, else
    random). left_degree == n gives the complete graph for every method.

    Seeding: try t draws from np.random.default_rng([seed, t]), so the result is a pure function
    of the arguments. The random method and the lifts draw their edges from it; the algebraic
    graph is a seeded random relabelling of both sides of the affine lift (same degrees, same
    spectrum, so the same sigma2 for every seed). Different seeds give different graphs wherever
    the shape has more than one biregular graph; only the complete graph ignores the seed.

    Raises ValueError for bad arguments and RamanujanError (a ValueError) when max_tries
    verified draws all fail; with strict=False it warns (RamanujanWarning) and returns the draw
    with the largest margin instead.
    """
    m, n, c, seed, max_tries = _check_arguments(m, n, left_degree, seed, method, strict, max_tries)
    if c == n:
        return complete(m, n)
    if method == "algebraic":
        reason = affine_shape_error(m, n, c)
        if reason:
            raise ValueError(f"method 'algebraic' does not fit {m}x{n} with left degree {c}: {reason}")
        return _search(_algebraic_builder(m, n, c), m, n, c, seed, max_tries, strict, method)
    if method == "lift":
        reason = lift_shape_error(m, n, c)
        if reason:
            raise ValueError(f"method 'lift' does not fit {m}x{n} with left degree {c}: {reason}")
        return _search(_lift_builder(m, n, c), m, n, c, seed, max_tries, strict, method)
    if method == "auto" and _algebraic_should_work(m, n, c):
        try:
            return _search(
                _algebraic_builder(m, n, c), m, n, c, seed, min(max_tries, AUTO_ALGEBRAIC_TRIES), True, "algebraic"
            )
        except RamanujanError:
            pass  # e.g. an unlucky disconnected choice; the random method covers every shape
    return _search(_random_builder(m, n, c), m, n, c, seed, max_tries, strict, method)


def near_biregular(m: int, n: int, left_degree: int, seed: int = 0, tries: int = 4) -> BipartiteGraph:
    """A random left-regular m x n graph (every row has `left_degree` neighbours) whose column degrees
    differ by at most one, for shapes where m * left_degree is not a multiple of n, so that no
    biregular (and no Ramanujan) graph exists. Of `tries` draws (np.random.default_rng([seed, t])),
    the one with the largest spectral gap is returned; shapes that admit a biregular graph get
    `ramanujan(..., strict=False)` instead. Rows keep equal fan-in, which the grouped kernels need;
    the spectral gap is reported by the graph like any other.
    """
    m, n, c = _positive_int(m, "m"), _positive_int(n, "n"), _positive_int(left_degree, "left_degree")
    if c > n:
        raise ValueError(f"left_degree must be in [1, n={n}], got {c}")
    seed, tries = _positive_int(seed, "seed", minimum=0), _positive_int(tries, "tries")
    if (m * c) % n == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RamanujanWarning)
            return ramanujan(m, n, c, seed=seed, strict=False)
    base, extra = divmod(m * c, n)
    best: BipartiteGraph | None = None
    for t in range(tries):
        rng = np.random.default_rng([seed, t])
        col_degrees = np.full(n, base, np.int64)
        col_degrees[rng.permutation(n)[:extra]] += 1
        try:
            graph = BipartiteGraph(
                m, n, *random_bipartite(np.full(m, c, np.int64), col_degrees, rng), name="near-biregular-random"
            )
        except SamplingError:
            continue
        if best is None or graph.spectral_gap() > best.spectral_gap():
            best = graph
    if best is None:
        raise RamanujanError(
            f"no simple left-regular {m}x{n} graph with left degree {c} and balanced "
            f"column degrees was drawn in {tries} tries"
        )
    return best
