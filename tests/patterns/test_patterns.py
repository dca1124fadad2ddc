import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rbgp.graphs import complete, ramanujan
from rbgp.patterns import (NM, RBGP, RBGP4, Block, HBsNN, Unstructured, get_pattern,
                           matrix_shape, stride_permutation)
from rbgp.patterns.base import bsr_bytes, csr_bytes


def test_matrix_shape_of_conv_is_im2col():
    assert matrix_shape((64, 32, 3, 3)) == (64, 288)
    with pytest.raises(ValueError, match="at least 2"):
        matrix_shape((5,))


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5, "0.9", True])
def test_sparsity_outside_unit_interval_rejected(sparsity):
    for pattern in (Unstructured(), Block((4, 4)), RBGP4()):
        with pytest.raises(ValueError, match="sparsity"):
            pattern.build((64, 64), sparsity)


def test_unstructured_exact_count_and_determinism():
    a = Unstructured().build((100, 70), 0.9, seed=1)
    b = Unstructured().build((100, 70), 0.9, seed=1)
    c = Unstructured().build((100, 70), 0.9, seed=2)
    assert a.nnz == round(0.1 * 7000)
    assert np.array_equal(a.array, b.array) and not np.array_equal(a.array, c.array)
    assert a.structure_bytes == csr_bytes(a.array)


def test_block_pattern_is_blockwise():
    m = Block((8, 4)).build((64, 32), 0.75, seed=0)
    blocks = m.array.reshape(8, 8, 8, 4)
    per_block = blocks.sum(axis=(1, 3))
    assert set(np.unique(per_block)) <= {0, 32}
    assert m.density == pytest.approx(0.25)
    with pytest.raises(ValueError, match="does not tile"):
        Block((5, 5)).build((64, 32), 0.5)


def test_nm_pattern_two_of_four():
    m = NM(2, 4).build((16, 32), 0.5, seed=0)
    groups = m.array.reshape(16, 8, 4).sum(axis=2)
    assert np.all(groups == 2)
    with pytest.raises(ValueError, match="sparsity is exactly 0.5"):
        NM(2, 4).build((16, 32), 0.9)
    with pytest.raises(ValueError, match="multiple of m=4"):
        NM(2, 4).build((16, 30), 0.5)


def test_hbsnn_two_levels():
    m = HBsNN(block=(16, 16), sub_block=(4, 4)).build((64, 64), 0.9, seed=0)
    assert m.density == pytest.approx(0.1, abs=0.02)
    coarse = m.array.reshape(4, 16, 4, 16).any(axis=(1, 3))
    assert coarse.mean() < 1.0  # whole blocks dropped
    fine = m.array.reshape(16, 4, 16, 4)
    assert set(np.unique(fine.sum(axis=(1, 3)))) <= {0, 16}  # sub-blocks kept whole


def test_storage_counts():
    mask = np.zeros((4, 8), dtype=bool)
    mask[0, :4] = True
    assert csr_bytes(mask) == (5 + 4) * 4
    assert bsr_bytes(mask, (2, 4)) == (3 + 1) * 4


def test_rbgp_factor_list_equals_kron():
    g = ramanujan(8, 16, 4, seed=0)
    pattern = RBGP([complete(2, 1), g, complete(1, 4)])
    m = pattern.build((16, 64))
    expected = np.kron(np.kron(np.ones((2, 1)), g.biadjacency()), np.ones((1, 4))).astype(bool)
    assert np.array_equal(m.array, expected)
    assert m.nnz_per_row == 16
    assert m.bsr_block == (1, 4)
    assert m.layout.rows_per_group == 2
    assert m.structure_bytes < m.csr_bytes() / 5
    with pytest.raises(ValueError, match="weight matrix is 16x32"):
        pattern.build((16, 32))


