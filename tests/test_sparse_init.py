"""Sparse initialisation (proxcl.sparse_init) and regrowth (proxcl.regrowth): the per-layer
densities, random supports, models that never hold their dense weights, and new entries chosen
at random or by the dense gradient (against PyTorch autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import proxcl
from proxcl.models import build, normalize_spec
from proxcl.optim import make_optimizer
from proxcl.regrowth import gradient_positions, merge_support, random_positions, regrow
from proxcl.sparse_init import layer_densities, random_support
from proxcl.spec import weight_shapes


@pytest.mark.parametrize("name,density", [("lenet5", 0.05), ("lenet300", 0.02), ("lenet5", 0.6),
                                          ("convnet-small", 0.1)])
def test_layer_densities_are_erdos_renyi_kernel_and_add_up(name, density):
    shapes = weight_shapes(normalize_spec(name))
    d = layer_densities(shapes, density)
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    assert sum(d[n] * sizes[n] for n in d) == pytest.approx(density * sum(sizes.values()))
    assert all(0 < v <= 1 for v in d.values())
    # below the cap, the density is proportional to sum(dims) / prod(dims)
    ratios = {n: d[n] / (sum(shapes[n]) / sizes[n]) for n in d if d[n] < 1}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()))
    # a layer at 1 would have had more than 1
    eps = next(iter(ratios.values()))
    assert all(eps * sum(shapes[n]) / sizes[n] >= 1 for n in d if d[n] == 1)


def test_layer_densities_reject_bad_density():
    with pytest.raises(ValueError, match="init density"):
        layer_densities({"w": (3, 4)}, 0.0)


@pytest.mark.parametrize("m,k,nnz", [(7, 9, 20), (500, 800, 15225), (4, 5, 20), (6, 3, 0), (1, 70_000, 5)])
def test_random_support_is_exact_and_canonical(m, k, nnz):
    rng = np.random.default_rng(3)
    indptr, indices = random_support(rng, (m, k), nnz)
    assert indptr.dtype == indices.dtype == np.int32 and indptr[-1] == nnz == indices.size
    a = sp.csr_matrix((np.ones(nnz), indices, indptr), shape=(m, k))
    assert a.has_canonical_format and a.nnz == nnz


def test_random_support_is_uniform():
    """Every position equally likely: counts over many draws of a 6 x 5 support of 6 entries
    (expected 200 each) stay within a loose chi-square bound."""
    rng = np.random.default_rng(5)
    counts = np.zeros(30)
    for _ in range(1000):
        indptr, indices = random_support(rng, (6, 5), 6)
        counts[np.repeat(np.arange(6), np.diff(indptr)) * 5 + indices] += 1
    chi2 = float(((counts - 200) ** 2 / 200).sum())
    assert chi2 < 70, chi2      # 29 degrees of freedom: p < 1e-4 above 70


def test_sparse_init_model_never_holds_its_dense_weights(dev):
    """lenet5 at 5 %: the large layers are CSR at their densities from the start, the small
    dense-ish ones dense (above the switch density); the device never held fc1's dense weight,
    and the values are scaled to the mean fan-in."""
    d = proxcl.Device(dev.spec)
    model = build("lenet5", device=d, seed=1, init_density=0.05, switch_density=0.5)
    dens = layer_densities(weight_shapes(model.spec), 0.05)
    nnz = 0
    for p in model.params:
        if not p.penalised:
            continue
        want = max(1, round(dens[p.name] * p.size))
        assert p.is_sparse == (dens[p.name] <= 0.5)
        assert p.nnz == want
        nnz += want
        v = p.data.get()
        bound = 1 / np.sqrt(want / p.matrix_shape[0])
        assert np.abs(v).max() <= bound and np.abs(v[v != 0]).max() > 0.9 * bound
    assert nnz == pytest.approx(0.05 * 430_500, abs=4)
    assert d.memory.peak()["weights"] < 500 * 800 * 4 / 10
    assert d.memory.live()["gradients"] == 0     # made at the first backward pass


def test_merge_support_against_scipy():
    rng = np.random.default_rng(2)
    a = sp.random(9, 11, density=0.3, format="csr", random_state=rng)
    free = np.flatnonzero(a.toarray().reshape(-1) == 0)
    new = np.sort(rng.choice(free, 7, replace=False))
    indptr, indices, src = merge_support(a.indptr.astype(np.int32), a.indices.astype(np.int32), new, a.shape)
    want = a.toarray().reshape(-1) != 0
    want[new] = True
    got = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=a.shape)
    assert got.has_canonical_format and np.array_equal(got.toarray().reshape(-1) != 0, want)
    pos = np.repeat(np.arange(9), np.diff(indptr)) * 11 + indices
    old = np.repeat(np.arange(9), np.diff(a.indptr)) * 11 + a.indices
    assert np.array_equal(np.where(src >= 0, old[np.maximum(src, 0)], -1), np.where(np.isin(pos, new), -1, pos))
    with pytest.raises(ValueError, match="already in the support"):
        merge_support(a.indptr, a.indices, old[:1], a.shape)


def test_random_positions_are_new_and_exact():
    rng = np.random.default_rng(4)
    a = sp.random(20, 30, density=0.9, format="csr", random_state=rng)
    pos = random_positions(rng, a.indptr, a.indices, a.shape, 40)
    assert pos.size == 40 == np.unique(pos).size
    assert not a.toarray().reshape(-1)[pos].any()
    full = random_positions(rng, a.indptr, a.indices, a.shape, 10_000)   # capped at what is free
    assert full.size == 600 - a.nnz


@pytest.mark.parametrize("layer_name", ["conv2", "fc1"])
def test_gradient_positions_are_the_largest_missing_gradients(dev, rng, layer_name):
    """Against PyTorch autograd of the same network: the chosen positions are the missing
    connections with the largest dense-gradient magnitude, computed a few rows at a time."""
    d = proxcl.Device(dev.spec)
    model = build("lenet5", device=d, seed=2, init_density=0.05, switch_density=1.0)
    x = rng.standard_normal((6, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    model.train_batch(*model.prepare_batch(x, y))
    p = model.param(f"{layer_name}.weight")
    layer = next(l for l in model.layers if getattr(l, "name", "") == layer_name)
    indptr, indices, _ = p.value.to_arrays()
    m, k = p.matrix_shape

    from proxcl.bench.model import torch_model
    net = torch_model(model.spec, model.state_dict(), dtype=torch.float64).train()
    loss = F.cross_entropy(net(torch.tensor(x, dtype=torch.float64)), torch.tensor(y), reduction="mean")
    loss.backward()
    grad = next(mod for mod in net if getattr(mod, "proxcl_name", "") == layer_name).weight.grad
    mag = np.abs(grad.numpy().reshape(-1))
    support = np.repeat(np.arange(m), np.diff(indptr)) * k + indices
    mag[support] = -1
    count = 25
    got = gradient_positions(layer, indptr, indices, (m, k), count, block_floats=3 * k)
    want = np.sort(np.argsort(-mag, kind="stable")[:count])
    # float32 against float64: positions may differ only where magnitudes are within rounding
    assert np.isin(got, support).sum() == 0 and got.size == count
    assert mag[got].min() >= mag[want].min() * (1 - 1e-4)


@pytest.mark.parametrize("kind", ["random", "gradient"])
def test_regrow_adds_zero_entries_and_zero_state(dev, rng, kind):
    d = proxcl.Device(dev.spec)
    model = build("lenet300", device=d, seed=3, init_density=0.05, switch_density=1.0)
    opt = make_optimizer("prox-adam", lr=1e-3, l1=1e-5, device=d)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    model.train_batch(*model.prepare_batch(x, y))
    opt.step(model.params)
    model.train_batch(*model.prepare_batch(x, y))
    before = {p.name: (p.to_numpy(), {s: a.get() for s, a in opt.state(p.name).items()},
                       p.value.to_scipy()) for p in model.params if p.is_sparse}
    added = regrow(model, opt, kind, 0.1, np.random.default_rng(0))
    for name, (values, state, old) in before.items():
        p = model.param(name)
        new = p.value.to_scipy()
        want = min(max(1, round(0.1 * old.nnz)), p.size - old.nnz)      # fc3 is nearly full
        assert added[name] == new.nnz - old.nnz == want
        assert np.array_equal(p.to_numpy(), values)                      # new entries are zeros
        old_pos, new_pos = (set(np.repeat(np.arange(a.shape[0]), np.diff(a.indptr)) * a.shape[1] + a.indices)
                            for a in (old, new))
        assert old_pos < new_pos                                          # the support only grew
        for s, arr in opt.state(name).items():      # the state follows; new entries start at zero
            full = sp.csr_matrix((arr.get(), new.indices, new.indptr), shape=new.shape).toarray()
            ref = sp.csr_matrix((state[s], old.indices, old.indptr), shape=old.shape).toarray()
            assert np.array_equal(full, ref)
        assert p.grad.size == new.nnz
    opt.step(model.params)      # and training goes on
