"""CSR kernels against scipy.sparse / numpy float64 references: SpMM (with and without the
bias + ReLU epilogue), transposed SpMM, SDDMM, dense -> CSR on the device, compaction with
gathered state arrays, gather / scatter, and the input checks.

Every product writes into an ``out=`` array poisoned with NaN, so an element the kernel
forgets fails.  Shapes come from hypothesis and include empty rows, nnz = 0, 1x1, batch
widths that are no multiple of any vector width or local size, and > 65535 columns.  Both
kernel families (the CPU forms and the GPU forms that ``Device.tuning`` picks per device
kind) run on the test device, through ``PROXCL_TUNING``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxcl.ops import CSRMatrix, HostCSR, gather, scatter
from helpers import form_device, poisoned, rel_err

TOL = 1e-5
SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def random_csr(rng, m, k, density, empty_rows=True) -> sp.csr_matrix:
    """A float32 CSR matrix with values in +-[0.5, 1.5] and, optionally, forced empty rows."""
    a = sp.random(m, k, density=density, format="csr", dtype=np.float64, random_state=rng)
    a.data = (rng.uniform(0.5, 1.5, a.nnz) * rng.choice([-1.0, 1.0], a.nnz))
    a = a.tolil()
    if empty_rows and m > 1:
        for i in rng.choice(m, size=max(1, m // 4), replace=False):
            a.rows[i], a.data[i] = [], []
    a = a.tocsr().astype(np.float32)
    a.sort_indices()
    return a


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


shapes = st.tuples(st.integers(1, 40), st.integers(1, 70), st.integers(1, 77),
                   st.sampled_from([0.0, 0.05, 0.3, 1.0]))


# ---- SpMM -------------------------------------------------------------------------------

@SETTINGS
@given(shape=shapes, epilogue=st.booleans())
def test_spmm_matches_scipy(kdev, rng, shape, epilogue):
    m, k, n, dens = shape
    a = random_csr(rng, m, k, dens)
    x, bias = randn(rng, k, n), randn(rng, m)
    w = CSRMatrix.from_scipy(a, kdev)
    out = poisoned(kdev, (m, n))
    ref = a.astype(np.float64) @ x.astype(np.float64)
    if epilogue:
        ref = np.maximum(ref + bias[:, None], 0.0)
        got = w.matmul(kdev.to_device(x), bias=bias, relu=True, out=out)
    else:
        got = w.matmul(x, out=out)
    assert got is out
    assert rel_err(out.get(), ref) < TOL


@pytest.mark.parametrize("bias,relu", [(False, True), (True, False)])
def test_spmm_bias_and_relu_separately(kdev, rng, bias, relu):
    a = random_csr(rng, 33, 50, 0.2)
    x, b = randn(rng, 50, 19), randn(rng, 33)
    ref = a.astype(np.float64) @ x
    if bias:
        ref = ref + b[:, None]
    if relu:
        ref = np.maximum(ref, 0)
    got = CSRMatrix.from_scipy(a, kdev).matmul(x, bias=b if bias else None, relu=relu,
                                               out=poisoned(kdev, (33, 19)))
    assert rel_err(got.get(), ref) < TOL


def check_both_products(dev, rng, a: sp.csr_matrix, n: int) -> None:
    """W @ X and W.T @ D of the CSR matrix a on dev, into NaN-filled outputs, against scipy in
    float64."""
    (m, k), w = a.shape, CSRMatrix.from_scipy(a, dev)
    x, d = randn(rng, k, n), randn(rng, m, n)
    got = w.matmul(x, out=poisoned(dev, (m, n)))
    assert rel_err(got.get(), a.astype(np.float64) @ x) < TOL
    got_t = w.matmul_t(d, out=poisoned(dev, (k, n)))
    assert rel_err(got_t.get(), a.T.astype(np.float64) @ d) < TOL


def built_spmm(dev, *defines) -> set:
    """The values of these defines in every csr_spmm kernel dev has built."""
    return {tuple(dict(key[2])[k] for k in defines) for key in dev._kernels if key[1] == "csr_spmm"}


@pytest.mark.parametrize("n", [1, 7, 8, 63, 64, 65, 127, 128, 129, 256, 384, 1000])
def test_spmm_batch_widths(kdev, rng, n):
    """Widths around vector widths and per-work-item column segments (the CPU form widens its
    vectors when whole segments span the batch: 128, 256, 384), both products."""
    check_both_products(kdev, rng, random_csr(rng, 37, 41, 0.15), n)


@pytest.mark.parametrize("swizzle", [0, 1, 2, 3, 8])
def test_spmm_work_group_orders(dev, rng, swizzle):
    """The GPU form's work-groups in column slices of 0 (launch order), 1, 2, 3 or 8 groups: 30
    columns of 2-wide vectors over 4 lanes make 4 column groups, so slices of 3 leave a short last
    slice and 8 makes one slice; every element is written once, both products as scipy's."""
    d = form_device(dev, spmm_local=(4, 4), spmm_swizzle=swizzle)
    check_both_products(d, rng, random_csr(rng, 37, 41, 0.2), 30)
    assert built_spmm(d, "SWZ") == {(swizzle,)}