def test_rbgp4_plan_meets_sparsity_and_is_biregular():
    plan = RBGP4.plan(4096, 4096, 0.875)
    assert plan.sparsity == pytest.approx(0.875)
    mo, no, do = plan.outer
    mi, ni, di = plan.inner
    assert plan.out_features == mo * plan.repeat[0] * mi * plan.block[0]
    assert plan.in_features == no * plan.repeat[1] * ni * plan.block[1]
    assert (mi * di) % ni == 0
    assert plan.rows_per_group >= 16 and plan.block[1] >= 16  # dense sub-products at least 16 wide


def test_rbgp4_vgg_layer_within_tolerance():
    m = RBGP4().build((512, 512, 3, 3), 0.9, seed=0)
    assert abs(m.sparsity - 0.9) <= 0.01
    assert m.nnz_per_row is not None
    plan = m.info["plan"]
    assert plan["out_features"] == 512 and plan["in_features"] == 4608


def test_rbgp4_impossible_plan_lists_nearest():
    with pytest.raises(ValueError, match="nearest feasible sparsities") as err:
        RBGP4.plan(24, 48, 0.9, tol=0.001)
    assert "0.9" in str(err.value)
    with pytest.raises(ValueError, match="no sparse RBGP4 plan|nearest"):
        RBGP4.plan(7, 5, 0.9)


