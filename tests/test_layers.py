"""Layers, one at a time, dense and CSR: forward against a float64 numpy reference and PyTorch;
gradients against PyTorch autograd and finite differences of the numpy reference
(relative error < 1e-4); outputs and gradients poisoned with NaN before every launch.

The numpy float64 reference (np_* functions, NCHW / [N, F] like PyTorch) is shared with
test_models.py.

Every test runs on both kernel forms (``kdev``: PROXCL_TUNING cpu, then gpu)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

from helpers import rel_err
from proxcl.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Workspace
from proxcl.ops.nn import mix32, softmax_xent
from proxcl.ops import CSRMatrix

torch.set_default_dtype(torch.float64)
TOL = 1e-4


# ---- the float64 numpy reference -------------------------------------------------------

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def np_windows(x, kh, kw, sh, sw, ph, pw, fill):
    """x[N, C, H, W] -> windows[N, C, Ho, Wo, kh, kw] (padded with ``fill``)."""
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    v = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return v[:, :, ::sh, ::sw]


def np_conv2d(x, w, b, stride=1, padding=0):
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    win = np_windows(x, w.shape[2], w.shape[3], sh, sw, ph, pw, 0.0)
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    return y + b[None, :, None, None] if b is not None else y


def np_maxpool(x, kernel, stride=None, padding=0):
    kh, kw = _pair(kernel)
    sh, sw = _pair(kernel if stride is None else stride)
    ph, pw = _pair(padding)
    return np_windows(x, kh, kw, sh, sw, ph, pw, -np.inf).max(axis=(4, 5))


def np_linear(x, w, b):
    y = x @ w.T
    return y + b if b is not None else y


def np_xent(z, y):
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def np_forward(spec, state, x):
    """Logits [N, K] of a model spec (normalised, evaluation mode) in float64."""
    h = np.asarray(x, np.float64).reshape((x.shape[0],) + tuple(spec["input_shape"]))
    for l in spec["layers"]:
        t = l["type"]
        if t == "linear":
            h = np_linear(h, state[l["name"] + ".weight"], state.get(l["name"] + ".bias"))
        elif t == "conv2d":
            h = np_conv2d(h, state[l["name"] + ".weight"], state.get(l["name"] + ".bias"),
                          l["stride"], l["padding"])
        elif t == "maxpool2d":
            h = np_maxpool(h, l["kernel"], l["stride"], l["padding"])
        elif t == "relu":
            h = np.maximum(h, 0.0)
        elif t == "flatten":
            h = h.reshape(h.shape[0], -1)
    return h


def fd_grad(f, arrays: dict, coords: dict, h=1e-6):
    """Central differences of the scalar f() w.r.t. the listed flat coordinates of arrays
    (float64, modified in place and restored)."""
    out = {}
    for name, idx in coords.items():
        a = arrays[name].reshape(-1)
        g = []
        for i in idx:
            old = a[i]
            a[i] = old + h
            fp = f()
            a[i] = old - h
            fm = f()
            a[i] = old
            g.append((fp - fm) / (2 * h))
        out[name] = np.array(g)
    return out


# ---- layout helpers --------------------------------------------------------------------

def to_internal(x):
    """NCHW -> [C, N, H, W]; [N, F] -> [F, N]."""
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3) if x.ndim == 4 else x.T, np.float32)


def from_internal(a):
    return a.transpose(1, 0, 2, 3) if a.ndim == 4 else a.T


def sparsify_param(kdev, p, rng, density):
    """Zero a random part of a weight and store it as CSR; returns the float64 dense values."""
    w = p.to_numpy().astype(np.float64)
    w[rng.random(w.shape) >= density] = 0.0
    p.set_value(CSRMatrix.from_dense(w.reshape(p.matrix_shape).astype(np.float32), kdev))
    return w


def run_layer(kdev, layer, x, dy, need_dx=True):
    """Poisoned forward (keep) and backward of a layer on host arrays in PyTorch layout."""
    layer.ws.poison()
    for p in layer.params:
        p.grad.fill(np.float32(np.nan))
    xd = kdev.to_device(to_internal(x))
    y = layer.forward(xd, train=True, keep=True)
    y_host = from_internal(y.get()).copy()
    dx = layer.backward(kdev.to_device(to_internal(dy)), need_dx=need_dx)
    dx_host = from_internal(dx.get()).copy() if dx is not None else None
    return y_host, dx_host


def torch_grads(fn, x, params, dy):
    """Forward a torch function in float64, backward with dy; returns (y, dx, [dparams])."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    pts = [torch.tensor(p, dtype=torch.float64, requires_grad=True) if p is not None else None
           for p in params]
    y = fn(xt, *pts)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), [p.grad.numpy() if p is not None else None for p in pts]