@pytest.mark.parametrize("n,pct,vec", [(30, 300, 2), (32, 300, 4), (40, 300, 2), (48, 300, 4),
                                       (48, 825, 4), (48, 826, 2)])
@pytest.mark.parametrize("int_offsets", [True, False])
def test_spmm_gpu_vectors_and_offsets(dev, rng, monkeypatch, n, pct, vec, int_offsets):
    """The GPU form takes spmm_wide_vec-wide vectors where whole column groups of them (LX = 4
    lanes: 16 columns) span the batch and their work-groups number at least spmm_wide_groups_pct %
    of the compute units (48 columns, 41 rows: 3 x 11 = 33 groups, 4 units here), and int offsets
    into X (PX_OFF32) where X's k * n elements fit an int (the limit lowered here to take the
    other path); both products as scipy's."""
    import proxcl.ops.sparse as sparse
    if not int_offsets:
        monkeypatch.setattr(sparse, "_I32_MAX", 41 * n - 1)
    d = form_device(dev, compute_units=4, spmm_local=(4, 4), spmm_wide_groups_pct=pct)
    check_both_products(d, rng, random_csr(rng, 41, 41, 0.2), n)
    assert built_spmm(d, "VEC", "PX_OFF32") == {(vec, int(int_offsets))}


def test_spmm_long_rows(kdev, rng):
    """Dense rows (nnz per row far above any unrolling) and a fully dense matrix."""
    a = random_csr(rng, 9, 1500, 1.0, empty_rows=False)
    x = randn(rng, 1500, 45)
    got = CSRMatrix.from_scipy(a, kdev).matmul(x, out=poisoned(kdev, (9, 45)))
    assert rel_err(got.get(), a.astype(np.float64) @ x) < TOL


def test_spmm_nnz_zero_writes_zeros_and_bias(kdev, rng):
    a = sp.csr_matrix((5, 8), dtype=np.float32)
    w = CSRMatrix.from_scipy(a, kdev)
    assert w.nnz == 0 and w.density == 0.0
    x, b = randn(rng, 8, 13), randn(rng, 5)
    assert np.array_equal(w.matmul(x, out=poisoned(kdev, (5, 13))).get(), np.zeros((5, 13)))
    got = w.matmul(x, bias=b, relu=True, out=poisoned(kdev, (5, 13))).get()
    assert np.array_equal(got, np.broadcast_to(np.maximum(b, 0)[:, None], (5, 13)))


def test_spmm_one_by_one(kdev):
    w = CSRMatrix.from_scipy(sp.csr_matrix(np.array([[-2.5]], np.float32)), kdev)
    x = np.array([[3.0]], np.float32)
    assert w.matmul(x, out=poisoned(kdev, (1, 1))).get()[0, 0] == np.float32(-7.5)
    assert w.matmul(x, bias=[10.0], out=poisoned(kdev, (1, 1))).get()[0, 0] == np.float32(2.5)
    assert (w.T @ x).get()[0, 0] == np.float32(-7.5)


@pytest.mark.big
def test_spmm_more_than_65535_columns(kdev, rng):
    k = 70_001
    a = random_csr(rng, 6, k, 0.002)
    a = a.tolil()
    a[2, k - 1] = 1.25  # an entry in the last column
    a = a.tocsr()
    x = randn(rng, k, 11)
    w = CSRMatrix.from_scipy(a, kdev)
    got = w.matmul(x, out=poisoned(kdev, (6, 11)))
    assert rel_err(got.get(), a.astype(np.float64) @ x) < TOL
    d = randn(rng, 6, 11)
    gt = w.matmul_t(d, out=poisoned(kdev, (k, 11)))
    assert rel_err(gt.get(), a.T.astype(np.float64) @ d) < TOL


def test_matmul_operator_and_host_input(kdev, rng):
    a = random_csr(rng, 12, 20, 0.3)
    x = randn(rng, 20, 10)
    w = CSRMatrix.from_scipy(a, kdev)
    ref = a.astype(np.float64) @ x
    assert rel_err((w @ x).get(), ref) < TOL
    assert rel_err((w @ kdev.to_device(x)).get(), ref) < TOL


