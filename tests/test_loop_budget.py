"""Every kernel family past a work-item's loop budget, against numpy float64 / scipy / PyTorch.

llvmpipe (Mesa's software driver, behind rusticl) ends a work-item's loops silently after 65,535
iterations in all, so no kernel may loop over a whole inner dimension, row, column range or class
list; the hosts split them (``Tuning.loop_max``, docs/PORTABILITY.md).  Two kinds of test:

* ``tight``: the device with a loop budget of 256, so that every split path (GEMM slices of K,
  CSR row pieces, column slices, from_dense pieces, scan blocks, window-row pieces, class chunks)
  runs at small sizes, with the launches checked to be split;
* ``big``: sizes whose unsplit loops would pass 65,535 iterations per work-item (the suite's
  other tests cover the rest), on the default budget.  Too slow for Oclgrind, which runs the
  ``tight`` ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from helpers import form_device, poisoned, rel_err
from proxcl import models
from proxcl.layers import Conv2d, Linear, MaxPool2d, Workspace
from proxcl.ops import CSRMatrix, gemm
from proxcl.ops.nn import bias_grad, softmax_xent
from test_layers import run_layer, torch_grads

TOL = 1e-5
big = pytest.mark.big


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def launched(dev, fn):
    """fn()'s result and the names of the kernels it launched."""
    with dev.record_launches() as launches:
        out = fn()
    dev.finish()
    return out, [name for name, _ in launches]


# ---- GEMM: slices of K ------------------------------------------------------------------

def gemm_check(dev, rng, M, N, K, trans_a, trans_b, epilogue):
    a = randn(rng, K, M) if trans_a else randn(rng, M, K)
    b = randn(rng, N, K) if trans_b else randn(rng, K, N)
    bias = randn(rng, M) if epilogue else None
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    if epilogue:
        ref = np.maximum(ref + bias[:, None], 0.0)
    out, names = launched(dev, lambda: gemm(dev, a, b, trans_a=trans_a, trans_b=trans_b, bias=bias,
                                            relu=epilogue, out=poisoned(dev, (M, N))))
    assert rel_err(out.get(), ref) < TOL, (M, N, K, trans_a, trans_b, epilogue)
    return names


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("M,N,K", [(3, 5, 2500), (7, 20, 2601)])   # past (256 - 3*3*VEC) * VEC: the
# row form of A B^T slices K above 1,472 with 8-wide vectors, 1,792 with 16-wide (gemm_wide)
def test_gemm_slices_of_k(tight, rng, M, N, K, trans_a, trans_b):
    for epilogue in (False, True):
        names = gemm_check(tight, rng, M, N, K, trans_a, trans_b, epilogue)
        assert "gemm_sum_slices" in names


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
def test_packed_gemm_slices_of_k(dev, rng, trans_a, trans_b):
    """The CPU form's packed product (gemm_pack, gemm_pk) within the loop budget: copies of at most
    loop_max / width values of k per work-item, slices of K added by gemm_sum_slices."""
    from conftest import TIGHT
    d = form_device(dev, "cpu", gemm_pack=(1, 1, 1, 3, 16384), **TIGHT)
    for epilogue in (False, True):
        names = gemm_check(d, rng, 7, 20, 2601, trans_a, trans_b, epilogue)
        assert names.count("gemm_pack") == 2 and {"gemm_pk", "gemm_sum_slices"} <= set(names), names


@big
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
def test_gemm_inner_dimension_past_the_limit(kdev, rng, trans_a, trans_b):
    """K = 600,001: 75,000 vector steps even for the row-dot form of A B^T."""
    gemm_check(kdev, rng, 3, 5, 600_001, trans_a, trans_b, epilogue=True)


# ---- SpMM and its transpose: rows cut into pieces ---------------------------------------

def long_rows(rng, m, k, dens):
    """A CSR matrix with dense rows of k entries, sparse rows and an empty row."""
    a = sp.random(m, k, density=dens, format="lil", dtype=np.float64, random_state=rng)
    a[0, :] = rng.uniform(0.5, 1.5, k)
    a[m - 1, :] = 0.0
    a = a.tocsr().astype(np.float32)
    a.sort_indices()
    return a


