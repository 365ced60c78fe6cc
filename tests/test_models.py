"""Models: the three built-ins and custom specs, dense and CSR weights, against PyTorch autograd
and finite differences of a float64 numpy reference; the Model contract (params, CSR switch,
compaction, state, batches, dropout seeding).

Every test runs on both kernel forms (``kdev``: PROXCL_TUNING cpu, then gpu)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pyopencl.array as cla
import torch
import torch.nn.functional as F

from helpers import rel_err
from proxcl import models
from proxcl.bench.model import torch_model
from proxcl.ops import HostCSR
from test_layers import fd_grad, np_forward, np_xent

torch.set_default_dtype(torch.float64)
TOL = 1e-4

# convnet-small's layer kinds (conv + padding, ReLU, pooling, dropout) at a size finite
# differences can afford
SMALL_CONVNET = {"input_shape": [3, 10, 10], "num_classes": 10, "layers": [
    {"type": "conv2d", "name": "conv1", "out": 6, "kernel": 3, "padding": 1}, {"type": "relu"},
    {"type": "conv2d", "name": "conv2", "out": 6, "kernel": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel": 2},
    {"type": "conv2d", "name": "conv3", "out": 8, "kernel": 3, "stride": 2, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel": 2, "stride": 1},
    {"type": "flatten"}, {"type": "linear", "name": "fc1", "out": 16}, {"type": "relu"},
    {"type": "dropout", "p": 0.5}, {"type": "linear", "name": "fc2", "out": 10}]}

MODELS = {"lenet300": "lenet300", "lenet5": "lenet5", "convnet-mini": SMALL_CONVNET}


def torch_net(spec, state):
    """A float64 torch.nn.Sequential of a normalised spec, with the given weights."""
    return torch_model(spec, state, dtype=torch.float64)


def torch_loss_grads(spec, state, x, y):
    net = torch_net(spec, state)
    xt = torch.tensor(x, dtype=torch.float64).reshape((x.shape[0],) + tuple(spec["input_shape"]))
    z = net(xt)
    loss = F.cross_entropy(z, torch.tensor(y))
    loss.backward()
    grads = {}
    for m in net:
        if hasattr(m, "proxcl_name"):
            grads[m.proxcl_name + ".weight"] = m.weight.grad.numpy()
            if m.bias is not None:
                grads[m.proxcl_name + ".bias"] = m.bias.grad.numpy()
    return z.detach().numpy(), loss.item(), grads


def make_sparse(model, rng, density):
    """Zero a random (1 - density) of every weight, then store the weights as CSR."""
    state = model.state_dict()
    for p in model.params:
        if p.penalised:
            state[p.name][rng.random(p.shape) >= density] = 0.0
    model.load_state_dict(state)
    model.to_sparse()
    return state


def batch(model, rng, n):
    x = rng.standard_normal((n,) + model.input_shape).astype(np.float32)
    return x, rng.integers(0, model.num_classes, n)


def poison(model):
    model.workspace.poison()
    for p in model.params:
        p.grad.fill(np.float32(np.nan))


# ---- gradients of whole models ----------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("which", list(MODELS))
def test_model_gradients_match_torch_and_finite_differences(kdev, rng, which, sparse):
    model = models.build(MODELS[which], device=kdev, seed=3)
    state = make_sparse(model, rng, 0.4) if sparse else model.state_dict()
    if sparse:
        assert all(p.is_sparse == p.penalised for p in model.params)
    x, y = batch(model, rng, 3)
    poison(model)
    loss, grads = model.loss_and_grads(x, y)
    z_ref, loss_ref, g_ref = torch_loss_grads(model.spec, state, x, y)
    assert abs(loss - loss_ref) < TOL * abs(loss_ref)
    assert rel_err(model.forward(x), z_ref) < TOL
    for name, g in g_ref.items():
        mask = state[name] != 0 if (sparse and name.endswith("weight")) else 1.0
        assert grads[name].shape == g.shape
        assert rel_err(grads[name], g * mask) < TOL, name

    # finite differences of the float64 numpy reference, on sampled coordinates of the support
    s64 = {k: v.astype(np.float64) for k, v in state.items()}
    x64 = x.astype(np.float64)
    f = lambda: np_xent(np_forward(model.spec, s64, x64), y)
    assert abs(f() - loss) < TOL * abs(loss)
    coords = {}
    for p in model.params:
        sup = np.flatnonzero(state[p.name]) if p.penalised else np.arange(p.size)
        coords[p.name] = rng.choice(sup, min(6, sup.size), replace=False)
    fd = fd_grad(f, s64, coords)
    got = np.concatenate([grads[k].reshape(-1)[c] for k, c in coords.items()])
    ref = np.concatenate([fd[k] for k in coords])
    assert rel_err(got, ref) < TOL


def test_real_convnet_small_matches_torch(kdev, rng):
    model = models.build("convnet-small", device=kdev, seed=0)
    assert model.input_shape == (3, 32, 32)
    x, y = batch(model, rng, 2)
    state = model.state_dict()
    poison(model)
    loss, grads = model.loss_and_grads(x, y)
    z_ref, loss_ref, g_ref = torch_loss_grads(model.spec, state, x, y)
    assert rel_err(model.forward(x), z_ref) < TOL
    assert abs(loss - loss_ref) < TOL * abs(loss_ref)
    assert max(rel_err(grads[k], g_ref[k]) for k in g_ref) < TOL
    # CSR at 90 % sparsity: logits still those of torch on the same weights
    state = make_sparse(model, rng, 0.1)
    assert rel_err(model.forward(x), torch_loss_grads(model.spec, state, x, y)[0]) < TOL


@pytest.mark.parametrize("which", list(MODELS))
def test_csr_and_dense_models_agree(kdev, rng, which):
    dense = models.build(MODELS[which], device=kdev, seed=5)
    sparse = models.build(MODELS[which], device=kdev, seed=5)
    state = make_sparse(sparse, rng, 0.25)
    dense.load_state_dict(state)
    assert not any(p.is_sparse for p in dense.params)
    x, y = batch(dense, rng, 4)
    assert rel_err(sparse.forward(x), dense.forward(x)) < 1e-5
    ld, gd = dense.loss_and_grads(x, y)
    ls, gs = sparse.loss_and_grads(x, y)
    assert abs(ld - ls) < 1e-5 * abs(ld)
    for p in sparse.params:
        mask = state[p.name] != 0 if p.penalised else 1.0
        assert rel_err(gs[p.name], gd[p.name] * mask) < 1e-5, p.name


@pytest.mark.parametrize("seed", range(4))
def test_direct_sparse_convolution_matches_torch(kdev, seed):
    """Inference with sparse CSR convolutions runs without im2col, fused with the pooling,
    ReLU and flatten after them: every geometry must still give torch's logits."""
    rng = np.random.default_rng(seed)
    c, h, w = int(rng.integers(1, 4)), int(rng.integers(9, 15)), int(rng.integers(9, 15))
    k, s, p = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
    pk = int(rng.integers(2, 4))
    spec = {"input_shape": [c, h, w], "layers": [
        {"type": "conv2d", "out": 7, "kernel": k, "stride": s, "padding": p}, {"type": "relu"},
        {"type": "maxpool2d", "kernel": pk, "stride": int(rng.integers(1, pk + 1)), "padding": pk // 2},
        {"type": "conv2d", "out": 5, "kernel": [2, 1], "padding": [1, 0], "bias": False},
        {"type": "flatten"}, {"type": "linear", "out": 4}]}
    model = models.build(spec, device=kdev, seed=seed)
    state = make_sparse(model, rng, 0.15)
    convs = [l for l in model.layers if l.kind == "conv2d"]
    assert all(l.direct_ok() for l in convs)
    x, y = batch(model, rng, 3)
    model.workspace.poison()
    z_ref = torch_loss_grads(model.spec, state, x, y)[0]
    assert rel_err(model.forward(x), z_ref) < TOL
    # the training pass (im2col) gives the same logits
    xb = model.prepare_batch(x)
    assert rel_err(model._forward(xb, train=False, keep=True).get().T, z_ref) < TOL


@pytest.mark.parametrize("geo", [(1, 2, 2, 4, 2, 1), (1, 3, 2, 4, 2, 1), (2, 4, 1, 3, 2, 1),
                                 (1, 5, 3, 5, 3, 1), (3, 5, 6, 4, 3, 1)])
def test_direct_sparse_convolution_narrow_inputs(kdev, geo):
    """Kernels wider than the padded input row, with strides >= 2: the taps of the last kernel
    column (kept on purpose, on a row that lands inside the input) fall right of the row for every
    output column and must contribute nothing (C division truncates toward zero)."""
    c, h, w, k, s, p = geo
    rng = np.random.default_rng(sum(geo))
    spec = {"input_shape": [c, h, w], "layers": [
        {"type": "conv2d", "out": 3, "kernel": k, "stride": s, "padding": p},
        {"type": "flatten"}, {"type": "linear", "out": 4}]}
    model = models.build(spec, device=kdev, seed=1)
    state = model.state_dict()
    wgt = state["conv1.weight"]
    keep = rng.random(wgt.shape) < 0.05
    keep[:, 0, p, k - 1] = True          # row ky = p: input row cy * s, inside the image
    state["conv1.weight"] = np.where(keep, wgt, 0).astype(np.float32)
    model.load_state_dict(state)
    model.to_sparse()
    assert model.layers[0].direct_ok()
    x, y = batch(model, rng, 5)
    model.workspace.poison()
    z_ref = torch_loss_grads(model.spec, state, x, y)[0]
    assert rel_err(model.forward(x), z_ref) < TOL


# ---- batches: train, eval, probabilities ------------------------------------------------

def test_train_and_eval_batches(kdev, rng):
    model = models.build("lenet5", device=kdev, seed=1)
    x, y = batch(model, rng, 70)                      # not a multiple of the 64-sample groups
    xb, yb = model.prepare_batch(x, y)
    assert isinstance(xb, cla.Array) and xb.shape == (1, 70, 28, 28) and yb.dtype == np.int32
    z_ref, loss_ref, g_ref = torch_loss_grads(model.spec, model.state_dict(), x, y)
    poison(model)
    loss, correct = model.train_batch(xb, yb)          # no dropout in lenet5: train == eval
    assert abs(loss - loss_ref) < TOL * loss_ref
    assert correct == int(np.sum(z_ref.argmax(1) == y))
    for p in model.params:
        assert rel_err(p.grad_numpy(), g_ref[p.name]) < TOL
        assert p.grad.size == p.data.size
    loss_sum, correct2 = model.eval_batch(xb, yb)
    assert abs(loss_sum / 70 - loss_ref) < TOL * loss_ref and correct2 == correct
    zd = model.forward(xb)
    assert zd.shape == (10, 70) and rel_err(zd.get().T, z_ref) < TOL
    probs = model.predict_proba(x, batch_size=32)
    assert rel_err(probs, torch.softmax(torch.tensor(z_ref), 1).numpy()) < TOL
    assert rel_err(model.forward(x, batch_size=16), z_ref) < TOL


@pytest.mark.parametrize("layout", ["nchw", "flat"])
def test_inputs_in_either_layout(kdev, rng, layout):
    for name in ("lenet300", "convnet-mini"):
        model = models.build(MODELS[name], device=kdev, seed=2)
        x, _ = batch(model, rng, 3)
        ref = np_forward(model.spec, {k: v.astype(np.float64) for k, v in model.state_dict().items()}, x)
        xin = x if layout == "nchw" else x.reshape(3, -1)
        assert rel_err(model.forward(xin), ref) < TOL


def test_bad_batches_are_value_errors(kdev, rng):
    model = models.build("lenet5", device=kdev)
    x, y = batch(model, rng, 4)
    for bad_x in (x[:, :, :20], x[0, 0], x[:, 0, :, :20], np.zeros((0, 1, 28, 28), np.float32), x.astype(str)):
        with pytest.raises(ValueError):
            model.prepare_batch(bad_x)
    for bad_y in (y[:3], y + 10, y - 10, y.astype(np.float32)):
        with pytest.raises(ValueError):
            model.prepare_batch(x, bad_y)
    with pytest.raises(ValueError):
        model.train_batch(model.prepare_batch(x), None)


# ---- dropout in a model ------------------------------------------------------------------

def test_dropout_model_seeding(kdev, rng):
    model = models.build(SMALL_CONVNET, device=kdev, seed=4)
    x, y = batch(model, rng, 8)
    xb, yb = model.prepare_batch(x, y)

    def step(seed):
        model.set_seed(seed)
        loss, _ = model.train_batch(xb, yb)
        return loss, {p.name: p.grad_numpy() for p in model.params}

    l1, g1 = step(11)
    l2, g2 = step(11)
    l3, g3 = step(12)
    assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g1)
    assert l1 != l3
    # evaluation mode ignores dropout: equal to torch in eval mode
    z_ref, loss_ref, _ = torch_loss_grads(model.spec, model.state_dict(), x, y)
    assert abs(model.eval_batch(xb, yb)[0] / 8 - loss_ref) < TOL * loss_ref
    # training mode differs from evaluation (units dropped)
    assert abs(l1 - loss_ref) > 1e-6