# ---- transposed SpMM --------------------------------------------------------------------

@SETTINGS
@given(shape=shapes)
def test_transposed_spmm_matches_scipy(kdev, rng, shape):
    m, k, n, dens = shape
    a = random_csr(rng, m, k, dens)
    d = randn(rng, m, n)
    w = CSRMatrix.from_scipy(a, kdev)
    assert w.T.shape == (k, m)
    out = poisoned(kdev, (k, n))
    got = w.matmul_t(kdev.to_device(d), out=out)
    assert got is out
    assert rel_err(out.get(), a.T.astype(np.float64) @ d) < TOL


def test_transposed_spmm_follows_new_values(kdev, rng):
    """W.T uses the values through the permutation: new values on the same support count."""
    a = random_csr(rng, 20, 30, 0.3)
    w = CSRMatrix.from_scipy(a, kdev)
    d = randn(rng, 20, 9)
    _ = w.T @ d  # builds the transposed structure
    v = randn(rng, a.nnz)
    w2 = w.with_values(v)
    b = a.copy()
    b.data = v
    assert rel_err((w2.T @ d).get(), b.T.astype(np.float64) @ d) < TOL
    x = randn(rng, 30, 9)
    assert rel_err((w2 @ x).get(), b.astype(np.float64) @ x) < TOL


# ---- SDDMM ------------------------------------------------------------------------------

def sddmm_ref(a: sp.csr_matrix, A, B, scale):
    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    return scale * np.einsum("pc,pc->p", A[rows].astype(np.float64), B[a.indices].astype(np.float64))


@SETTINGS
@given(shape=shapes, scale=st.sampled_from([1.0, -0.25, 1 / 128]))
def test_sddmm_matches_reference(kdev, rng, shape, scale):
    m, k, n, dens = shape
    a = random_csr(rng, m, k, dens)
    A, B = randn(rng, m, n), randn(rng, k, n)
    w = CSRMatrix.from_scipy(a, kdev)
    out = poisoned(kdev, (a.nnz,))
    g = w.sddmm(A, kdev.to_device(B), scale=scale, out=out)
    assert isinstance(g, CSRMatrix) and g.pattern is w.pattern and g.data is out
    assert rel_err(out.get(), sddmm_ref(a, A, B, scale)) < TOL


@pytest.mark.parametrize("n", [1, 5, 8, 31, 33, 128, 257, 1024, 2047, 2048, 5003])
def test_sddmm_batch_widths(kdev, rng, n):
    """Widths around the vector sizes and around SDDMM_WIDE_N, where the GPU form widens."""
    a = random_csr(rng, 17, 23, 0.3)
    A, B = randn(rng, 17, n), randn(rng, 23, n)
    g = CSRMatrix.from_scipy(a, kdev).sddmm(A, B, out=poisoned(kdev, (a.nnz,)))
    assert rel_err(g.data.get(), sddmm_ref(a, A, B, 1.0)) < TOL


def test_sddmm_nnz_zero_and_big_k(kdev, rng):
    w = CSRMatrix.from_scipy(sp.csr_matrix((4, 6), dtype=np.float32), kdev)
    g = w.sddmm(randn(rng, 4, 3), randn(rng, 6, 3))
    assert g.nnz == 0 and g.data.shape == (0,)
    k = 66_000
    a = random_csr(rng, 3, k, 0.001)
    A, B = randn(rng, 3, 6), randn(rng, k, 6)
    g = CSRMatrix.from_scipy(a, kdev).sddmm(A, B, out=poisoned(kdev, (a.nnz,)))
    assert rel_err(g.data.get(), sddmm_ref(a, A, B, 1.0)) < TOL


# ---- dense -> CSR, compaction, gather / scatter -----------------------------------------

@SETTINGS
@given(m=st.integers(1, 40), k=st.integers(1, 90), thr=st.sampled_from([0.0, 0.5, 1.5, 10.0]),
       zero_frac=st.sampled_from([0.0, 0.5, 1.0]))
