"""path_coverage: end-to-end reachability of a layer stack."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbgp.graphs import BipartiteGraph, complete, path_coverage, product, ramanujan


def _block_diagonal(out: int, inp: int, blocks: int) -> np.ndarray:
    B = np.zeros((out, inp), bool)
    for b in range(blocks):
        B[b * out // blocks:(b + 1) * out // blocks, b * inp // blocks:(b + 1) * inp // blocks] = 1
    return B


@pytest.mark.parametrize("blocks", [2, 4, 8])
def test_aligned_block_diagonal_never_mixes(blocks):
    widths = [64, 128, 128, 64]
    layers = [_block_diagonal(widths[i + 1], widths[i], blocks) for i in range(3)]
    assert path_coverage(layers) == pytest.approx(1 / blocks)
    assert path_coverage(layers[:1]) == pytest.approx(1 / blocks)


def test_complete_layers_cover_everything():
    assert path_coverage([complete(32, 16), complete(8, 32), complete(4, 8)]) == 1.0


def test_expanders_mix_and_accept_graph_types():
    a = ramanujan(512, 256, 16, method="random", seed=1)
    b = ramanujan(512, 512, 16, method="random", seed=2)
    c = ramanujan(256, 512, 16, method="random", seed=3)
    assert path_coverage([a]) == pytest.approx(a.density)
    assert path_coverage([a, b, c]) == 1.0
    p = product(ramanujan(16, 16, 4), complete(2, 2))  # ProductGraph layer, 32x32
    assert path_coverage([p, p.to_graph()]) == path_coverage([p.biadjacency(), p.biadjacency()])


@given(st.lists(st.integers(1, 9), min_size=2, max_size=5), st.integers(0, 2**32 - 1),
       st.sampled_from([0.1, 0.3, 0.6]))
@settings(max_examples=40, deadline=None)
def test_matches_boolean_chain_product(widths, seed, p):
    rng = np.random.default_rng(seed)
    layers = [rng.random((widths[i + 1], widths[i])) < p for i in range(len(widths) - 1)]
    reach = layers[0].astype(int)
    for layer in layers[1:]:
        reach = (layer.astype(int) @ reach > 0).astype(int)
    assert path_coverage(layers) == pytest.approx(reach.mean())
    graphs = [BipartiteGraph.from_biadjacency(layer) for layer in layers]
    assert path_coverage(graphs) == path_coverage(layers)


def test_dead_output_after_full_coverage():
    last = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])  # output 1 has no inputs at all
    assert path_coverage([np.ones((4, 3)), np.ones((5, 4)), last]) == 0.5


def test_shape_mismatch_names_layer_and_shapes():
    with pytest.raises(ValueError, match=r"layer 2 has shape \(4, 6\).*layer 1 has shape \(5, 8\)"):
        path_coverage([np.ones((8, 3)), np.ones((5, 8)), np.ones((4, 6))])
    with pytest.raises(ValueError, match="none"):
        path_coverage([])
    with pytest.raises(ValueError, match="2-D"):
        path_coverage([np.ones(3)])
