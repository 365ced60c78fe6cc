"""proxcl.torch's optimizers against proxcl's OpenCL optimizers on identical gradients: the same
weights (relative error <= 1e-6 after 100 steps) with exact zeros in the same places; the frozen
supports against proxcl's CSR compaction; the density controller against
proxcl.schedules.DensityController; checkpoints; bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import proxcl.torch as pt
from helpers import rel_err
from proxcl.errors import InputError
from proxcl.optim import make_optimizer
from proxcl.schedules import DensityController

pytestmark = pytest.mark.usefixtures("torch_float32")

SHAPES = {"fc1.weight": (40, 57), "fc1.bias": (40,), "fc2.weight": (9, 40), "conv.weight": (6, 3, 3, 3)}
FACTORS = {"fc2": 2.5, "conv.weight": 0.5}
CASES = {
    "prox-sgd": (pt.ProxSGD, dict(lr=0.05, l1=1.0, momentum=0.9)),
    "prox-adam": (pt.ProxAdam, dict(lr=0.01, l1=1.0, betas=(0.8, 0.99), eps=1e-6)),
    "rda": (pt.RDA, dict(l1=0.05, gamma=8.0)),
}


class CLParam:
    """A parameter as proxcl's optimizers take it (name, flat device data and grad, penalised)."""

    def __init__(self, dev, name, values):
        self.name, self.penalised = name, values.ndim >= 2
        self.data = dev.to_device(values.ravel().copy())
        self.grad = dev.zeros((values.size,), np.float32)


def _pair(dev, rng, kind, reweight, **extra):
    """Identically initialised parameters and optimizers: (proxcl params, opt, torch params, opt)."""
    cls, hyper = CASES[kind]
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    cl_params = [CLParam(dev, n, v) for n, v in init.items()]
    cl_opt = make_optimizer(kind, device=dev, reweight_eps=reweight, l1_factors=FACTORS, **hyper)
    t_params = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in init.items()}
    t_opt = cls(list(t_params.items()), reweight_eps=reweight, l1_factors=FACTORS, **hyper, **extra)
    return cl_params, cl_opt, t_params, t_opt


def _same_grads(dev, rng, cl_params, t_params, scale=1.0):
    for p in cl_params:
        g = (scale * rng.standard_normal(SHAPES[p.name])).astype(np.float32)
        p.grad = dev.to_device(g.ravel())
        t_params[p.name].grad = torch.from_numpy(g)


def _check_same(cl_params, t_params, what: str) -> int:
    zeros = 0
    for p in cl_params:
        a, b = p.data.get(), t_params[p.name].detach().numpy().ravel()
        assert rel_err(b, a) <= 1e-6, f"{what}: {p.name}"
        assert np.array_equal(a == 0, b == 0), f"{what}: {p.name} has zeros elsewhere"
        zeros += int((a == 0).sum())
    return zeros


@pytest.mark.parametrize("reweight", [None, 0.03], ids=["l1", "reweighted"])
@pytest.mark.parametrize("kind", list(CASES))
def test_same_weights_as_opencl_after_100_steps(dev, rng, kind, reweight):
    cl_params, cl_opt, t_params, t_opt = _pair(dev, rng, kind, reweight, switch_density=0)
    lr0, l10 = cl_opt.lr, cl_opt.l1
    for step in range(100):
        _same_grads(dev, rng, cl_params, t_params)
        lr, l1 = lr0 * (1 - 0.004 * step), l10 * min(1.0, (step + 1) / 20)     # schedules move both
        for group in t_opt.param_groups:
            group["lr"], group["l1"] = lr, l1
        cl_opt.step(cl_params, lr=lr, l1=l1)
        t_opt.step()
        if step == 49:                         # an epoch ends: reweighting's c is measured again
            cl_opt.refresh_reweighting(cl_params)
            t_opt.refresh_reweighting()
    zeros = _check_same(cl_params, t_params, kind)
    total = sum(p.data.size for p in cl_params if p.penalised)
    assert 50 < zeros < total - 50, "the test should make exact zeros and keep nonzeros"
    for p in cl_params:
        if p.penalised and reweight:
            assert t_opt.state[t_params[p.name]]["rw_c"] == cl_opt.reweight_scale(p.name)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_plain_forms_are_proxcl_sgd_and_adam(dev, rng, kind):
    """l1 = 0 is proxcl's unpenalised SGD and Adam (the debiasing optimizers)."""
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    cl_params = [CLParam(dev, n, v) for n, v in init.items()]
    t_params = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in init.items()}
    if kind == "sgd":
        cl_opt = make_optimizer("sgd", lr=0.02, momentum=0.7, device=dev)
        t_opt = pt.ProxSGD(t_params.values(), lr=0.02, momentum=0.7)
    else:
        cl_opt = make_optimizer("adam", lr=0.01, device=dev)
        t_opt = pt.ProxAdam(t_params.values(), lr=0.01)
    for _ in range(100):
        _same_grads(dev, rng, cl_params, t_params)
        cl_opt.step(cl_params)
        t_opt.step()
    for p in cl_params:
        assert np.array_equal(p.data.get(), t_params[p.name].detach().numpy().ravel()), p.name