def _plan_error(*args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        RBGP4.plan(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and "[" not in message  # one line, plain numbers (no Python lists)
    assert "larger tol" not in message and "tol=0.01" not in message  # nothing the CLI cannot change
    return message


def test_rbgp4_plan_message_suggests_what_a_user_can_change():
    message = _plan_error(24, 48, 0.9, tol=0.001)
    assert "RBGP4 cannot make a 24x48 weight 0.9 sparse within tol=0.001" in message  # tol: as the caller set it
    assert "nearest feasible sparsities: 0.8958, 0.9167, 0.8333, 0.6667, 0.3333;" in message
    assert "ask for one of them (sparsity, --sparsity)" in message
    assert "block=(1, 16), group_rows=128 and every halving of them" in message  # already tried: no use to change
    message = _plan_error(7, 5, 0.9)
    assert message.endswith("nearest feasible sparsities: 0.6; ask for one of them (sparsity, --sparsity)")


def test_rbgp4_plan_message_never_suggests_zero():
    """A 4 x 10^7 weight has plans up to sparsity 0.5, and plans with c = n - 1 (sparsity 1e-7) that the old
    message listed as 0.0; those are not offered, in the message or as the nearest sparsity."""
    message = _plan_error(4, 10**7, 0.9)
    assert message.endswith("nearest feasible sparsities: 0.5; ask for one of them (sparsity, --sparsity)")
    message = _plan_error(3, 10**6, 1e-7, tol=0.0)  # every plan near the request shows as 0: others are offered
    near = message.split("nearest feasible sparsities: ")[1].split(";")[0].split(", ")
    assert near == ["0.3333"]
    assert RBGP4(tol=0.0).achieved_sparsity((3, 10**6), 1e-7) == pytest.approx(1 / 3, abs=1e-5)
    assert RBGP4(tol=0.0).nearest_sparsity((4, 10**7), 0.9) == pytest.approx(0.5)


def test_rbgp4_plan_message_for_shapes_without_any_plan():
    message = _plan_error(1, 7, 0.9)
    assert "no sparse RBGP4 plan fits a 1x7 weight at all" in message and "leave this layer dense" in message
    message = _plan_error(2, 10**7, 0.5)
    assert "needs at least 3 rows and 3 input columns" in message
    message = _plan_error(100, 100, 0.9, outer_sparsity=0.5, tile=(32, 32))
    assert "outer_sparsity=0.5, tile=(32, 32)" in message and "outer_sparsity=0 (a complete outer graph) reaches it" in message


def test_rbgp4_outer_sparsity_skips_tiles():
    m = RBGP4(outer_sparsity=0.5, tile=(64, 64), group_rows=16).build((256, 256), 0.875, seed=0)
    tiles = m.array.reshape(4, 64, 4, 64).any(axis=(1, 3))
    assert tiles.sum(axis=1).tolist() == [2, 2, 2, 2]
    assert m.sparsity == pytest.approx(0.875)
    assert not m.graph.factors[0].is_complete


def test_rbgp4_mask_equals_product_of_its_factors():
    m = RBGP4().build((256, 512), 0.75, seed=3)
    expected = m.graph.biadjacency()
    assert np.array_equal(m.array, expected)
    assert np.array_equal(m.layout.mask(), m.array)


def test_rbgp4_deterministic_and_seed_sensitive():
    a = RBGP4().build((256, 256), 0.875, seed=0).array
    b = RBGP4().build((256, 256), 0.875, seed=0).array
    c = RBGP4().build((256, 256), 0.875, seed=1).array
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_input_shuffle_is_a_column_permutation():
    base = RBGP4().build((128, 256), 0.75, seed=0)
    shuffled = RBGP4(input_shuffle=4).build((128, 256), 0.75, seed=0)
    perm = stride_permutation(256, 4, 16)
    assert sorted(perm.tolist()) == list(range(256))
    unshuffled = np.zeros_like(shuffled.array)
    unshuffled[:, np.arange(256)] = shuffled.array[:, perm]
    assert np.array_equal(unshuffled, base.array)


@settings(max_examples=25, deadline=None)
@given(out_exp=st.integers(5, 9), in_exp=st.integers(5, 9), sp=st.sampled_from([0.5, 0.75, 0.875, 0.9375]),
       seed=st.integers(0, 1000))
def test_rbgp4_property_exact_load_balance(out_exp, in_exp, sp, seed):
    out, inp = 2 ** out_exp, 2 ** in_exp
    try:
        m = RBGP4().build((out, inp), sp, seed)
    except ValueError as err:
        assert "nearest feasible" in str(err) or "no sparse" in str(err)
        return
    counts = m.array.sum(axis=1)
    assert np.all(counts == counts[0]) and abs(m.sparsity - sp) <= 0.01 + 1e-12
    cols = m.array.sum(axis=0)
    assert np.all(cols == cols[0])  # biregular product: every input used equally


def test_get_pattern_errors():
    with pytest.raises(ValueError, match="unknown pattern 'foo'"):
        get_pattern("foo")
    with pytest.raises(ValueError, match=r"block\[0\]"):
        get_pattern("block", block=(0, 4))


@pytest.mark.parametrize("shape", [(688, 256), (256, 688), (1000, 128), (128, 1000), (50257, 64)])
def test_rbgp4_plans_awkward_widths_at_0_9(shape):
    plan = RBGP4.plan(*shape, 0.9)
    assert abs(plan.sparsity - 0.9) <= 0.01
    assert plan.padded_rows <= shape[0] / 16 and (shape[0] + plan.padded_rows) % plan.rows_per_group == 0


@pytest.mark.parametrize("sparsity", [0.8, 0.95, 0.97])
@pytest.mark.parametrize("shape", [(32, 128), (128, 32), (64, 64), (128, 128)])
def test_rbgp4_nearest_on_small_channel_layers(shape, sparsity):
    nearest = RBGP4().nearest_sparsity(shape, sparsity)
    assert nearest is not None and abs(nearest - sparsity) <= 0.05
    mask = RBGP4().build(shape, nearest, seed=0)  # feasible as given
    assert abs(mask.sparsity - nearest) <= 0.01


def test_padded_rows_and_near_biregular_inner_graph():
    m = RBGP4().build((1000, 256), 0.9, seed=0)
    assert m.layout.padded_rows > 0 and m.array.shape == (1000, 256)
    assert (m.array.sum(axis=1) == m.nnz_per_row).all() and m.nnz == 1000 * m.nnz_per_row
    m = RBGP4().build((688, 256), 0.9, seed=0)
    inner = m.graph.factors[2]
    assert not m.info["plan"]["biregular"] and inner.is_left_regular
    degrees = inner.right_degrees()
    assert degrees.max() - degrees.min() <= 1 and degrees.min() >= 2


def test_wider_tol_prefers_the_near_plan_over_a_coarse_far_one():
    assert abs(RBGP4(tol=0.05).build((1024, 1024), 0.9).sparsity - 0.9) <= 0.01


def test_magnitude_fit_keeps_more_mass_than_the_seed_structure():
    from rbgp.patterns.fit import kept_mass, top_k_mask

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 512)) * np.exp(rng.standard_normal(512))[None, :]
    fitted = RBGP4().fit(w, (256, 512), 0.9)
    seeded = RBGP4().build((256, 512), 0.9, seed=0)
    assert fitted.sparsity == seeded.sparsity and fitted.layout.values_shape == seeded.layout.values_shape
    assert (fitted.array.sum(axis=1) == fitted.nnz_per_row).all()  # still left-regular: the kernels' layout
    history = fitted.info["kept_mass_by_round"]
    assert history == sorted(history) and history[-1] == pytest.approx(kept_mass(w, fitted.array))
    assert kept_mass(w, fitted.array) > kept_mass(w, seeded.array) + 0.05
    assert kept_mass(w, fitted.array) <= kept_mass(w, top_k_mask(w, fitted.sparsity))
    assert fitted.array.any(axis=0).all()  # every input is still read
    again = RBGP4().fit(w, (256, 512), 0.9)
    assert np.array_equal(again.array, fitted.array)  # a pure function of the weights