# ---- Linear ----------------------------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("n_in,n_out,batch", [(37, 19, 5), (64, 10, 1), (130, 33, 67)])
def test_linear_matches_torch_and_finite_differences(kdev, rng, sparse, relu, n_in, n_out, batch):
    layer = Linear(kdev, Workspace(kdev), (n_in,), "fc", n_out, rng=rng)
    layer.relu = relu
    w = sparsify_param(kdev, layer.weight, rng, 0.3) if sparse else layer.weight.to_numpy().astype(np.float64)
    b = layer.bias.to_numpy().astype(np.float64)
    x = rng.standard_normal((batch, n_in))
    dy = rng.standard_normal((batch, n_out))
    y, dx = run_layer(kdev, layer, x, dy)

    act = (lambda t: torch.relu(t)) if relu else (lambda t: t)
    yt, dxt, (dwt, dbt) = torch_grads(lambda xt, wt, bt: act(F.linear(xt, wt, bt)), x, [w, b], dy)
    mask = w != 0 if sparse else np.ones_like(w, bool)
    assert rel_err(y, yt) < TOL
    assert rel_err(dx, dxt) < TOL
    assert rel_err(layer.weight.grad_numpy(), dwt * mask) < TOL
    assert rel_err(layer.bias.grad_numpy(), dbt) < TOL
    if sparse:
        assert layer.weight.grad.size == np.count_nonzero(mask)

    # finite differences of sum(f(x) * dy) on the numpy reference
    arrays = {"x": x.copy(), "w": w.copy(), "b": b.copy()}

    def f():
        z = np_linear(arrays["x"], arrays["w"], arrays["b"])
        return float(np.sum((np.maximum(z, 0) if relu else z) * dy))

    sup = np.flatnonzero(mask)
    coords = {"x": rng.choice(x.size, 8, replace=False), "w": rng.choice(sup, min(8, sup.size), replace=False),
              "b": rng.choice(b.size, 4, replace=False)}
    fd = fd_grad(f, arrays, coords)
    assert rel_err(dx.reshape(-1)[coords["x"]], fd["x"]) < TOL
    assert rel_err(layer.weight.grad_numpy().reshape(-1)[coords["w"]], fd["w"]) < TOL
    assert rel_err(layer.bias.grad_numpy()[coords["b"]], fd["b"]) < TOL


def test_linear_without_bias_and_without_dx(kdev, rng):
    layer = Linear(kdev, Workspace(kdev), (12,), "fc", 7, bias=False, rng=rng)
    assert [p.name for p in layer.params] == ["fc.weight"]
    x, dy = rng.standard_normal((3, 12)), rng.standard_normal((3, 7))
    y, dx = run_layer(kdev, layer, x, dy, need_dx=False)
    assert dx is None
    w = layer.weight.to_numpy().astype(np.float64)
    assert rel_err(y, x @ w.T) < 1e-5
    assert rel_err(layer.weight.grad_numpy(), dy.T @ x) < 1e-5


# ---- Conv2d ----------------------------------------------------------------------------

conv_cases = st.tuples(
    st.integers(1, 4), st.integers(1, 5),            # C, O
    st.integers(3, 9), st.integers(3, 9),            # H, W
    st.integers(1, 3), st.integers(1, 3),            # kh, kw
    st.integers(1, 2), st.integers(0, 1),            # stride, padding
    st.integers(1, 3), st.booleans(), st.booleans())  # N, sparse, relu