@pytest.mark.parametrize("kind", list(CASES))
def test_frozen_support_is_proxcls_compaction(dev, rng, kind):
    """After end_epoch with switch_density 1 every weight keeps its support, as proxcl's CSR
    weights do after compaction: proxcl's optimizer then steps the support's values with its state
    gathered onto them (remap); the torch one steps the dense weight under a mask."""
    cl_params, cl_opt, t_params, t_opt = _pair(dev, rng, kind, 0.03, switch_density=1.0)
    for _ in range(30):
        _same_grads(dev, rng, cl_params, t_params)
        cl_opt.step(cl_params)
        t_opt.step()
    t_opt.end_epoch()
    cl_opt.refresh_reweighting(cl_params)
    support = {}
    for p in cl_params:
        if p.penalised:
            keep = np.flatnonzero(p.data.get()).astype(np.int32)
            support[p.name] = keep
            cl_opt.remap(p.name, dev.to_device(keep, np.int32))
            p.data = dev.to_device(p.data.get()[keep])
    assert sum(s.size for s in support.values()) < sum(np.prod(SHAPES[n]) for n in support)
    for _ in range(30):
        grads = {n: (3.0 * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}
        for p in cl_params:
            g = grads[p.name].ravel()
            p.grad = dev.to_device(g[support[p.name]] if p.name in support else g)
            t_params[p.name].grad = torch.from_numpy(grads[p.name])
        cl_opt.step(cl_params)
        t_opt.step()
    for p in cl_params:
        w = t_params[p.name].detach().numpy().ravel()
        if p.name in support:
            off = np.ones(w.size, bool)
            off[support[p.name]] = False
            assert np.all(w[off] == 0), f"{p.name}: a frozen zero came back"
            w = w[support[p.name]]
        assert rel_err(w, p.data.get()) <= 1e-6, p.name
        assert np.array_equal(w == 0, p.data.get() == 0), p.name


def test_switch_density_freezes_only_sparse_enough_weights(rng):
    a = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((20, 30)).astype(np.float32)))
    b = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((20, 30)).astype(np.float32)))
    with torch.no_grad():
        a[:, :20] = 0                       # density 1/3
        b[:, :5] = 0                        # density 5/6
    opt = pt.ProxSGD([("a", a), ("b", b)], lr=0.1, switch_density=0.5)
    opt.end_epoch()
    masks = opt.masks()
    assert set(map(id, masks)) == {id(a)}
    assert torch.equal(masks[a], a.detach() != 0)


def test_density_controller_and_final_cut(rng):
    """lambda follows proxcl's DensityController fed with the densities measured every 10 steps of
    an epoch; end_epoch(final=True) leaves exactly round(target x weights) nonzeros."""
    params = {n: torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s).astype(np.float32)))
              for n, s in SHAPES.items()}
    target, ramp = 0.2, 60
    opt = pt.ProxSGD(list(params.items()), lr=0.05, l1=0.05, reweight_eps=0.03,
                     target_density=target, density_ramp=ramp, switch_density=0)
    ref = DensityController(target, 0.05, ramp)
    weights = [p for p in params.values() if p.dim() >= 2]
    size = sum(p.numel() for p in weights)
    steps_per_epoch, lambdas, froze = 37, set(), False
    for epoch in range(3):
        for step in range(steps_per_epoch):
            for p in params.values():
                p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32))
            if step % 10 == 0:
                density = sum(int((p != 0).sum()) for p in weights) / size
                shrinking = ref.l1 > 0
                ref.update(density, epoch * steps_per_epoch + step)
                froze |= shrinking and ref.l1 == 0
            opt.step()
            assert opt.param_groups[0]["l1"] == ref.l1
            lambdas.add(ref.l1)
        opt.end_epoch(final=epoch == 2)
    assert len(lambdas) > 5 and froze, "the controller should adapt lambda and stop shrinking"
    nnz, total = opt.nonzero_count()
    assert total == size and nnz == round(target * size)
    assert opt.masks(), "the zeros are frozen once shrinking stops"