def test_from_dense_matches_threshold_mask(kdev, rng, m, k, thr, zero_frac):
    d = randn(rng, m, k)
    d[rng.random((m, k)) < zero_frac] = 0.0
    if m > 2:
        d[m // 2] = 0.0  # an empty row
    w, src = CSRMatrix.from_dense(kdev.to_device(d), kdev, threshold=thr, return_src=True)
    mask = np.abs(d) > thr
    ref = sp.csr_matrix(np.where(mask, d, 0.0).astype(np.float32))
    indptr, indices, data = w.to_arrays()
    assert w.shape == (m, k) and w.nnz == int(mask.sum())
    assert np.array_equal(indptr, ref.indptr) and np.array_equal(indices, ref.indices)
    assert np.array_equal(data, ref.data)
    assert np.array_equal(src.get(), np.flatnonzero(mask))


def test_from_dense_host_input_and_wide(kdev, rng):
    d = randn(rng, 3, 70_000)
    d[np.abs(d) < 2.5] = 0.0
    w = CSRMatrix.from_dense(d, kdev)
    assert np.array_equal(w.to_dense(), d)
    assert np.array_equal(w.to_scipy().toarray(), d)
    z = CSRMatrix.from_dense(np.zeros((4, 5), np.float32), kdev)
    assert z.nnz == 0 and np.array_equal(z.indptr.get(), np.zeros(5, np.int32))


@SETTINGS
@given(m=st.integers(1, 40), k=st.integers(1, 60), dens=st.sampled_from([0.1, 0.5, 1.0]),
       drop=st.sampled_from([0.0, 0.3, 1.0]), n_states=st.integers(0, 2))
def test_compact_drops_exact_zeros_and_gathers_states(kdev, rng, m, k, dens, drop, n_states):
    a = random_csr(rng, m, k, dens)
    vals = a.data.copy()
    vals[rng.random(a.nnz) < drop] = 0.0
    w = CSRMatrix.from_arrays(a.indptr, a.indices, vals, a.shape, kdev)
    states = [kdev.to_device(randn(rng, a.nnz)) for _ in range(n_states)]
    w2, moved, src = w.compact(*states, return_src=True)
    keep = np.flatnonzero(vals != 0)
    if keep.size == a.nnz:
        assert w2 is w and src is None and all(x is y for x, y in zip(moved, states))
        return
    b = a.copy()
    b.data = vals
    b.eliminate_zeros()
    ip, ij, ix = w2.to_arrays()
    assert w2.nnz == keep.size and w2.shape == a.shape
    assert np.array_equal(ip, b.indptr) and np.array_equal(ij, b.indices)
    assert np.array_equal(ix, b.data)
    assert np.array_equal(src.get(), keep)
    assert len(moved) == n_states
    for s, s2 in zip(states, moved):
        assert np.array_equal(s2.get(), s.get()[keep])
    # the new support's products are right (its transposed structure is rebuilt)
    if w2.nnz:
        x = randn(rng, k, 5)
        assert rel_err((w2 @ x).get(), b.astype(np.float64) @ x) < TOL
        d = randn(rng, m, 5)
        assert rel_err((w2.T @ d).get(), b.T.astype(np.float64) @ d) < TOL


def test_compact_without_return_src(kdev, rng):
    a = random_csr(rng, 10, 10, 0.5, empty_rows=False)
    vals = a.data.copy()
    vals[::2] = 0
    w = CSRMatrix.from_arrays(a.indptr, a.indices, vals, a.shape, kdev)
    w2, moved = w.compact()
    assert moved == [] and w2.nnz == np.count_nonzero(vals)
    empty = CSRMatrix.from_scipy(sp.csr_matrix((3, 3), dtype=np.float32), kdev)
    assert empty.compact()[0] is empty


@pytest.mark.parametrize("m,k", [(30, 40), (65_535, 3), (3, 70_000), (70_000, 2)])
def test_index_type_and_compaction_either_side_of_uint16(kdev, rng, m, k):
    """Index arrays are uint16 when both dimensions fit, else int32 (row of every entry and
    transposed structure included); compaction, products and SDDMM agree with scipy either way."""
    a = random_csr(rng, m, k, min(1.0, 60 / (m * k) * 20), empty_rows=False)
    w = CSRMatrix.from_scipy(a, kdev)
    want = np.uint16 if max(m, k) <= 65_535 else np.int32
    tp, ti, pm = w.pattern.transposed
    assert w.indices.dtype == w.pattern.rows.dtype == ti.dtype == want
    assert w.nbytes == 4 * (m + 1) + (np.dtype(want).itemsize + 4) * a.nnz
    vals = w.data.get()
    vals[::3] = 0.0
    w.data.set(vals)
    c, (state,), src = w.compact(w.data.copy(), return_src=True)
    a.data[::3] = 0.0
    a.eliminate_zeros()
    assert c.indices.dtype == want and np.array_equal(c.to_scipy().toarray(), a.toarray())
    assert np.array_equal(state.get(), a.data)
    x, d = randn(rng, k, 5), randn(rng, m, 5)
    assert rel_err(c.matmul(x).get(), a.astype(np.float64) @ x) < TOL
    assert rel_err(c.matmul_t(d).get(), a.T.astype(np.float64) @ d) < TOL
    assert rel_err(c.sddmm(d, x).data.get(), sddmm_ref(a, d, x, 1.0)) < TOL


def test_gather_gives_zero_for_new_entries(kdev, rng):
    x = randn(rng, 10)
    idx = np.array([3, -1, 0, -1, 9], np.int32)
    g = gather(kdev, kdev.to_device(x), kdev.to_device(idx, np.int32), out=poisoned(kdev, (5,)))
    assert np.array_equal(g.get(), np.where(idx >= 0, x[idx], 0.0).astype(np.float32))


@SETTINGS
@given(size=st.integers(1, 3000), frac=st.sampled_from([0.0, 0.01, 0.5, 1.0]))
def test_gather_and_scatter(kdev, rng, size, frac):
    x = randn(rng, size)
    idx = np.flatnonzero(rng.random(size) < frac).astype(np.int32)
    xd = kdev.to_device(x)
    idd = kdev.to_device(idx, np.int32)
    g = gather(kdev, xd, idd, out=poisoned(kdev, (idx.size,)))
    assert np.array_equal(g.get(), x[idx])
    s = scatter(kdev, kdev.to_device(x[idx]), idd, size)
    ref = np.zeros(size, np.float32)
    ref[idx] = x[idx]
    assert np.array_equal(s.get(), ref)


def test_host_round_trips(kdev, rng):
    a = random_csr(rng, 15, 25, 0.2)
    w = CSRMatrix.from_scipy(a, kdev)
    h = w.to_host()
    assert isinstance(h, HostCSR) and h.nnz == a.nnz and h.shape == a.shape
    assert np.array_equal(h.to_dense(), a.toarray())
    w2 = CSRMatrix.from_host(h, kdev)
    assert np.array_equal(w2.to_dense(), a.toarray())
    assert w.nbytes == 4 * (15 + 1) + (2 + 4) * a.nnz   # uint16 column indices: both dimensions fit
    assert w.density == pytest.approx(a.nnz / (15 * 25))
    # non-canonical scipy input (duplicates, unsorted) becomes canonical
    coo = sp.coo_matrix((np.array([1, 2, 3], np.float32), ([0, 0, 1], [2, 2, 0])), shape=(2, 3))
    assert np.array_equal(CSRMatrix.from_scipy(coo, kdev).to_dense(), coo.toarray())


# ---- input validation -------------------------------------------------------------------

def test_bad_shapes_raise_value_errors(dev, rng):
    a = random_csr(rng, 6, 8, 0.5, empty_rows=False)
    w = CSRMatrix.from_scipy(a, dev)
    with pytest.raises(ValueError, match="shape"):
        w @ randn(rng, 7, 3)
    with pytest.raises(ValueError, match="shape"):
        w @ randn(rng, 8)
    with pytest.raises(ValueError, match="bias"):
        w.matmul(randn(rng, 8, 3), bias=randn(rng, 5))
    with pytest.raises(ValueError, match="out"):
        w.matmul(randn(rng, 8, 3), out=dev.empty((6, 4)))
    with pytest.raises(ValueError, match="shape"):
        w.T @ randn(rng, 8, 3)
    with pytest.raises(ValueError, match="out"):
        w.matmul_t(randn(rng, 6, 3), out=dev.empty((8, 2)))
    with pytest.raises(ValueError, match="sddmm"):
        w.sddmm(randn(rng, 6, 3), randn(rng, 8, 4))
    with pytest.raises(ValueError, match="sddmm"):
        w.sddmm(randn(rng, 5, 3), randn(rng, 8, 3))
    with pytest.raises(ValueError, match="sddmm"):
        w.sddmm(randn(rng, 6, 3), randn(rng, 8, 3), out=dev.empty((a.nnz + 1,)))
    with pytest.raises(ValueError, match="2-D"):
        CSRMatrix.from_dense(randn(rng, 5), dev)
    with pytest.raises(ValueError, match="inconsistent"):
        CSRMatrix.from_arrays([0, 1, 2], [0], [1.0], (2, 2), dev)
    with pytest.raises(ValueError, match="values"):
        w.with_values(randn(rng, a.nnz + 1))
    with pytest.raises(ValueError, match="out"):
        gather(dev, dev.to_device(randn(rng, 4)), dev.to_device(np.arange(3, dtype=np.int32), np.int32),
               out=dev.empty((4,)))