@settings(max_examples=12, deadline=None)
@given(case=conv_cases, seed=st.integers(0, 2**31 - 1))
def test_conv2d_matches_torch(kdev, case, seed):
    c, o, h, w_, kh, kw, s, p, n, sparse, relu = case
    rng = np.random.default_rng(seed)
    layer = Conv2d(kdev, Workspace(kdev), (c, h, w_), "conv", o, (kh, kw), s, p, rng=rng)
    layer.relu = relu
    wt = sparsify_param(kdev, layer.weight, rng, 0.5) if sparse else layer.weight.to_numpy().astype(np.float64)
    b = layer.bias.to_numpy().astype(np.float64)
    x = rng.standard_normal((n, c, h, w_))
    dy = rng.standard_normal((n,) + layer.out_shape)
    y, dx = run_layer(kdev, layer, x, dy)
    act = (lambda t: torch.relu(t)) if relu else (lambda t: t)
    yt, dxt, (dwt, dbt) = torch_grads(lambda xt, W, B: act(F.conv2d(xt, W, B, stride=s, padding=p)),
                                      x, [wt, b], dy)
    mask = wt != 0
    assert rel_err(y, yt) < TOL
    assert rel_err(dx, dxt) < TOL
    assert rel_err(layer.weight.grad_numpy(), dwt * mask) < TOL
    assert rel_err(layer.bias.grad_numpy(), dbt) < TOL


@pytest.mark.parametrize("sparse", [False, True])
def test_conv2d_finite_differences(kdev, rng, sparse):
    c, o, h, w_, k, s, p, n = 3, 4, 8, 7, 3, 2, 1, 2
    layer = Conv2d(kdev, Workspace(kdev), (c, h, w_), "conv", o, k, s, p, rng=rng)
    layer.relu = True
    wt = sparsify_param(kdev, layer.weight, rng, 0.4) if sparse else layer.weight.to_numpy().astype(np.float64)
    b = layer.bias.to_numpy().astype(np.float64)
    x = rng.standard_normal((n, c, h, w_))
    dy = rng.standard_normal((n,) + layer.out_shape)
    y, dx = run_layer(kdev, layer, x, dy)
    arrays = {"x": x.copy(), "w": wt.copy(), "b": b.copy()}

    def f():
        return float(np.sum(np.maximum(np_conv2d(arrays["x"], arrays["w"], arrays["b"], s, p), 0) * dy))

    assert rel_err(y, np.maximum(np_conv2d(x, wt, b, s, p), 0)) < TOL
    sup = np.flatnonzero(wt)
    coords = {"x": rng.choice(x.size, 10, replace=False), "w": rng.choice(sup, 10, replace=False),
              "b": np.arange(o)}
    fd = fd_grad(f, arrays, coords)
    assert rel_err(dx.reshape(-1)[coords["x"]], fd["x"]) < TOL
    assert rel_err(layer.weight.grad_numpy().reshape(-1)[coords["w"]], fd["w"]) < TOL
    assert rel_err(layer.bias.grad_numpy(), fd["b"]) < TOL


def test_im2col_limit_comes_from_the_kernel_form(kdev):
    """The CPU form cuts im2col buffers above 8 MiB into batch chunks (LeNet-5's conv2 at batch 128:
    16 MB, two chunks); the GPU form, whose steps are bound by launches, never does."""
    ws = Workspace(kdev)
    layer = Conv2d(kdev, ws, (20, 12, 12), "conv2", 50, 5, 1, 0)
    want = 2 if kdev.tuning.kind == "cpu" else 1
    assert ws.cols_limit == (8 << 20 if want == 2 else None)
    assert len(layer._chunks(128)) == want and len(layer._chunks(64)) == 1