# ---- specs -------------------------------------------------------------------------------

def test_builtin_architectures():
    shapes = {n: [(p.name, p.shape) for p in models.build(n).params] for n in ("lenet300", "lenet5")}
    assert shapes["lenet300"] == [("fc1.weight", (300, 784)), ("fc1.bias", (300,)), ("fc2.weight", (100, 300)),
                                  ("fc2.bias", (100,)), ("fc3.weight", (10, 100)), ("fc3.bias", (10,))]
    assert shapes["lenet5"] == [("conv1.weight", (20, 1, 5, 5)), ("conv1.bias", (20,)),
                                ("conv2.weight", (50, 20, 5, 5)), ("conv2.bias", (50,)),
                                ("fc1.weight", (500, 800)), ("fc1.bias", (500,)),
                                ("fc2.weight", (10, 500)), ("fc2.bias", (10,))]
    m = models.build("convnet-small")
    assert m.param("conv1.weight").matrix_shape == (64, 27)
    assert m.param("fc1.weight").shape == (256, 128 * 8 * 8)
    assert m.spec["name"] == "convnet-small" and m.num_classes == 10


def test_spec_forms_and_round_trip(kdev, tmp_path):
    spec = {"input_shape": [2, 9, 9], "layers": [
        {"type": "conv2d", "out": 3, "kernel": [3, 2], "stride": [2, 1]}, {"type": "relu"},
        {"type": "maxpool2d", "kernel": 2}, {"type": "flatten"}, {"type": "linear", "out": 4},
        {"type": "linear", "out": 3, "bias": False}]}
    a = models.build(spec, device=kdev, seed=9)
    assert [p.name for p in a.params] == ["conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias", "fc2.weight"]
    assert a.num_classes == 3 and a.spec["layers"][2]["stride"] == 2
    assert [p.penalised for p in a.params] == [True, False, True, False, True]
    path = tmp_path / "net.json"
    path.write_text(json.dumps(a.spec))
    for form in (a.spec, json.dumps(a.spec), str(path)):
        b = models.build(form, device=kdev, seed=9)
        assert b.spec == a.spec
        sa, sb = a.state_dict(), b.state_dict()
        assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    c = models.build(spec, device=kdev, seed=10)
    assert not np.array_equal(c.state_dict()["fc1.weight"], a.state_dict()["fc1.weight"])
    # PyTorch-default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = models.build("lenet300", device=kdev, seed=0).state_dict()["fc1.weight"]
    assert np.abs(w).max() <= 1 / np.sqrt(784) and np.abs(w).max() > 0.9 / np.sqrt(784)