def spmm_check(dev, rng, a, n):
    m, k = a.shape
    x, bias, d = randn(rng, k, n), randn(rng, m), randn(rng, m, n)
    w = CSRMatrix.from_scipy(a, dev)
    got, names = launched(dev, lambda: w.matmul(x, bias=bias, relu=True, out=poisoned(dev, (m, n))))
    ref = np.maximum(a.astype(np.float64) @ x + bias[:, None], 0.0)
    assert rel_err(got.get(), ref) < TOL
    got_t, names_t = launched(dev, lambda: w.matmul_t(d, out=poisoned(dev, (k, n))))
    assert rel_err(got_t.get(), a.T.astype(np.float64) @ d) < TOL
    return names, names_t


@pytest.mark.parametrize("n", [13, 64, 70])
def test_spmm_rows_in_pieces(tight, rng, n):
    """Rows of 300 entries and columns of 200 against pieces of 128; edge column segments."""
    names, _ = spmm_check(tight, rng, long_rows(rng, 200, 300, 0.05), n)
    assert "csr_sum_pieces" in names
    _, names_t = spmm_check(tight, rng, long_rows(rng, 300, 200, 0.05).T.tocsr(), n)
    assert "csr_sum_pieces" in names_t


@big
def test_spmm_rows_past_the_limit(kdev, rng):
    """A row of 70,000 entries (the product and, as a column, the transposed product)."""
    spmm_check(kdev, rng, long_rows(rng, 3, 70_000, 0.01), 5)
    spmm_check(kdev, rng, long_rows(rng, 3, 70_000, 0.01).T.tocsr(), 5)


# ---- SDDMM: column slices ---------------------------------------------------------------

def sddmm_check(dev, rng, m, k, n, scale=-0.5):
    a = long_rows(rng, m, k, 0.3)
    A, B = randn(rng, m, n), randn(rng, k, n)
    rows = np.repeat(np.arange(m), np.diff(a.indptr))
    ref = scale * np.einsum("pc,pc->p", A[rows].astype(np.float64), B[a.indices].astype(np.float64))
    w = CSRMatrix.from_scipy(a, dev)
    g, names = launched(dev, lambda: w.sddmm(A, B, scale=scale, out=poisoned(dev, (a.nnz,))))
    assert rel_err(g.data.get(), ref) < TOL
    return names


@pytest.mark.parametrize("n", [1000, 70_000])
def test_sddmm_column_slices(tight, rng, n):
    """n = 70,000 passes the GPU form's budget with 64 lanes per entry, n = 1000 the CPU form's."""
    names = sddmm_check(tight, rng, 2, 3, n)
    assert "gemm_sum_slices" in names or (tight.tuning.kind == "gpu" and n < 2048)


@big
def test_sddmm_dot_products_past_the_limit(kdev, rng):
    sddmm_check(kdev, rng, 3, 4, 200_003)


# ---- dense -> CSR, compaction, the scan -------------------------------------------------

def from_dense_check(dev, d, thr=0.0):
    w, src = CSRMatrix.from_dense(d, dev, threshold=thr, return_src=True)
    mask = np.abs(d) > thr
    ref = sp.csr_matrix(np.where(mask, d, 0.0))
    indptr, indices, data = w.to_arrays()
    assert np.array_equal(indptr, ref.indptr) and np.array_equal(indices, ref.indices)
    assert np.array_equal(data, ref.data) and np.array_equal(src.get(), np.flatnonzero(mask))
    return w


def compact_check(dev, rng, a, drop):
    vals = a.data.copy()
    vals[rng.random(a.nnz) < drop] = 0.0
    w = CSRMatrix.from_arrays(a.indptr, a.indices, vals, a.shape, dev)
    state = dev.to_device(randn(rng, a.nnz))
    w2, (s2,), src = w.compact(state, return_src=True)
    keep = np.flatnonzero(vals)
    b = a.copy()
    b.data = vals
    b.eliminate_zeros()
    ip, ij, ix = w2.to_arrays()
    assert np.array_equal(ip, b.indptr) and np.array_equal(ij, b.indices) and np.array_equal(ix, b.data)
    assert np.array_equal(src.get(), keep) and np.array_equal(s2.get(), state.get()[keep])