@pytest.mark.parametrize("density", [None, 0.4, 0.1])
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_conv2d_in_batch_chunks_matches_torch(kdev, rng, density, chunks):
    """With the workspace's im2col limit below the batch's columns, the convolution runs in
    batch chunks (the last one shorter): the same output, dx, dW (summed over chunks) and db.
    Dense, CSR, and CSR sparse enough for the forward pass without im2col (density 0.1)."""
    sparse = density is not None
    c, o, h, w_, k, s, p, n = 3, 5, 9, 8, 3, 1, 1, 7
    ws = Workspace(kdev)
    layer = Conv2d(kdev, ws, (c, h, w_), "conv", o, k, s, p, rng=rng)
    layer.relu = True
    per_sample = 4 * c * k * k * layer.ho * layer.wo
    ws.cols_limit = per_sample * -(-n // chunks)
    assert len(layer._chunks(n)) == chunks
    wt = sparsify_param(kdev, layer.weight, rng, density) if sparse else layer.weight.to_numpy().astype(np.float64)
    assert layer.direct_ok() == (density == 0.1)
    b = layer.bias.to_numpy().astype(np.float64)
    x = rng.standard_normal((n, c, h, w_))
    dy = rng.standard_normal((n,) + layer.out_shape)
    y, dx = run_layer(kdev, layer, x, dy)
    full = 4 * c * k * k * n * layer.ho * layer.wo
    assert ws.get(("scratch", "cols"), (1,)).base_data.size < full or chunks == 1
    yt, dxt, (dwt, dbt) = torch_grads(lambda xt, W, B: torch.relu(F.conv2d(xt, W, B, stride=s, padding=p)),
                                      x, [wt, b], dy)
    assert rel_err(y, yt) < TOL and rel_err(dx, dxt) < TOL
    assert rel_err(layer.weight.grad_numpy(), dwt * (wt != 0)) < TOL
    assert rel_err(layer.bias.grad_numpy(), dbt) < TOL


@pytest.mark.parametrize("chunked", [False, True])
def test_grad_rows_is_the_dense_gradient_of_a_csr_weight(kdev, rng, chunked):
    """Linear and Conv2d: rows r0..r1 of the dense weight gradient of the last backward pass,
    off the CSR support too (what regrowth by gradient reads), summed over im2col chunks."""
    ws = Workspace(kdev)
    conv = Conv2d(kdev, ws, (2, 6, 6), "conv", 5, 3, 1, 0, rng=rng)
    lin = Linear(kdev, ws, (13,), "fc", 9, rng=rng)
    for layer, x_shape in ((conv, (4, 2, 6, 6)), (lin, (4, 13))):
        if chunked and layer is conv:
            ws.cols_limit = 4 * 2 * 9 * 16 * 2      # two samples per chunk
        wt = sparsify_param(kdev, layer.weight, rng, 0.3)
        x = rng.standard_normal(x_shape)
        dy = rng.standard_normal((4,) + layer.out_shape)
        run_layer(kdev, layer, x, dy)
        fn = (lambda xt, W: F.conv2d(xt, W)) if layer is conv else (lambda xt, W: F.linear(xt, W))
        _, _, (dwt,) = torch_grads(fn, x, [wt], dy)
        m, kk = layer.weight.matrix_shape
        for r0, r1 in ((0, m), (1, 3), (m - 1, m)):
            out = kdev.full((r1 - r0, kk), np.nan)
            layer.grad_rows(r0, r1, out)
            assert rel_err(out.get(), dwt.reshape(m, kk)[r0:r1]) < TOL


def test_pointwise_conv_skips_im2col_and_is_exact(kdev, rng):
    layer = Conv2d(kdev, Workspace(kdev), (5, 4, 3), "conv", 6, 1, rng=rng)
    assert layer.pointwise
    x, dy = rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((2, 6, 4, 3))
    w, b = layer.weight.to_numpy().astype(np.float64), layer.bias.to_numpy().astype(np.float64)
    y, dx = run_layer(kdev, layer, x, dy)
    yt, dxt, (dwt, dbt) = torch_grads(lambda xt, W, B: F.conv2d(xt, W, B), x, [w, b], dy)
    assert rel_err(y, yt) < TOL and rel_err(dx, dxt) < TOL
    assert rel_err(layer.weight.grad_numpy(), dwt) < TOL


# ---- MaxPool2d, ReLU, Flatten ----------------------------------------------------------

@settings(max_examples=12, deadline=None)
@given(c=st.integers(1, 3), n=st.integers(1, 3), h=st.integers(2, 9), w=st.integers(2, 9),
       k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 1), relu=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_maxpool_matches_torch(kdev, c, n, h, w, k, s, p, relu, seed):
    assume(2 * p <= k and h + 2 * p >= k and w + 2 * p >= k)
    rng = np.random.default_rng(seed)
    layer = MaxPool2d(kdev, Workspace(kdev), (c, h, w), k, s, p)
    layer.relu = relu
    x = rng.standard_normal((n, c, h, w))
    dy = rng.standard_normal((n,) + layer.out_shape)
    y, dx = run_layer(kdev, layer, x, dy)
    act = (lambda t: torch.relu(t)) if relu else (lambda t: t)
    yt, dxt, _ = torch_grads(lambda xt: act(F.max_pool2d(xt, k, s, p)), x, [], dy)
    assert rel_err(y, yt) < TOL
    assert rel_err(dx, dxt) < TOL


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (2, 2, 1), (1, 3, 0), (2, 3, 1), (3, 3, 1), (3, 4, 0), (3, 2, 1)])
@pytest.mark.parametrize("relu", [False, True])
def test_maxpool_backward_forms(kdev, rng, k, s, p, relu):
    """Windows that do not overlap (k <= s: each writes its winner into a zeroed band, with the rows
    and columns between windows, right of the last and below the last, zero) and windows that do
    (3 of stride 2: a search per pixel), on a 9 x 7 image, against PyTorch."""
    layer = MaxPool2d(kdev, Workspace(kdev), (2, 9, 7), k, s, p)
    layer.relu = relu
    x = rng.standard_normal((3, 2, 9, 7))
    dy = rng.standard_normal((3,) + layer.out_shape)
    with kdev.record_launches() as launches:
        y, dx = run_layer(kdev, layer, x, dy)
    act = (lambda t: torch.relu(t)) if relu else (lambda t: t)
    yt, dxt, _ = torch_grads(lambda xt: act(F.max_pool2d(xt, k, s, p)), x, [], dy)
    assert rel_err(y, yt) < TOL and rel_err(dx, dxt) < TOL
    names = {name for name, _ in launches}
    assert ("maxpool_bwd_tiles" if k <= s else "maxpool_bwd") in names
    assert not names & ({"maxpool_bwd"} if k <= s else {"maxpool_bwd_tiles"})


