"""Optimizer kernels against float64 numpy references written from DESIGN.md section 1.

Two checks per update: a lock-step one (the reference makes one step from the device's own
float32 values and state, so the exact zeros can be compared with a tolerance of float32
rounding), and a free-running one over several steps (rel err < 1e-5; RDA in closed form from
the mean of all gradients so far)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from helpers import rel_err
from proxcl import CSRMatrix
from proxcl.optim import OPTIMIZERS, make_optimizer

KINDS = list(OPTIMIZERS)
HYPER = {
    "prox-sgd": dict(lr=0.05, l1=2.0, momentum=0.9),
    "prox-adam": dict(lr=0.05, l1=1.0, betas=(0.8, 0.99), eps=1e-6),
    "rda": dict(l1=0.5, gamma=8.0),
    "sgd": dict(lr=0.05, momentum=0.7),
    "adam": dict(lr=0.05, betas=(0.9, 0.999), eps=1e-8),
}
PENALISED = ("prox-sgd", "prox-adam", "rda")
F32 = np.finfo(np.float32).eps


class Param:
    """Stand-in for a layer parameter (the optimizer's duck-typed contract)."""

    def __init__(self, dev, name, values, penalised=True):
        self.name = name
        self.data = dev.to_device(np.asarray(values, np.float32))
        self.grad = dev.zeros(self.data.shape, np.float32)
        self.penalised = penalised

    def set_grad(self, dev, g):
        self.grad = dev.to_device(np.asarray(g, np.float32))


def shrink(z, tau):
    return np.sign(z) * np.maximum(np.abs(z) - tau, 0.0)


def ref_step(kind, w, g, st, t, lr, lam, h, rw=None):
    """One float64 update of values w with gradient g and state st (dict of arrays) at step t
    (1-based).  Returns (w', st', z, tau) with w' = S_tau(z).  ``rw = (c, eps)``: reweighted l1,
    every threshold times c / (|w| + eps c)."""
    st = dict(st)
    if kind in ("prox-sgd", "sgd"):
        v = h["momentum"] * st.get("momentum", 0.0) + g
        if h["momentum"]:
            st["momentum"] = v
        z, tau = w - lr * v, lr * lam * np.ones_like(w)
    elif kind in ("prox-adam", "adam"):
        b1, b2 = h["betas"]
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        d = np.sqrt(st["v"] / (1 - b2 ** t)) + h["eps"]
        z, tau = w - lr * (st["m"] / (1 - b1 ** t)) / d, lr * lam / d
    else:  # rda, as a recurrence on the mean gradient
        st["gbar"] = (t - 1) / t * st["gbar"] + g / t
        s = np.sqrt(t) / h["gamma"]
        z, tau = st["w0"] - s * st["gbar"], lam * s * np.ones_like(w)
    if rw is not None:
        c, eps = rw
        tau = tau * c / (np.abs(w) + eps * c)
    return shrink(z, tau), st, z, tau


def rda_closed_form(w0, grads, lam, gamma):
    """w_{t+1} = S_{lam sqrt(t)/gamma}(w0 - (sqrt(t)/gamma) mean(g_1..g_t))."""
    t = len(grads)
    s = np.sqrt(t) / gamma
    return shrink(w0 - s * np.mean(grads, axis=0), lam * s)


def initial_state(kind, w, h):
    if kind in ("prox-sgd", "sgd"):
        return {"momentum": np.zeros_like(w)} if h["momentum"] else {}
    if kind in ("prox-adam", "adam"):
        return {"m": np.zeros_like(w), "v": np.zeros_like(w)}
    return {"gbar": np.zeros_like(w), "w0": w.copy()}


def hyper_of(kind):
    h = {"momentum": 0.9, "betas": (0.9, 0.999), "eps": 1e-8, "gamma": 1.0}
    h.update(HYPER[kind])
    return h


def check_lockstep(kind, w_before, g, st_before, t, lr, lam, h, w_after, what, rw=None):
    """The device's step from (w_before, st_before) against the float64 one, zeros included."""
    w_ref, _, z, tau = ref_step(kind, w_before, g, st_before, t, lr, lam, h, rw)
    assert rel_err(w_after, w_ref) < 1e-5, what
    # |z| within float32 rounding of tau may land either side; elsewhere the zeros must agree
    step = np.abs(z - w_before) if kind != "rda" else np.abs(z - st_before["w0"])
    base = st_before["w0"] if kind == "rda" else w_before
    tol = 16 * F32 * (np.abs(base) + step + tau) + 1e-30
    clear_zero = np.abs(z) < tau - tol
    clear_nonzero = np.abs(z) > tau + tol
    assert np.all(w_after[clear_zero] == 0.0), f"{what}: a value that must be an exact zero is not"
    assert np.all(w_after[clear_nonzero] != 0.0), f"{what}: a value became zero that must not"
    return int(clear_zero.sum())


def device_state(opt, name):
    return {k: a.get().astype(np.float64) for k, a in opt.state(name).items()}


def make_params(dev, rng):
    return [Param(dev, "fc1.weight", rng.standard_normal(777)),
            Param(dev, "fc1.bias", rng.standard_normal(50), penalised=False),
            Param(dev, "fc2.weight", rng.standard_normal(129)),
            Param(dev, "fc3.weight", rng.standard_normal(1))]


FACTORS = {"fc2": 2.5, "fc3.weight": 0.0}
FACTOR_OF = {"fc1.weight": 1.0, "fc1.bias": 0.0, "fc2.weight": 2.5, "fc3.weight": 0.0}


@pytest.mark.parametrize("kind", KINDS)
def test_optimizer_matches_reference(dev, rng, kind):
    h = hyper_of(kind)
    pen = kind in PENALISED
    opt = make_optimizer(kind, device=dev, l1_factors=FACTORS if pen else None, **HYPER[kind])
    params = make_params(dev, rng)
    ref_w = {p.name: p.data.get().astype(np.float64) for p in params}
    ref_st = {n: initial_state(kind, w, h) for n, w in ref_w.items()}
    grads = {n: [] for n in ref_w}
    zeros = 0
    for k in range(6):
        t = k + 1
        lr = h.get("lr", 1.0) * (1 - 0.1 * k)          # schedules change lr and l1 every step
        l1 = h.get("l1", 0.0) * min(1.0, (k + 1) / 3)
        before = {}
        for p in params:
            g = rng.standard_normal(p.data.size)
            p.set_grad(dev, g)
            grads[p.name].append(p.grad.get().astype(np.float64))
            before[p.name] = (p.data.get().astype(np.float64), device_state(opt, p.name)
                              if k else initial_state(kind, p.data.get().astype(np.float64), h))
        opt.step(params, lr=lr if kind != "rda" else None, l1=l1 if pen else None)
        assert opt.l1 == pytest.approx(l1)
        for p in params:
            lam = l1 * FACTOR_OF[p.name]
            g = grads[p.name][-1]
            w_dev = p.data.get()
            w0, st0 = before[p.name]
            zeros += check_lockstep(kind, w0, g, st0, t, lr, lam, h, w_dev, f"{p.name} step {t}")
            if kind == "rda":
                ref_w[p.name] = rda_closed_form(ref_st[p.name]["w0"], grads[p.name], lam, h["gamma"])
            else:
                ref_w[p.name], ref_st[p.name], _, _ = ref_step(kind, ref_w[p.name], g, ref_st[p.name],
                                                               t, lr, lam, h)
            assert rel_err(w_dev, ref_w[p.name]) < 1e-5, f"{p.name} after {t} steps"
            assert opt.steps(p.name) == t
    if pen:
        assert zeros > 100, "the test should exercise the threshold"
        for name in ("fc1.bias", "fc3.weight"):   # unpenalised: factor 0 or a bias
            assert np.all(next(p for p in params if p.name == name).data.get() != 0)
    else:
        assert zeros == 0


@pytest.mark.parametrize("vec", [2, 4, 8])
@pytest.mark.parametrize("kind", ["prox-sgd", "prox-adam", "rda"])
def test_every_vector_width_and_tail(dev, rng, monkeypatch, kind, vec):
    """Work-items do VEC values with vector loads and the last one the tail: sizes around
    multiples of VEC, each against the lock-step reference."""
    monkeypatch.setitem(dev.__dict__, "tuning", dataclasses.replace(dev.tuning, vec=vec))
    h = hyper_of(kind)
    opt = make_optimizer(kind, device=dev, **HYPER[kind])
    params = [Param(dev, f"w{i}", rng.standard_normal(n))
              for i, n in enumerate((1, vec, 3 * vec + 1, 64 * vec - 1))]
    for t in (1, 2, 3):
        before = {}
        for p in params:
            w = p.data.get().astype(np.float64)
            before[p.name] = (w, device_state(opt, p.name) if t > 1 else initial_state(kind, w, h))
            p.set_grad(dev, rng.standard_normal(p.data.size))
        opt.step(params)
        for p in params:
            w, st = before[p.name]
            check_lockstep(kind, w, p.grad.get().astype(np.float64), st, t, h.get("lr", 1.0), h["l1"],
                           h, p.data.get(), f"{p.name} vec {vec} step {t}")


@pytest.mark.parametrize("vec", [2, 8])
@pytest.mark.parametrize("kind", ["prox-sgd", "prox-adam", "rda"])
def test_reweighted_l1_matches_reference(dev, rng, monkeypatch, kind, vec):
    """Reweighted l1: every threshold scaled by c / (|w| + eps c), c the parameter's mean nonzero
    magnitude when first seen and after refresh_reweighting; against the float64 step, zeros
    included, over vector bodies and tails, with lambda factors."""
    monkeypatch.setitem(dev.__dict__, "tuning", dataclasses.replace(dev.tuning, vec=vec))
    h = hyper_of(kind)
    eps = 0.05
    opt = make_optimizer(kind, device=dev, reweight_eps=eps, l1_factors={"b": 0.5}, **HYPER[kind])
    w_init = rng.standard_normal(8 * vec + 3)
    w_init[::7] = 0.0                                  # zeros do not count in c
    params = [Param(dev, "a", w_init), Param(dev, "b", rng.standard_normal(vec + 1) * 0.3),
              Param(dev, "bias", rng.standard_normal(5), penalised=False)]
    zeros = 0
    for t in (1, 2, 3, 4):
        if t == 3:
            opt.refresh_reweighting(params)
        before = {}
        for p in params:
            w = p.data.get().astype(np.float64)
            before[p.name] = (w, device_state(opt, p.name) if t > 1 else initial_state(kind, w, h))
            p.set_grad(dev, rng.standard_normal(p.data.size) * 0.2)
        if t in (1, 3):
            nonzero = {p.name: np.abs(before[p.name][0][before[p.name][0] != 0]) for p in params[:2]}
            expect = {n: a.mean() if a.size else 1.0 for n, a in nonzero.items()}
        opt.step(params)
        for p, factor in zip(params, (1.0, 0.5, 0.0)):
            w, st = before[p.name]
            rw = None
            if p.penalised:
                assert opt.reweight_scale(p.name) == pytest.approx(expect[p.name], rel=1e-6)
                rw = (opt.reweight_scale(p.name), eps)
            zeros += check_lockstep(kind, w, p.grad.get().astype(np.float64), st, t, h.get("lr", 1.0),
                                    h["l1"] * factor, h, p.data.get(), f"{p.name} vec {vec} step {t}", rw)
        assert np.all(params[2].data.get() != 0), "a bias is never penalised"
    assert zeros > 10, "the test should exercise the threshold"
    # the state dict carries eps and c; a fresh optimizer continues bit for bit
    again = make_optimizer(kind, device=dev, **HYPER[kind])
    again.load_state_dict(opt.state_dict())
    assert again.reweight_eps == eps and again.reweight_scale("a") == opt.reweight_scale("a")


def test_reweighting_needs_a_penalty(dev):
    with pytest.raises(ValueError, match="no l1 term"):
        make_optimizer("sgd", lr=0.1, reweight_eps=0.1, device=dev)
    with pytest.raises(ValueError, match="eps"):
        make_optimizer("prox-sgd", lr=0.1, reweight_eps=-1.0, device=dev)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_gradient_is_not_hidden_by_the_threshold(dev, rng, kind):
    """A NaN must reach the values (so training can stop), never turn into a clean zero."""
    g = rng.standard_normal(37)
    g[[0, 20, 36]] = np.nan
    p = Param(dev, "w", rng.standard_normal(37) * 1e-3)   # |z| would be under tau for most values
    p.set_grad(dev, g)
    make_optimizer(kind, device=dev, **HYPER[kind]).step([p])
    out = p.data.get()
    assert np.all(np.isnan(out[[0, 20, 36]]))
    assert np.all(np.isfinite(np.delete(out, [0, 20, 36])))


def test_prox_adam_threshold_is_per_coordinate(dev, rng):
    """First step from w = lr sign(g) + c: z = c for every coordinate and tau = lr lam / |g|,
    so the values with |g| < lr lam / c become zero, the others c - tau.  No single threshold
    can do that."""
    lr, lam, c = 0.1, 0.1, 0.01
    mag = np.exp(rng.uniform(np.log(0.1), np.log(10.0), 3000))
    mag = mag[np.abs(mag - 1.0) > 0.05]                          # away from the tie at |g| = 1
    g = (mag * rng.choice([-1.0, 1.0], mag.size)).astype(np.float32)
    w = (lr * np.sign(g) + c).astype(np.float32)
    p = Param(dev, "w", w)
    p.set_grad(dev, g)
    make_optimizer("prox-adam", lr=lr, l1=lam, eps=1e-8, device=dev).step([p])
    out = p.data.get()
    small = np.abs(g) < 1.0
    assert small.any() and (~small).any()
    assert np.all(out[small] == 0.0)
    gg = g.astype(np.float64)
    d = np.abs(gg) + 1e-8
    z = w.astype(np.float64) - lr * gg / d
    ref = shrink(z, lr * lam / d)
    assert np.all(ref[small] == 0) and np.all(ref[~small] > 0)
    assert rel_err(out[~small], ref[~small]) < 1e-5


def test_prox_sgd_without_momentum_keeps_no_state(dev, rng):
    w = rng.standard_normal(500)
    p = Param(dev, "w", w)
    opt = make_optimizer("prox-sgd", lr=0.1, l1=1.0, momentum=0.0, device=dev)
    ref = p.data.get().astype(np.float64)
    for _ in range(3):
        p.set_grad(dev, rng.standard_normal(500))
        opt.step([p])
        ref = shrink(ref - 0.1 * p.grad.get().astype(np.float64), 0.1)
        assert rel_err(p.data.get(), ref) < 1e-5
    assert opt.state("w") == {} and (p.data.get() == 0).sum() > 20


def test_rda_ignores_lr_and_is_anchored_at_the_first_values(dev, rng):
    w = rng.standard_normal(300).astype(np.float32)
    gs = [rng.standard_normal(300).astype(np.float32) for _ in range(4)]
    outs = []
    for lr in (1e-3, 10.0):
        p = Param(dev, "w", w)
        opt = make_optimizer("rda", lr=lr, l1=0.2, gamma=5.0, device=dev)
        for g in gs:
            p.set_grad(dev, g)
            opt.step([p], lr=lr * 3)
        outs.append(p.data.get())
    assert np.array_equal(outs[0], outs[1])
    ref = rda_closed_form(w.astype(np.float64), [g.astype(np.float64) for g in gs], 0.2, 5.0)
    assert rel_err(outs[0], ref) < 1e-5
    assert (outs[0] == 0).sum() > 10


@pytest.mark.parametrize("kind", KINDS)
def test_remap_keeps_state_aligned(dev, rng, kind):
    """A dense weight turns CSR mid-training: its state is gathered with the positions that
    from_dense gives, and later steps on the CSR values match a reference that gathers its
    own state the same way (then a compaction drops more values)."""
    h = hyper_of(kind)
    pen = kind in PENALISED
    shape = (23, 37)
    opt = make_optimizer(kind, device=dev, **HYPER[kind])
    p = Param(dev, "fc1.weight", rng.standard_normal(shape[0] * shape[1]))
    w = p.data.get().astype(np.float64)
    st = initial_state(kind, w, h)
    lr, lam = h.get("lr", 1.0), h.get("l1", 0.0)
    grads = []

    def steps(n_steps):
        nonlocal w, st
        for _ in range(n_steps):
            p.set_grad(dev, rng.standard_normal(p.data.size))
            g = p.grad.get().astype(np.float64)
            grads.append(g)
            opt.step([p])
            t = opt.steps(p.name)
            if kind == "rda":
                w = rda_closed_form(st["w0"], grads, lam, h["gamma"])
                st["gbar"] = np.mean(grads, axis=0)
            else:
                w, st, _, _ = ref_step(kind, w, g, st, t, lr, lam, h)
            assert rel_err(p.data.get(), w) < 1e-5

    def remap(src_dev, new_values):
        nonlocal w, st, grads
        src = src_dev.get()
        p.data = new_values
        opt.remap(p.name, src_dev)
        w = w[src]
        st = {k: v[src] for k, v in st.items()}
        grads = [g[src] for g in grads]
        assert opt.steps(p.name) == 3 * len(done)
        assert rel_err(p.data.get(), w) < 1e-5

    done = [1]
    steps(3)
    # dense -> CSR: keep the nonzero values (for the plain optimizers: the larger half)
    thr = 0.0 if pen else float(np.median(np.abs(p.data.get())))
    csr, src = CSRMatrix.from_dense(p.data.reshape(shape), device=dev, threshold=thr, return_src=True)
    assert 0 < csr.nnz < p.data.size
    remap(src, csr.data)
    done.append(1)
    steps(3)
    # compaction of a CSR weight: zero some more values by hand, drop them
    vals = csr.data.get()
    vals[rng.random(vals.size) < 0.3] = 0.0
    csr.data.set(vals)
    w = np.where(vals == 0, 0.0, w)
    csr2, _, src2 = csr.compact(return_src=True)
    assert csr2.nnz < csr.nnz
    remap(src2, csr2.data)
    done.append(1)
    steps(3)
    for k, a in opt.state(p.name).items():
        if k != "w0":   # w0 is the anchor; the other states were updated after the gathers
            assert rel_err(a.get(), st[k]) < 1e-5, k
    if kind == "rda":
        assert rel_err(opt.state(p.name)["w0"].get(), st["w0"]) == 0.0


def test_changed_size_without_remap_is_an_error(dev, rng):
    opt = make_optimizer("prox-adam", lr=0.01, l1=0.1, device=dev)
    p = Param(dev, "w", rng.standard_normal(40))
    p.set_grad(dev, rng.standard_normal(40))
    opt.step([p])
    q = Param(dev, "w", rng.standard_normal(30))
    q.set_grad(dev, rng.standard_normal(30))
    with pytest.raises(ValueError, match="remap"):
        opt.step([q])
    with pytest.raises(ValueError, match="outside"):
        opt.remap("w", dev.to_device(np.array([0, 40], np.int32), np.int32))
    with pytest.raises(ValueError, match="int32"):
        opt.remap("w", dev.to_device(np.array([0, 1], np.float32)))
    opt.remap("never-seen", dev.to_device(np.array([0], np.int32), np.int32))  # nothing to move


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_continues_bit_identically(dev, rng, kind):
    pen = kind in PENALISED
    opt = make_optimizer(kind, device=dev, l1_factors={"fc2": 3.0} if pen else None, **HYPER[kind])
    params = make_params(dev, rng)
    gs = [[rng.standard_normal(p.data.size) for p in params] for _ in range(6)]

    def run(o, ps, rounds):
        for r in rounds:
            for p, g in zip(ps, gs[r]):
                p.set_grad(dev, g)
            o.step(ps, lr=None if kind == "rda" else 0.01 * (r + 1), l1=1e-3 * r if pen else None)

    run(opt, params, range(3))
    sd = opt.state_dict()
    for v in sd.values():
        assert isinstance(v, (int, float, np.ndarray))
    saved = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in sd.items()}
    copies = [Param(dev, p.name, p.data.get(), p.penalised) for p in params]
    # a fresh optimizer built with other hyper-parameters takes all of them from the state
    other = dict(HYPER[kind], **{"prox-sgd": dict(lr=123.0, momentum=0.0), "sgd": dict(lr=5.0, momentum=0.0),
                                 "prox-adam": dict(betas=(0.5, 0.5)), "adam": dict(eps=1.0),
                                 "rda": dict(gamma=2.0)}[kind])
    fresh = make_optimizer(kind, device=dev, **other)
    fresh.load_state_dict(saved)
    assert fresh.state_dict().keys() == sd.keys()
    run(opt, params, range(3, 6))
    run(fresh, copies, range(3, 6))
    for a, b in zip(params, copies):
        assert np.array_equal(a.data.get(), b.data.get())
        for k, s in opt.state(a.name).items():
            assert np.array_equal(s.get(), fresh.state(b.name)[k].get())
        assert opt.steps(a.name) == fresh.steps(b.name) == 6