def test_from_dense_pieces_and_scan_blocks(tight, rng):
    d = randn(rng, 20, 500)
    d[np.abs(d) < 1.0] = 0.0
    d[3] = 0.0
    _, names = launched(tight, lambda: from_dense_check(tight, d, thr=0.25))
    tall = randn(rng, 4000, 3)                      # 4000 counts: two blocks of 32 x 112
    _, names = launched(tight, lambda: from_dense_check(tight, tall))
    assert names.count("scan_counts") == 2


def test_compaction_of_long_rows(tight, rng):
    compact_check(tight, rng, long_rows(rng, 6, 400, 0.1), 0.5)
    compact_check(tight, rng, sp.random(4000, 4, density=0.5, format="csr", dtype=np.float32,
                                        random_state=rng), 0.5)


@big
def test_from_dense_and_compaction_past_the_limit(kdev, rng):
    """Rows of 70,000 columns; 8.5 million rows: 66,000 loop iterations per work-item of a
    single scan launch, three blocks here."""
    d = randn(rng, 3, 70_000)
    d[np.abs(d) < 1.0] = 0.0
    from_dense_check(kdev, d)
    compact_check(kdev, rng, long_rows(rng, 3, 70_000, 0.1), 0.5)
    _, names = launched(kdev, lambda: from_dense_check(kdev, randn(rng, 8_500_000, 1)))
    assert names.count("scan_counts") == 3


# ---- window kernels: rows cut into pieces of columns ------------------------------------

def conv_pool_check(dev, rng, in_shape, out, kernel, pool, n=2, sparse=False, cols_limit=None, stride=None):
    """Conv2d (ReLU fused) and MaxPool2d (stride: the pool's, default its window) forward and
    backward against PyTorch; with cols_limit, the im2col buffer's limit in bytes (batch chunks
    above it)."""
    ws = Workspace(dev)
    if cols_limit is not None:
        ws.cols_limit = cols_limit
    conv = Conv2d(dev, ws, in_shape, "conv", out, kernel, 1, 1, rng=rng)
    conv.relu = True
    mp = MaxPool2d(dev, ws, conv.out_shape, pool, stride)
    w, b = conv.weight.to_numpy().astype(np.float64), conv.bias.to_numpy().astype(np.float64)
    if sparse:
        w[rng.random(w.shape) < 0.5] = 0.0
        conv.weight.set_value(CSRMatrix.from_dense(w.reshape(conv.weight.matrix_shape).astype(np.float32), dev))
    x = rng.standard_normal((n,) + tuple(in_shape))
    dy = rng.standard_normal((n,) + mp.out_shape)
    yt, dxt, (dwt, dbt) = torch_grads(
        lambda xt, W, B: F.max_pool2d(torch.relu(F.conv2d(xt, W, B, padding=1)), pool, stride), x, [w, b], dy)
    ws.poison()
    xd = dev.to_device(np.ascontiguousarray(x.transpose(1, 0, 2, 3), np.float32))
    h = conv.forward(xd, train=True, keep=True)
    y = mp.forward(h, train=True, keep=True)
    assert rel_err(y.get().transpose(1, 0, 2, 3), yt) < TOL
    dyd = dev.to_device(np.ascontiguousarray(dy.transpose(1, 0, 2, 3), np.float32))
    dx = conv.backward(mp.backward(dyd))
    assert rel_err(dx.get().transpose(1, 0, 2, 3), dxt) < TOL
    assert rel_err(conv.weight.grad_numpy(), dwt * (w != 0)) < TOL
    assert rel_err(conv.bias.grad_numpy(), dbt) < TOL
    return conv, mp


@pytest.mark.parametrize("sparse", [False, True])
def test_window_rows_in_pieces(tight, rng, sparse):
    """A 100-wide image, a 5x5 kernel: col2im takes 8 columns per work-item, im2col and the
    pooling kernels 36 to 85 (the backward of 2x2 windows, which do not overlap, 36 windows)."""
    conv_pool_check(tight, rng, (2, 9, 100), 3, 5, 2, sparse=sparse)