def test_maxpool_finite_differences(kdev, rng):
    layer = MaxPool2d(kdev, Workspace(kdev), (2, 7, 6), 3, 2, 1)
    x = rng.standard_normal((2, 2, 7, 6))
    dy = rng.standard_normal((2,) + layer.out_shape)
    y, dx = run_layer(kdev, layer, x, dy)
    arrays = {"x": x.copy()}
    fd = fd_grad(lambda: float(np.sum(np_maxpool(arrays["x"], 3, 2, 1) * dy)), arrays,
                 {"x": np.arange(x.size)})
    assert rel_err(y, np_maxpool(x, 3, 2, 1)) < TOL
    assert rel_err(dx.reshape(-1), fd["x"]) < TOL


@pytest.mark.parametrize("shape", [(3, 4, 5), (17,)])
def test_relu_layer(kdev, rng, shape):
    layer = ReLU(kdev, Workspace(kdev), shape)
    x = rng.standard_normal((3,) + shape)
    dy = rng.standard_normal(x.shape)
    y, dx = run_layer(kdev, layer, x, dy)
    assert np.array_equal(y, np.maximum(x, 0).astype(np.float32))
    assert rel_err(dx, dy * (x > 0)) < 1e-6
    arrays = {"x": x.copy()}
    fd = fd_grad(lambda: float(np.sum(np.maximum(arrays["x"], 0) * dy)), arrays, {"x": np.arange(x.size)})
    assert rel_err(dx.reshape(-1), fd["x"]) < TOL


@pytest.mark.parametrize("shape,n", [((3, 4, 5), 2), ((4, 1, 1), 3), ((1, 6, 2), 1), ((9,), 4)])
def test_flatten_keeps_pytorch_feature_order(kdev, rng, shape, n):
    layer = Flatten(kdev, Workspace(kdev), shape)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    dy = rng.standard_normal((n, layer.out_shape[0])).astype(np.float32)
    y, dx = run_layer(kdev, layer, x, dy)
    assert np.array_equal(y, x.reshape(n, -1))
    assert np.array_equal(dx, dy.reshape(x.shape))


# ---- Dropout ---------------------------------------------------------------------------