@pytest.mark.parametrize("bad,match", [
    ("no-such-net", "unknown model"),
    ("{not json", "JSON"),
    ({"input_shape": [4], "layers": [{"type": "softmax"}]}, "type"),
    ({"input_shape": [1, 8, 8], "layers": [{"type": "linear", "out": 3}]}, "flatten"),
    ({"input_shape": [8], "layers": [{"type": "conv2d", "out": 3, "kernel": 3}]}, r"\[C, H, W\]"),
    ({"input_shape": [1, 4, 4], "layers": [{"type": "conv2d", "out": 3, "kernel": 5}]}, "does not fit"),
    ({"input_shape": [4], "num_classes": 3, "layers": [{"type": "linear", "out": 2}]}, "num_classes"),
    ({"input_shape": [4], "layers": [{"type": "linear", "out": 2, "name": "a"},
                                     {"type": "linear", "out": 2, "name": "a"}]}, "unique"),
    ({"input_shape": [4], "layers": [{"type": "linear", "out": 0}]}, "out"),
    ({"input_shape": [4], "layers": [{"type": "dropout", "p": 1.5}, {"type": "linear", "out": 2}]}, "dropout"),
    ({"input_shape": [4], "layers": [{"type": "linear", "out": 2, "size": 3}]}, "unknown fields"),
    ({"input_shape": [1, 4, 4], "layers": [{"type": "conv2d", "out": 2, "kernel": 3}]}, "flat"),
    ({"layers": [{"type": "linear", "out": 2}]}, "input_shape"),
])
def test_bad_specs_are_one_line_value_errors(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        models.normalize_spec(bad)
    assert "\n" not in str(e.value)


# ---- params, CSR switching, compaction, state ---------------------------------------------

def test_param_data_is_the_storage(kdev, rng):
    model = models.build("lenet300", device=kdev, seed=0)
    x, _ = batch(model, rng, 2)
    p = model.param("fc3.weight")
    assert p.data.size == p.size and p.grad.size == p.size and p.matrix_shape == (10, 100)
    p.data.fill(np.float32(0))                         # an in-place update the layer must see
    bias = model.state_dict()["fc3.bias"]
    assert np.allclose(model.forward(x), np.broadcast_to(bias, (2, 10)))
    model = models.build("lenet300", device=kdev, seed=0)
    model.to_sparse("fc3.weight")
    q = model.param("fc3.weight")
    assert q.data is q.value.data and q.grad.size == q.value.nnz
    before = model.forward(x)
    q.data.fill(np.float32(0))
    assert not np.allclose(model.forward(x), before)
    assert np.allclose(model.forward(x), np.broadcast_to(bias, (2, 10)))


def test_to_sparse_src_threshold_and_to_dense(kdev, rng):
    model = models.build("lenet5", device=kdev, seed=0)
    state = model.state_dict()
    w = state["conv2.weight"].reshape(50, -1)
    thr = 0.02
    srcs = model.to_sparse("conv2.weight", threshold=thr)
    assert list(srcs) == ["conv2.weight"]
    p = model.param("conv2.weight")
    keep = np.flatnonzero(np.abs(w) > thr)
    assert p.is_sparse and p.value.nnz == keep.size and p.grad.size == keep.size
    assert np.array_equal(srcs["conv2.weight"].get(), keep)
    assert np.array_equal(p.data.get(), w.reshape(-1)[keep])
    assert model.to_sparse("conv2.weight") == {}                       # already CSR
    with pytest.raises(ValueError, match="bias"):
        model.to_sparse("conv2.bias")
    with pytest.raises(ValueError, match="no parameter"):
        model.to_sparse("conv9.weight")
    rest = model.to_sparse()
    assert set(rest) == {"conv1.weight", "fc1.weight", "fc2.weight"}
    assert not model.param("fc1.bias").is_sparse
    pos = model.to_dense("conv2.weight")
    assert np.array_equal(pos["conv2.weight"].get(), keep)
    assert not model.param("conv2.weight").is_sparse
    assert np.array_equal(model.state_dict()["conv2.weight"].reshape(50, -1),
                          np.where(np.abs(w) > thr, w, 0))


def test_compact_drops_exact_zeros(kdev, rng):
    model = models.build("lenet300", device=kdev, seed=0)
    model.to_sparse()
    x, y = batch(model, rng, 3)
    p = model.param("fc2.weight")
    vals = p.data.get()
    vals[rng.random(vals.size) < 0.3] = 0.0
    p.data.set(vals)
    before = model.forward(x)
    srcs = model.compact()
    assert list(srcs) == ["fc2.weight"]
    assert np.array_equal(srcs["fc2.weight"].get(), np.flatnonzero(vals))
    assert p.value.nnz == np.count_nonzero(vals) and p.grad.size == p.value.nnz
    # The same logits up to rounding: the rows only lose 0 * x terms and SpMM adds a row's entries
    # in order, but OpenCL promises no rounding for a sum over other terms (Intel's compiler
    # reordered an earlier form of the row loop, docs/PORTABILITY.md), so not bit for bit.
    assert rel_err(model.forward(x), before) < 1e-6
    assert model.compact() == {}
    _, g = model.loss_and_grads(x, y)
    assert np.all(g["fc2.weight"][model.state_dict()["fc2.weight"] == 0] == 0)


def test_state_dict_round_trips(kdev, rng):
    a = models.build("lenet5", device=kdev, seed=1)
    b = models.build("lenet5", device=kdev, seed=2)
    state = make_sparse(a, rng, 0.2)
    got = a.state_dict()
    assert all(np.array_equal(got[k], state[k]) and got[k].dtype == np.float32 for k in state)
    b.to_sparse("fc1.weight")
    b.load_state_dict(got)                                          # fc1 stays CSR, support = nonzeros
    assert b.param("fc1.weight").is_sparse and not b.param("conv1.weight").is_sparse
    assert b.param("fc1.weight").value.nnz == np.count_nonzero(state["fc1.weight"])
    x, _ = batch(a, rng, 2)
    assert rel_err(b.forward(x), a.forward(x)) < 1e-5
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({k: v for k, v in got.items() if k != "fc2.bias"})
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict({**got, "fc2.bias": np.zeros(11, np.float32)})
    with pytest.raises(ValueError, match="finite"):
        b.load_state_dict({**got, "fc2.bias": np.full(10, np.nan, np.float32)})


def test_sparse_state_round_trips_and_switches_kinds(kdev, rng):
    a = models.build("lenet300", device=kdev, seed=1)
    make_sparse(a, rng, 0.3)
    a.to_dense("fc3.weight")
    st = a.sparse_state()
    assert isinstance(st["fc1.weight"], HostCSR) and st["fc1.weight"].shape == (300, 784)
    assert isinstance(st["fc3.weight"], np.ndarray) and st["fc3.weight"].shape == (10, 100)
    assert isinstance(st["fc1.bias"], np.ndarray)
    b = models.build("lenet300", device=kdev, seed=2)
    b.to_sparse("fc3.weight")
    b.load_sparse_state(st)
    assert [p.is_sparse for p in b.params] == [p.is_sparse for p in a.params]
    x, y = batch(a, rng, 3)
    assert np.array_equal(b.forward(x), a.forward(x))
    assert all(np.array_equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())
    bad = dict(st)
    h = st["fc1.weight"]
    bad["fc1.weight"] = HostCSR(h.indptr, h.indices, h.data, (300, 785))
    with pytest.raises(ValueError, match="CSR shape"):
        b.load_sparse_state(bad)
    bad["fc1.weight"] = HostCSR(h.indptr, h.indices[::-1].copy(), h.data, h.shape)
    with pytest.raises(ValueError, match="column indices not strictly increasing"):
        b.load_sparse_state(bad)
    bad["fc1.weight"] = h
    bad["fc1.bias"] = HostCSR(np.array([0, 0]), np.zeros(0, np.int32), np.zeros(0, np.float32), (1, 300))
    with pytest.raises(ValueError, match="bias"):
        b.load_sparse_state(bad)


def test_weight_stats(kdev, rng):
    model = models.build("lenet300", device=kdev, seed=0)
    make_sparse(model, rng, 0.1)
    stats = {s["name"]: s for s in model.weight_stats()}
    s = stats["fc1.weight"]
    assert s["kind"] == "csr" and s["shape"] == [300, 784] and s["size"] == 300 * 784 and s["penalised"]
    assert s["nnz"] == np.count_nonzero(model.state_dict()["fc1.weight"])
    assert abs(s["density"] - 0.1) < 0.01
    b = stats["fc1.bias"]
    assert b["kind"] == "dense" and not b["penalised"] and b["nnz"] == 300
    json.dumps(model.weight_stats())


def test_load_sparse_state_refuses_non_numeric_csr(kdev):
    model = models.build("lenet300", device=kdev)
    state = model.sparse_state()
    good = HostCSR(np.array([0, 1] + [1] * 99, np.int32), np.array([0], np.int32),
                   np.array([1.0], np.float32), (100, 300))
    for bad in (good._replace(data=np.array(["x"])), good._replace(indices=np.array([0.5]))):
        with pytest.raises(ValueError, match="fc2.weight: CSR arrays must be"):
            model.load_sparse_state({**state, "fc2.weight": bad})
    model.load_sparse_state({**state, "fc2.weight": good})
    assert model.param("fc2.weight").is_sparse and model.param("fc2.weight").value.nnz == 1