@pytest.mark.parametrize("k,h", [(9, 17), (3, 11)])
def test_pool_backward_form_within_the_budget(tight, rng, k, h):
    """Windows that do not overlap take the zeroed bands only where a band's loops fit the
    budget (a 9x9 window of stride 9 on 17 rows: a band of 9 rows x 9 columns per window, over
    256 with its tail), else the search per pixel; both as PyTorch's gradient."""
    layer = MaxPool2d(tight, Workspace(tight), (2, h, h), k)
    x = rng.standard_normal((2, 2, h, h))
    dy = rng.standard_normal((2,) + layer.out_shape)
    xd = tight.to_device(np.ascontiguousarray(x.transpose(1, 0, 2, 3), np.float32))
    layer.forward(xd, train=True, keep=True)
    dyd = tight.to_device(np.ascontiguousarray(dy.transpose(1, 0, 2, 3), np.float32))
    dx, names = launched(tight, lambda: layer.backward(dyd))
    _, dxt, _ = torch_grads(lambda xt: F.max_pool2d(xt, k), x, [], dy)
    assert rel_err(dx.get().transpose(1, 0, 2, 3), dxt) < TOL
    assert names == (["maxpool_bwd"] if k == 9 else ["maxpool_bwd_tiles"])


def test_overlapping_pool_rows_in_pieces(tight, rng):
    """3x3 windows of stride 2, whose backward searches the windows of each pixel: 36 of the 98
    columns per work-item."""
    _, names = launched(tight, lambda: conv_pool_check(tight, rng, (2, 9, 100), 3, 5, 3, stride=2))
    assert "maxpool_bwd" in names and "maxpool_bwd_tiles" not in names


def test_window_rows_in_pieces_in_batch_chunks(tight, rng):
    """The same rows in pieces when im2col and col2im work on batch chunks (one sample of 180,000
    bytes of columns each, at a limit of 200,000): the pieces of samples n0.. of the batch."""
    conv, _ = conv_pool_check(tight, rng, (2, 9, 100), 3, 5, 2, n=3, cols_limit=200_000)
    assert conv._chunks(3) == [(0, 1), (1, 1), (2, 1)]


@big
def test_window_rows_past_the_limit(kdev, rng):
    """An image row of 70,000 pixels: im2col, col2im, max pooling and its backward."""
    conv_pool_check(kdev, rng, (1, 1, 70_000), 2, (1, 3), (1, 2), n=1)


def test_direct_convolution_only_within_the_budget(tight, dev, rng):
    """The fused CSR convolution + pooling runs where its loops fit, else im2col + SpMM does, with
    the same logits."""
    spec = {"input_shape": [3, 12, 30], "layers": [
        {"type": "conv2d", "out": 4, "kernel": 3}, {"type": "relu"}, {"type": "maxpool2d", "kernel": 2},
        {"type": "flatten"}, {"type": "linear", "out": 5}]}
    x = randn(rng, 2, 3, 12, 30)
    out = []
    for d in (dev, tight):
        model = models.build(spec, device=d, seed=3)
        model.to_sparse("conv1.weight", threshold=0.16)
        conv = next(la for la in model.layers if isinstance(la, Conv2d))
        pool = next(la for la in model.layers if isinstance(la, MaxPool2d))
        assert conv.direct_ok(pool) == (d is dev)
        out.append(model.forward(x))
    assert rel_err(out[1], out[0]) < TOL


# ---- bias gradient: column slices -------------------------------------------------------

def row_sums_close(got, x):
    """Float32 row sums of x against float64, within 1e-6 of the sum of magnitudes (the scale of
    a float32 summation's rounding: the sums of random signs cancel far below it)."""
    x = x.astype(np.float64)
    assert np.all(np.abs(got - x.sum(axis=1)) <= 1e-6 * np.abs(x).sum(axis=1))


def bias_grad_check(dev, rng, m, n):
    dy, y = randn(rng, m, n), randn(rng, m, n)
    masked = np.where(y > 0, dy, 0.0)
    dyd, db = dev.to_device(dy), poisoned(dev, (m,))
    _, names = launched(dev, lambda: bias_grad(dev, dyd, dev.to_device(y), True, db))
    assert np.array_equal(dyd.get(), masked)
    row_sums_close(db.get(), masked)
    dyd, db = dev.to_device(dy), poisoned(dev, (m,))
    bias_grad(dev, dyd, None, False, db)
    row_sums_close(db.get(), dy)
    return names