def test_load_state_dict_rejects_mismatches(dev, rng):
    adam = make_optimizer("prox-adam", lr=0.01, l1=0.1, device=dev)
    p = Param(dev, "w", rng.standard_normal(10))
    p.set_grad(dev, rng.standard_normal(10))
    adam.step([p])
    sd = adam.state_dict()
    with pytest.raises(ValueError, match="prox-adam, not prox-sgd"):
        make_optimizer("prox-sgd", lr=0.1, device=dev).load_state_dict(sd)
    bad = dict(sd, **{"state/w/m": np.zeros(9, np.float32)})
    with pytest.raises(ValueError, match="expected float32"):
        make_optimizer("prox-adam", lr=0.1, device=dev).load_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected key"):
        make_optimizer("prox-adam", lr=0.1, device=dev).load_state_dict(dict(sd, junk=1))
    with pytest.raises(ValueError, match="learning rate"):
        make_optimizer("prox-adam", lr=0.1, device=dev).load_state_dict(dict(sd, lr=-1.0))


def test_penalty_is_the_weighted_l1_norm(dev, rng):
    opt = make_optimizer("prox-sgd", lr=0.1, l1=0.01, l1_factors={"fc2": 4.0}, device=dev)
    params = make_params(dev, rng)
    ref = sum(0.01 * f * np.abs(p.data.get().astype(np.float64)).sum()
              for p, f in zip(params, (1.0, 0.0, 4.0, 1.0)))
    assert opt.penalty(params) == pytest.approx(ref, rel=1e-9)
    assert make_optimizer("adam", lr=0.1, device=dev).penalty(params) == 0.0