def test_dropout_train_eval_and_mask_consistency(kdev, rng):
    p = 0.3
    layer = Dropout(kdev, Workspace(kdev), (50, 4, 4), p)
    x = rng.uniform(0.5, 1.5, (40, 50, 4, 4)).astype(np.float32)       # nonzero everywhere
    xd = kdev.to_device(to_internal(x))
    ye = layer.forward(xd, train=False)
    assert np.array_equal(ye.get(), to_internal(x))                      # evaluation: identity
    layer.ws.poison()
    y = from_internal(layer.forward(xd, train=True, keep=True).get())
    keep = y != 0
    assert abs(1 - keep.mean() - p) < 0.01                               # ~p of the units dropped
    assert rel_err(y[keep], x[keep] / (1 - p)) < 1e-6                    # kept ones scaled
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = from_internal(layer.backward(kdev.to_device(to_internal(dy))).get())
    assert rel_err(dx, dy * keep / (1 - p)) < 1e-6                       # the same mask backward
    # torch autograd of x * mask / (1 - p) with the mask the forward drew
    yt, dxt, _ = torch_grads(lambda xt: xt * torch.tensor(keep / (1 - p)), x.astype(np.float64), [], dy)
    assert rel_err(dx, dxt) < TOL


def test_dropout_is_seeded_and_fresh_per_step(kdev, rng):
    layer = Dropout(kdev, Workspace(kdev), (1000,), 0.5)
    x = kdev.to_device(np.ones((1000, 8), np.float32))
    masks = []
    for seed in (7, 7, 8):
        layer.set_seed(seed)
        masks.append([layer.forward(x, train=True).get() != 0 for _ in range(2)])
    assert np.array_equal(masks[0][0], masks[1][0]) and np.array_equal(masks[0][1], masks[1][1])
    assert not np.array_equal(masks[0][0], masks[0][1])                  # new mask each step
    assert not np.array_equal(masks[0][0], masks[2][0])                  # another seed, another mask
    # steps are not permutations of one another: the dropped counts differ from step to step
    counts = {int(m.sum()) for pair in masks for m in pair}
    assert len(counts) > 2


def test_dropout_rejects_bad_p(kdev):
    with pytest.raises(ValueError, match="dropout"):
        Dropout(kdev, Workspace(kdev), (3,), 1.0)


def test_mix32_is_injective_on_a_sample():
    vals = {mix32(i) for i in range(5000)}
    assert len(vals) == 5000 and all(0 <= v < 2**32 for v in vals)


# ---- softmax cross-entropy and accuracy ------------------------------------------------

@pytest.mark.parametrize("k,n", [(10, 1), (10, 67), (3, 200), (7, 64)])
def test_softmax_xent_matches_torch(kdev, rng, k, n):
    z = (rng.standard_normal((n, k)) * 5).astype(np.float32)
    z[0, :] += 1000.0                                 # a large shift stays finite (stable)
    y = rng.integers(0, k, n)
    zd = kdev.to_device(np.ascontiguousarray(z.T))
    yd = kdev.to_device(y.astype(np.int32), np.int32)
    dz = kdev.full((k, n), np.nan)
    probs = kdev.full((k, n), np.nan)
    partial = softmax_xent(kdev, zd, yd, dz=dz, gscale=1.0 / n, probs=probs)
    part = partial.get().astype(np.float64)
    zt = torch.tensor(z.astype(np.float64), requires_grad=True)
    loss = F.cross_entropy(zt, torch.tensor(y))
    loss.backward()
    assert abs(part[:, 0].sum() / n - loss.item()) < TOL * max(1.0, abs(loss.item()))
    assert int(part[:, 1].sum()) == int(np.sum(z.argmax(1) == y))
    assert rel_err(dz.get().T, zt.grad.numpy()) < TOL
    assert rel_err(probs.get().T, torch.softmax(zt, 1).detach().numpy()) < TOL
    # evaluation form: no labels, probabilities only
    probs.fill(np.float32(np.nan))
    assert softmax_xent(kdev, zd, None, probs=probs) is None
    assert rel_err(probs.get().T, torch.softmax(zt, 1).detach().numpy()) < TOL