def test_bias_grad_column_slices(tight, rng):
    assert "gemm_sum_slices" in bias_grad_check(tight, rng, 3, 40_001)


@big
def test_bias_grad_past_the_limit(kdev, rng):
    """4.5 million columns: 70,000 steps per lane of the CPU form's work-group of 64."""
    bias_grad_check(kdev, rng, 1, 4_500_000)


# ---- softmax cross-entropy: chunks of classes -------------------------------------------

def softmax_check(dev, rng, k, n):
    z = randn(rng, n, k) * 4
    z[0] += 1000.0
    y = rng.integers(0, k, n)
    dz, probs = poisoned(dev, (k, n)), poisoned(dev, (k, n))
    part, names = launched(dev, lambda: softmax_xent(
        dev, dev.to_device(np.ascontiguousarray(z.T)), dev.to_device(y.astype(np.int32), np.int32),
        dz=dz, gscale=1.0 / n, probs=probs))
    zt = torch.tensor(z.astype(np.float64), requires_grad=True)
    loss = F.cross_entropy(zt, torch.tensor(y))
    loss.backward()
    part = part.get().astype(np.float64)
    tol = 1e-4   # as test_layers' softmax: a float32 sum of up to 70,000 exponentials rounds
    assert abs(part[:, 0].sum() / n - loss.item()) < tol * max(1.0, abs(loss.item()))
    assert int(part[:, 1].sum()) == int(np.sum(z.argmax(1) == y))
    assert rel_err(dz.get().T, zt.grad.numpy()) < tol
    assert rel_err(probs.get().T, torch.softmax(zt, 1).detach().numpy()) < tol
    return names


def test_softmax_chunks_of_classes(tight, rng):
    assert "softmax_chunk_stats" in softmax_check(tight, rng, 100, 70)


@big
def test_softmax_classes_past_the_limit(kdev, rng):
    softmax_check(kdev, rng, 70_000, 3)


# ---- a layer in training, whole -----------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
def test_linear_layer_under_the_budget(tight, rng, sparse):
    """A Linear layer's forward and backward with every product split (K, rows, columns)."""
    layer = Linear(tight, Workspace(tight), (400,), "fc", 30, rng=rng)
    layer.relu = True
    w = layer.weight.to_numpy().astype(np.float64)
    if sparse:
        w[rng.random(w.shape) < 0.5] = 0.0
        layer.weight.set_value(CSRMatrix.from_dense(w.astype(np.float32), tight))
    b = layer.bias.to_numpy().astype(np.float64)
    x, dy = rng.standard_normal((20, 400)), rng.standard_normal((20, 30))
    y, dx = run_layer(tight, layer, x, dy)
    yt, dxt, (dwt, dbt) = torch_grads(lambda xt, W, B: torch.relu(F.linear(xt, W, B)), x, [w, b], dy)
    assert rel_err(y, yt) < TOL and rel_err(dx, dxt) < TOL
    assert rel_err(layer.weight.grad_numpy(), dwt * (w != 0)) < TOL
    assert rel_err(layer.bias.grad_numpy(), dbt) < TOL


# ---- the tiled GPU forms: their own loop counts ------------------------------------------

@pytest.fixture(scope="module")
def tight_tiled(dev):
    """The GPU form with the tiled kernels at every size (conftest.TILED) and a budget of 256."""
    from conftest import TIGHT, TILED
    return form_device(dev, **TILED, **TIGHT)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_gemm_tile_slices_of_k(tight_tiled, rng, trans_a, trans_b):
    """A work-item of gemm_tile loops 21 times per step of BK = 4 and 12 times besides (44 values of
    K fit the budget of 256): K = 300 takes 7 slices, K = 40 none."""
    for epilogue in (False, True):
        names = gemm_check(tight_tiled, rng, 21, 18, 300, trans_a, trans_b, epilogue)
        assert "gemm_tile" in names and "gemm_sum_slices" in names, names
    assert "gemm_sum_slices" not in gemm_check(tight_tiled, rng, 21, 18, 40, False, False, True)