def test_l1_factor_resolution(dev):
    opt = make_optimizer("prox-sgd", lr=0.1, l1=1.0, device=dev,
                         l1_factors={"features": 2.0, "features.3": 5.0, "fc1": 0.5, "fc1.bias": 9.0})
    assert opt.factor("features.0.weight") == 2.0
    assert opt.factor("features.3.weight") == 5.0      # the longest prefix wins
    assert opt.factor("fc1.weight") == 0.5
    assert opt.factor("fc1.bias") == 9.0               # the exact name wins
    assert opt.factor("fc10.weight") == 1.0            # a prefix stops at a dot
    assert opt.factor("conv1.weight") == 1.0


def test_unused_factor_key_is_an_error(dev, rng):
    opt = make_optimizer("prox-sgd", lr=0.1, l1=1.0, l1_factors={"fc9": 2.0}, device=dev)
    p = Param(dev, "fc1.weight", rng.standard_normal(5))
    with pytest.raises(ValueError, match="'fc9' names no parameter"):
        opt.step([p])


def test_empty_parameter_is_a_no_op(dev):
    for kind in KINDS:
        opt = make_optimizer(kind, device=dev, **HYPER[kind])
        p = Param(dev, "w", np.zeros(0))
        opt.step([p])
        opt.step([p])
        assert opt.steps("w") == 2 and p.data.size == 0
        opt.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("name, kw, match", [
    ("prox-sdg", dict(lr=0.1), "unknown optimizer 'prox-sdg'"),
    ("", dict(lr=0.1), "unknown optimizer"),
    ("prox-sgd", dict(), "needs a learning rate"),
    ("prox-sgd", dict(lr=0.0), "learning rate"),
    ("prox-adam", dict(lr=float("nan")), "learning rate"),
    ("prox-sgd", dict(lr=0.1, l1=-1e-3), "l1"),
    ("prox-sgd", dict(lr=0.1, momentum=1.0), "momentum"),
    ("sgd", dict(lr=0.1, momentum=-0.1), "momentum"),
    ("prox-adam", dict(lr=0.1, betas=(0.9, 1.0)), "beta2"),
    ("adam", dict(lr=0.1, betas=0.9), "pair"),
    ("adam", dict(lr=0.1, eps=0.0), "eps"),
    ("rda", dict(gamma=0.0), "gamma"),
    ("rda", dict(gamma="x"), "gamma"),
    ("sgd", dict(lr=0.1, l1=1e-3), "no l1 term"),
    ("adam", dict(lr=0.1, l1_factors={"fc1": 1.0}), "no l1 term"),
    ("prox-sgd", dict(lr=0.1, l1_factors={"fc1": -1.0}), "factor"),
    ("prox-sgd", dict(lr=0.1, l1_factors=[("fc1", 1.0)]), "dict"),
])
def test_invalid_names_and_values_raise_one_line(dev, name, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        make_optimizer(name, device=dev, **kw)
    assert "\n" not in str(e.value)


def test_invalid_step_arguments_raise(dev, rng):
    opt = make_optimizer("prox-sgd", lr=0.1, l1=0.1, device=dev)
    p = Param(dev, "w", rng.standard_normal(8))
    with pytest.raises(ValueError, match="learning rate"):
        opt.step([p], lr=-0.1)
    with pytest.raises(ValueError, match="l1"):
        opt.step([p], l1=float("inf"))
    with pytest.raises(ValueError, match="twice"):
        opt.step([p, p])
    q = Param(dev, "q", rng.standard_normal(8))
    q.grad = dev.zeros((7,), np.float32)
    with pytest.raises(ValueError, match="grad must be"):
        opt.step([q])
    with pytest.raises(ValueError, match="no l1 term"):
        make_optimizer("adam", lr=0.1, device=dev).step([p], l1=0.5)


@pytest.mark.parametrize("vec", [2, 8])
def test_apply_mask_multiplies_by_the_mask(dev, rng, monkeypatch, vec):
    from proxcl.ops.optim import apply_mask
    monkeypatch.setitem(dev.__dict__, "tuning", dataclasses.replace(dev.tuning, vec=vec))
    for n in (1, vec, 5 * vec + 3):
        x = rng.standard_normal(n).astype(np.float32)
        m = (rng.random(n) < 0.5).astype(np.float32)
        xd = dev.to_device(x)
        apply_mask(dev, xd, dev.to_device(m))
        assert np.array_equal(xd.get(), x * m)
