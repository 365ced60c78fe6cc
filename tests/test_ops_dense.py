"""Dense kernels against numpy float64: GEMM in all four transpose combinations with and
without the bias + ReLU epilogue, transpose, soft-thresholding (scalar and per-element
threshold, in place), and the input checks.  Outputs are poisoned with NaN before each
launch.  Both kernel families (CPU and GPU forms, ``PROXCL_TUNING``) run on the test device."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxcl.ops import gemm, soft_threshold, transpose
from helpers import form_device, poisoned, rel_err

TOL = 1e-5
SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def gemm_case(kdev, rng, M, N, K, trans_a, trans_b, epilogue):
    a = randn(rng, K, M) if trans_a else randn(rng, M, K)
    b = randn(rng, N, K) if trans_b else randn(rng, K, N)
    bias = randn(rng, M)
    a64 = a.astype(np.float64).T if trans_a else a.astype(np.float64)
    b64 = b.astype(np.float64).T if trans_b else b.astype(np.float64)
    ref = a64 @ b64
    out = poisoned(kdev, (M, N))
    if epilogue:
        ref = np.maximum(ref + bias[:, None], 0.0)
        got = gemm(kdev, a, kdev.to_device(b), trans_a=trans_a, trans_b=trans_b, bias=bias,
                   relu=True, out=out)
    else:
        got = gemm(kdev, kdev.to_device(a), b, trans_a=trans_a, trans_b=trans_b, out=out)
    assert got is out
    assert rel_err(out.get(), ref) < TOL, (M, N, K, trans_a, trans_b, epilogue)


@SETTINGS
@given(M=st.integers(1, 70), N=st.integers(1, 90), K=st.integers(1, 80),
       trans_a=st.booleans(), trans_b=st.booleans(), epilogue=st.booleans())
def test_gemm_matches_numpy(kdev, rng, M, N, K, trans_a, trans_b, epilogue):
    gemm_case(kdev, rng, M, N, K, trans_a, trans_b, epilogue)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), pytest.param(300, 256, 784, marks=pytest.mark.big),
                                   (13, 129, 257), (97, 17, 5)])
def test_gemm_fixed_shapes(kdev, rng, M, N, K, trans_a, trans_b):
    """Layer-sized products and tile edges in every transpose combination."""
    gemm_case(kdev, rng, M, N, K, trans_a, trans_b, epilogue=(M % 2 == 1))


def test_wide_gemm_block_where_the_device_prefers_16_wide_vectors(dev, rng):
    """for_device: the CPU form takes gemm_wide's 8 x 32 block in 16-wide vectors on a device that
    prefers 16-wide float vectors (PoCL on AVX-512), and keeps 6 x 16 in 8-wide ones below that;
    the GPU form never changes.  Both CPU blocks match float64 on every transpose and on edges."""
    import dataclasses
    from proxcl.tuning import FORMS, for_device
    cpu = FORMS["cpu"]
    assert for_device(cpu, 8) is cpu and for_device(FORMS["gpu"], 16) is FORMS["gpu"]
    wide = for_device(cpu, 16)
    assert (wide.gemm_rm, wide.gemm_vec) == (8, 16) and for_device(cpu, 32) == wide
    tight = dataclasses.replace(cpu, loop_max=256)          # the rest of the form is kept
    assert for_device(tight, 16) == dataclasses.replace(wide, loop_max=256)
    assert dataclasses.replace(wide, gemm_rm=cpu.gemm_rm, gemm_vec=cpu.gemm_vec) == cpu
    d = form_device(dev, "cpu")
    for t in (cpu, wide):
        d.tuning = t
        for M, N, K in ((1, 1, 1), (9, 33, 17), (70, 95, 130)):
            for trans_a in (False, True):
                for trans_b in (False, True):
                    gemm_case(d, rng, M, N, K, trans_a, trans_b, epilogue=(M % 2 == 1))


def test_packed_gemm_matches_float64_and_the_unpacked_block(dev, rng):
    """gemm_pack: from its least number of multiply-adds (one for products with B^T, one for the
    others) and of rows and columns on, the CPU form copies op(A) and op(B) into block order
    (gemm_pack) and multiplies the copies (gemm_pk); below it, it does not.  The packed product matches float64 on every transpose, on edges and with the epilogue,
    in both CPU blocks (8-wide and 16-wide vectors) and in slices of K (gemm_pack[4]), and gives
    the unpacked block's bits where both blocks have the same width (the same multiply-adds in
    the same order)."""
    import dataclasses
    from proxcl.tuning import FORMS, for_device
    d = form_device(dev, "cpu")
    launches = lambda fn: [n for n, _ in _recorded(d, fn)]
    for t in (FORMS["cpu"], for_device(FORMS["cpu"], 16)):
        for nv in (t.gemm_nv, 3):
            for M, N, K in ((1, 1, 1), (9, 33, 17), (70, 95, 130)):
                d.tuning = dataclasses.replace(t, gemm_pack=(M * N * K, M * N * K, min(M, N), nv, 2048))
                for trans_a in (False, True):
                    for trans_b in (False, True):
                        names = launches(lambda: gemm_case(d, rng, M, N, K, trans_a, trans_b,
                                                           epilogue=(M % 2 == 1)))
                        assert names[-3:] == ["gemm_pack", "gemm_pack", "gemm_pk"], names
                        assert not {"gemm_blk", "gemm_nt_blk", "transpose"} & set(names), names
                mnk, side = M * N * K, min(M, N)
                for pack, nn, nt in (((mnk + 1, mnk + 1, side, nv, 2048), False, False),
                                     ((mnk, mnk, side + 1, nv, 2048), False, False),
                                     ((mnk + 1, mnk, side, nv, 2048), False, True),
                                     ((mnk, mnk + 1, side, nv, 2048), True, False)):
                    d.tuning = dataclasses.replace(t, gemm_pack=pack)
                    for trans_b, packed in ((False, nn), (True, nt)):
                        names = launches(lambda: gemm_case(d, rng, M, N, K, True, trans_b, True))
                        assert ("gemm_pk" in names) == packed, (pack, trans_b, names)
        a, b, bias = randn(rng, 70, 130), randn(rng, 130, 95), randn(rng, 70)
        got = []
        for pack in ((1, 1, 1, t.gemm_nv, 2048), (0, 0, 0, 0, 0)):
            d.tuning = dataclasses.replace(t, gemm_pack=pack)
            got.append(gemm(d, a, b, bias=bias, relu=True).get())
        np.testing.assert_array_equal(got[0], got[1])
        d.tuning = dataclasses.replace(t, gemm_pack=(1, 1, 1, 3, 50))      # slices of at most 50 values of k
        names = launches(lambda: gemm_case(d, rng, 70, 95, 130, False, False, epilogue=True))
        assert names[-2:] == ["gemm_pk", "gemm_sum_slices"], names


def _recorded(d, fn):
    with d.record_launches() as launches:
        fn()
    return launches


@pytest.mark.parametrize("bias,relu", [(True, False), (False, True)])
def test_gemm_bias_and_relu_separately(kdev, rng, bias, relu):
    a, b, c = randn(rng, 21, 30), randn(rng, 30, 35), randn(rng, 21)
    ref = a.astype(np.float64) @ b
    if bias:
        ref = ref + c[:, None]
    if relu:
        ref = np.maximum(ref, 0)
    got = gemm(kdev, a, b, bias=c if bias else None, relu=relu, out=poisoned(kdev, (21, 35)))
    assert rel_err(got.get(), ref) < TOL


@pytest.mark.big
@pytest.mark.parametrize("trans_a,trans_b", [(False, True), (True, False)])
@pytest.mark.parametrize("M,N,K", [(20, 25, 9_217), (50, 13, 4_096), (3, 5, 70_001)])
def test_gemm_long_inner_dimension_split_k(kdev, rng, M, N, K, trans_a, trans_b):
    """Weight-gradient shapes (K = batch * output pixels): the GPU form splits K into slices
    (checked with split_k) and adds the partial products; bias and ReLU go after the sum."""
    from proxcl.ops.dense import split_k
    t = kdev.tuning
    if t["gemm_nv"] == 0:
        assert split_k(-(-N // t["gemm_vec"]) * -(-M // t["gemm_rm"]), K, max_slice=t["loop_max"])[0] > 1
    gemm_case(kdev, rng, M, N, K, trans_a, trans_b, epilogue=True)
    gemm_case(kdev, rng, M, N, K, trans_a, trans_b, epilogue=False)


def test_split_k_covers_k_exactly():
    """Slices cover K; none is longer than max_slice (a work-item's loop budget), and a product
    with enough output blocks and a K within the budget is not split."""
    from proxcl.ops.dense import split_k
    for items in (1, 35, 1000, 20000):
        for K in (1, 511, 512, 8192, 73_728, 100_003):
            for max_slice in (100, 8192, 1 << 20):
                s, ks = split_k(items, K, max_slice=max_slice)
                assert s >= 1 and ks >= 1 and (s - 1) * ks < K <= s * ks, (items, K, s, ks)
                assert ks <= max_slice
                if (items >= 16384 or K < 512) and K <= max_slice:
                    assert s == 1


@pytest.mark.big
def test_gemm_more_than_65535_columns(kdev, rng):
    gemm_case(kdev, rng, 3, 70_001, 4, False, False, True)
    gemm_case(kdev, rng, 2, 66_000, 3, True, True, False)


def test_gemm_k_zero_gives_zeros(kdev):
    out = gemm(kdev, np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32),
               out=poisoned(kdev, (3, 4)))
    assert np.array_equal(out.get(), np.zeros((3, 4)))


def test_gemm_empty_output(kdev):
    assert gemm(kdev, np.zeros((0, 5), np.float32), np.ones((5, 4), np.float32)).shape == (0, 4)


@SETTINGS
@given(m=st.integers(1, 70), n=st.integers(1, 70))
def test_transpose(kdev, rng, m, n):
    a = randn(rng, m, n)
    out = poisoned(kdev, (n, m))
    assert transpose(kdev, a, out=out) is out
    assert np.array_equal(out.get(), a.T)


def test_transpose_wide(kdev, rng):
    a = randn(rng, 3, 70_001)
    assert np.array_equal(transpose(kdev, a, out=poisoned(kdev, (70_001, 3))).get(), a.T)


def soft_ref(z, tau):
    z, tau = z.astype(np.float64), np.asarray(tau, np.float64)
    return np.sign(z) * np.maximum(np.abs(z) - tau, 0.0)


@SETTINGS
@given(size=st.integers(1, 5000), tau=st.sampled_from([0.0, 0.1, 1.0, 5.0]),
       scale=st.sampled_from([1.0, 0.5, 3e-3]), per_element=st.booleans())
def test_soft_threshold(kdev, rng, size, tau, scale, per_element):
    z = randn(rng, size)
    if per_element:
        t = rng.uniform(0, 2 * tau + 1e-3, size).astype(np.float32)
        ref = soft_ref(z, scale * t.astype(np.float64))
        got = soft_threshold(kdev, z, t, scale=scale, out=poisoned(kdev, (size,)))
    else:
        ref = soft_ref(z, scale * tau)
        got = soft_threshold(kdev, kdev.to_device(z), tau, scale=scale, out=poisoned(kdev, (size,)))
    g = got.get()
    assert rel_err(g, ref) < TOL if np.any(ref) else np.array_equal(g, ref)
    # entries at or under the threshold are exact zeros: the support shrinks exactly
    assert np.array_equal(g == 0, ref == 0)


def test_soft_threshold_in_place_and_2d(kdev, rng):
    z = randn(rng, 40, 30)
    zd = kdev.to_device(z)
    got = soft_threshold(kdev, zd, 0.7, out=zd)
    assert got is zd
    assert rel_err(zd.get(), soft_ref(z, 0.7)) < TOL
    t = np.abs(randn(rng, 40, 30))
    got = soft_threshold(kdev, z, t)
    assert got.shape == (40, 30) and rel_err(got.get(), soft_ref(z, t)) < TOL


def test_soft_threshold_exact_values(kdev):
    z = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0], np.float32)
    got = soft_threshold(kdev, z, 1.0).get()
    assert np.array_equal(got, np.array([-2, 0, 0, 0, 0, 0, 0.5, 2], np.float32))
    assert not np.any(np.signbit(got[1:6]))  # an exact +0, not -0


def test_bad_shapes_raise_value_errors(dev, rng):
    with pytest.raises(ValueError, match="inner"):
        gemm(dev, randn(rng, 3, 4), randn(rng, 5, 2))
    with pytest.raises(ValueError, match="inner"):
        gemm(dev, randn(rng, 3, 4), randn(rng, 4, 2), trans_a=True)
    with pytest.raises(ValueError, match="bias"):
        gemm(dev, randn(rng, 3, 4), randn(rng, 4, 2), bias=randn(rng, 4))
    with pytest.raises(ValueError, match="out"):
        gemm(dev, randn(rng, 3, 4), randn(rng, 4, 2), out=dev.empty((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        gemm(dev, randn(rng, 3), randn(rng, 3, 2))
    with pytest.raises(ValueError, match="tau"):
        soft_threshold(dev, randn(rng, 5), randn(rng, 4))
    with pytest.raises(ValueError, match="out"):
        soft_threshold(dev, randn(rng, 5), 0.1, out=dev.empty((4,)))
    with pytest.raises(ValueError, match="out"):
        transpose(dev, randn(rng, 3, 4), out=dev.empty((3, 4)))


def test_tiled_gemm_runs_where_it_makes_enough_work_groups(dev, rng):
    """gemm_tile in the GPU form where its BM x BN blocks number at least tile_groups_pct % of the
    compute units (4 units here), with TM and TN halved from 8 to 4 where that is needed, and C is
    at least the halved block on both sides; the untiled gemm elsewhere; the CPU form never tiles."""
    import dataclasses
    import proxcl
    from proxcl.tuning import FORMS
    d = proxcl.Device(dev.spec)
    d.__dict__["compute_units"] = 4

    def kernels(M=40, N=50, **tuning):
        a, b = randn(rng, M, 30), randn(rng, 30, N)
        d.tuning = dataclasses.replace(FORMS[tuning.pop("form", "gpu")], **tuning)
        with d.record_launches() as launches:
            got = gemm(d, a, b)
        assert rel_err(got.get(), a.astype(np.float64) @ b) < TOL
        return {name for name, _ in launches}

    # 32 x 32 blocks: 2 x 2 = 4 work-groups; 16 x 16 with TM = TN = 4: 3 x 4 = 12
    tile = dict(gemm_tile=(4, 4, 8, 8, 4))
    assert "gemm_tile" in kernels(**tile, tile_groups_pct=100)
    assert "gemm_tile" in kernels(**tile, tile_groups_pct=300)
    assert kernels(**tile, tile_groups_pct=301) == {"gemm"}
    assert kernels(gemm_tile=(4, 4, 4, 4, 4), tile_groups_pct=300) == {"gemm_tile"}
    assert kernels(M=15, **tile, tile_groups_pct=0) == {"gemm"}       # fewer rows than LY * 4
    assert kernels(N=15, **tile, tile_groups_pct=0) == {"gemm"}
    assert kernels(gemm_tile=(0, 0, 0, 0, 0), tile_groups_pct=0) == {"gemm"}
    assert "gemm_tile" not in kernels(form="cpu", tile_groups_pct=0)


def test_tiled_gemm_halved_blocks_take_longer_steps(dev, rng):
    """Where gemm_tile halves its register block (TM, TN 8 -> 4) it doubles its step BK, so that a
    work-item of 16 x 16 still stages a whole float4 of A and of B per step (GT_VEC); the product
    is numpy's."""
    d = form_device(dev, compute_units=4, gemm_tile=(16, 16, 8, 8, 8), tile_groups_pct=100)
    a, b = randn(rng, 128, 36), randn(rng, 36, 128)   # one 128 x 128 block, four of 64 x 64
    got = gemm(d, a, b)
    built = [dict(key[2]) for key in d._kernels if key[1] == "gemm_tile"]
    assert [(k["TM"], k["TN"], k["BK"], k["GT_VEC"]) for k in built] == [(4, 4, 16, 1)], built
    assert rel_err(got.get(), a.astype(np.float64) @ b) < TOL


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("M,N,K,vec", [(40, 48, 32, 1), (40, 50, 32, 0), (40, 48, 30, None), (41, 48, 30, None),
                                       (40, 48, 300, 1)])
def test_tiled_gemm_float4_loads_only_where_rows_are_aligned(dev, rng, M, N, K, vec, trans_a):
    """gemm_tile loads float4 from global memory (GT_VEC) where N and K (M for a transposed A) are
    multiples of 4, slices of K included (K = 300 under a budget of 256 loops), element by element
    elsewhere; both give numpy's product."""
    from conftest import TIGHT, TILED
    d = form_device(dev, **TILED, **(TIGHT if K == 300 else {}))
    if vec is None:
        vec = int(M % 4 == 0) if trans_a else 0
    a = randn(rng, K, M) if trans_a else randn(rng, M, K)
    b, bias = randn(rng, K, N), randn(rng, M)
    with d.record_launches() as launches:
        got = gemm(d, a, b, trans_a=trans_a, bias=bias, relu=True)
    names = [n for n, _ in launches]
    assert "gemm_tile" in names and (K != 300 or "gemm_sum_slices" in names), names
    built = [dict(key[2]) for key in d._kernels if key[1] == "gemm_tile"]
    assert [k["GT_VEC"] for k in built] == [vec], built
    ref = np.maximum((a.T if trans_a else a).astype(np.float64) @ b + bias[:, None], 0.0)
    assert rel_err(got.get(), ref) < TOL