def test_baseline_magnitude_fits():
    from rbgp.patterns import NM, Block, Unstructured

    w = np.arange(64.0).reshape(8, 8) - 20
    u = Unstructured().fit(w, (8, 8), 0.75)
    assert u.nnz == 16 and np.abs(w[u.array]).min() >= np.abs(w[~u.array]).max()
    b = Block((4, 4)).fit(w, (8, 8), 0.75)
    assert b.array[4:, 4:].all() and b.nnz == 16
    n = NM(2, 4).fit(w, (8, 8), 0.5)
    assert (n.array.reshape(8, 2, 4).sum(axis=2) == 2).all()


def test_rbgp4_min_group_rows_prefers_tall_groups():
    """A 128x(64*9) conv at 0.766: the exact plan has 2-row groups; asked for 8, a plan of 8-row groups
    (near-biregular) within tol is taken instead."""
    shape = (128, 64, 3, 3)
    plain = RBGP4().build(shape, 0.766).info["plan"]
    tall = RBGP4(min_group_rows=8).build(shape, 0.766).info["plan"]
    assert plain["rows_per_group"] < 8 <= tall["rows_per_group"]
    assert abs(tall["sparsity"] - 0.766) <= 0.01
    assert RBGP4(min_group_rows=8).replace(tol=0.02).min_group_rows == 8


def test_rbgp4_min_block_width_prefers_wide_blocks():
    """A 256x688 layer at 0.75: the exact biregular plan has 4-column blocks; asked for 8, a plan of wider
    blocks within tol is taken instead, and blocks stay narrower only where nothing else fits."""
    plain = RBGP4()._plan(256, 688, 0.75)
    wide = RBGP4(min_block_width=8)._plan(256, 688, 0.75)
    assert plain.block[1] < 8 <= wide.block[1]
    assert abs(wide.sparsity - 0.75) <= 0.01
    assert RBGP4(min_block_width=8)._plan(256, 36, 0.75).block[1] < 8  # 36 inputs: no 8-wide plan at all
    with pytest.raises(ValueError, match="min_block_width"):
        RBGP4(min_block_width=0)


def test_achieved_sparsity_is_what_the_build_has():
    for pattern, shape, asked in [(RBGP4(), (256, 256, 3, 3), 0.9139), (RBGP4(), (1000, 64), 0.9),
                                  (Unstructured(), (30, 70), 0.9), (NM(2, 4), (8, 16), 0.3)]:
        achieved = pattern.achieved_sparsity(shape, asked)
        nearest = pattern.nearest_sparsity(shape, asked)
        assert achieved == pytest.approx(pattern.build(shape, nearest).sparsity)
    assert RBGP4().achieved_sparsity((1, 7), 0.9) is None