@pytest.mark.parametrize("kind", list(CASES))
def test_state_dict_resumes_exactly(rng, kind):
    cls, hyper = CASES[kind]
    init = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads = [{n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()} for _ in range(40)]

    def run(stop=None, resume=None):
        params = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in init.items()}
        target = {} if kind == "rda" else dict(target_density=0.5, density_ramp=20)     # rda: refused
        opt = cls(list(params.items()), reweight_eps=0.03, switch_density=1.0, **target,
                  **{**hyper, "l1": max(hyper["l1"], 1e-3)})
        start = 0
        if resume is not None:
            values, state, start = resume
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(values[n])
            opt.load_state_dict(state)
        for k in range(start, 40 if stop is None else stop):
            for n, p in params.items():
                p.grad = torch.from_numpy(grads[k][n])
            opt.step()
            if k % 10 == 9:
                opt.end_epoch()
        return {n: p.detach().clone() for n, p in params.items()}, opt.state_dict()

    whole, _ = run()
    half, state = run(stop=25)
    state = torch.load(_roundtrip(state), weights_only=False)
    resumed, _ = run(resume=(half, state, 25))
    for n in whole:
        assert torch.equal(whole[n], resumed[n]), n


def _roundtrip(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("make, message", [
    (lambda p: pt.ProxSGD(p, lr=0), "learning rate"),
    (lambda p: pt.ProxSGD(p, lr=0.1, momentum=1.0), "momentum"),
    (lambda p: pt.ProxAdam(p, lr=0.1, betas=(0.9,)), "betas"),
    (lambda p: pt.RDA(p, l1=-1), "l1"),
    (lambda p: pt.RDA(p, gamma=0), "gamma"),
    (lambda p: pt.ProxSGD(p, lr=0.1, reweight_eps=-0.1), "eps"),
    (lambda p: pt.ProxSGD(p, lr=0.1, l1=1e-3, target_density=0.1), "density_ramp"),
    (lambda p: pt.ProxSGD(p, lr=0.1, l1=1e-3, target_density=1.5, density_ramp=10), "target density"),
    (lambda p: pt.RDA(p, l1=1e-3, target_density=0.1, density_ramp=10), "RDA: target_density is not supported"),
    (lambda p: pt.ProxSGD([t for _, t in p], lr=0.1, l1_factors={"fc1": 2}), "named_parameters"),
    (lambda p: pt.ProxSGD(p, lr=0.1, l1_factors={"fc9": 2}), "fc9"),
])
def test_bad_settings_are_one_clear_error(make, message):
    params = [("fc1.weight", torch.nn.Parameter(torch.ones(3, 4))), ("fc1.bias", torch.nn.Parameter(torch.ones(3)))]
    with pytest.raises(InputError, match=message):
        make(params)


def test_freeze_support_masks_any_optimizer(rng):
    """Debiasing with torch's own Adam: the zeros of the weights stay, biases and nonzeros train."""
    model = pt.module_from_spec("lenet300")
    with torch.no_grad():
        model.fc1.weight[torch.from_numpy(rng.random((300, 784)) < 0.9)] = 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    frozen = pt.freeze_support(model, opt)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for n, p in model.named_parameters():
        changed = p.detach() != before[n]
        if p.dim() >= 2:
            assert torch.equal(p.detach() == 0, before[n] == 0), n
        assert changed[before[n] != 0].float().mean() > 0.5, n
    nnz, total = frozen.nonzero_count()
    assert nnz == sum(int((p != 0).sum()) for p in model.parameters() if p.dim() >= 2) and total == 266200
    frozen.remove()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert (model.fc1.weight != 0).float().mean() > 0.5, "removed: the support is free again"
