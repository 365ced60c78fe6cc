"""Device memory: the accounting of proxcl.memory against the buffers that actually exist, the
peaks, the allocation counts of the caching pools (no driver allocation per step after warm-up),
what the CSR phase holds, and the inference memory of a model."""

from __future__ import annotations

import gc

import numpy as np
import pyopencl.array as cla
import pytest

import proxcl
from proxcl.memory import CATEGORIES, STATE, category_of
from proxcl.models import build
from proxcl.optim import make_optimizer
from proxcl.pruning import prune


@pytest.fixture
def fresh(dev):
    """A device of its own for one test: nothing else is counted."""
    return proxcl.Device(dev.spec)


def tally(device) -> dict:
    """Bytes per category of every pyopencl array alive that was made by this device's pools,
    found by the garbage collector, each buffer once (its largest array: a view may be smaller)."""
    gc.collect()
    allocators = {device.memory.allocator(c) for c in CATEGORIES}
    buffers: dict = {}
    for o in gc.get_objects():
        if type(o) is cla.Array and o.base_data is not None and o.allocator in allocators:
            key = id(o.base_data)
            cat, n = buffers.get(key, (category_of(o), 0))
            buffers[key] = (cat, max(n, o.nbytes))
    out = dict.fromkeys(CATEGORIES, 0)
    for cat, n in buffers.values():
        out[cat] += n
    return out


def walk(model, opt) -> dict:
    """Bytes of weights, gradients and optimizer state found by walking the model and the
    optimizer (CSR weights: row pointers, indices, values and the derived structures built)."""
    weights = grads = state = 0
    for p in model.params:
        if p.is_sparse:
            pat = p.value.pattern
            arrays = [pat.indptr, pat.indices, p.value.data]
            arrays += [pat._rows] if pat._rows is not None else []
            arrays += list(pat._transposed or ())
            weights += sum(a.nbytes for a in arrays)
        else:
            weights += p.value.nbytes
        grads += p.grad_buffer.nbytes if p.grad_buffer is not None else 0
        state += sum(a.nbytes for a in opt.state(p.name).values())
    for layer in model.layers:
        taps = getattr(layer, "_taps_cache", None)
        if taps is not None and taps[0]() is not None:
            weights += taps[1].nbytes
    return {"weights": weights, "gradients": grads, "optimizer": state}


def _batch(model, rng, n=32):
    x = rng.standard_normal((n,) + model.input_shape).astype(np.float32)
    return x, rng.integers(0, model.num_classes, n)


def _switch(model, opt, density, method):
    """Prune to ``density`` per layer, then to_sparse or compact, the optimizer following (no
    index map is kept referenced afterwards)."""
    prune(model, density, "layer")
    for pname, src in getattr(model, method)().items():
        opt.remap(pname, src)


def _steps(model, opt, x, y, k=2, **kw):
    for _ in range(k):
        model.train_batch(*model.stage_batch(x, y))
        opt.step(model.params, **kw)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_accounting_matches_the_buffers_that_exist(fresh, rng, name):
    """Live bytes per category equal the arrays the garbage collector finds, and weights,
    gradients and optimizer state equal what a walk over the model and optimizer finds, through
    dense training, the switch to CSR, compaction, evaluation and deleting everything."""
    model = build(name, device=fresh)
    opt = make_optimizer("prox-adam", lr=1e-3, l1=1e-4, device=fresh)
    x, y = _batch(model, rng)

    def check():
        live = fresh.memory.live()
        assert live == tally(fresh)
        got = walk(model, opt)
        assert {c: live[c] for c in STATE} == got

    _steps(model, opt, x, y)
    check()
    _switch(model, opt, 0.05, "to_sparse")
    _steps(model, opt, x, y)
    check()
    _switch(model, opt, 0.02, "compact")
    _steps(model, opt, x, y)
    model.eval_batch(*model.stage_batch(x, y))
    model.forward(x[:3])
    check()
    del model, opt
    gc.collect()
    assert sum(fresh.memory.live().values()) == sum(tally(fresh).values()) == 0


def test_peaks_follow_allocations(fresh):
    mem = fresh.memory
    a = fresh.empty((1000,), category="weights")
    b = fresh.empty((500,), category="gradients")
    del a
    c = fresh.empty((250,), np.float64, category="optimizer")
    peak = mem.peak()
    assert peak["weights"] == 4000 and peak["gradients"] == 2000 and peak["optimizer"] == 2000
    assert peak["total"] == 6000 and peak["state"] == 6000
    assert mem.peak_breakdown() == {"weights": 4000, "gradients": 2000, "optimizer": 0, "activations": 0,
                                    "data": 0}
    with mem.measure() as m:
        d = fresh.empty((100,), category="activations")
        del d
        e = fresh.empty((50,), category="data")
    assert m["before"]["gradients"] == 2000 and m["before"]["optimizer"] == 2000
    assert m["peak"]["total"] == 4400 and m["peak"]["activations"] == 400 and m["peak"]["data"] == 200
    assert mem.peak()["total"] == 6000          # the device's own peak goes on
    mem.reset_peak()
    assert mem.peak()["total"] == 2000 + 2000 + 200
    assert mem.peak()["pool"] >= mem.peak()["total"]
    del b, c, e


def test_categories_follow_derived_arrays(fresh, rng):
    """Copies, gathers and CSR structures stay in the category of what they come from."""
    w = proxcl.CSRMatrix.from_dense(rng.standard_normal((20, 30)).astype(np.float32) * (rng.random((20, 30)) < 0.3),
                                    fresh)
    assert {category_of(a) for a in (w.indptr, w.indices, w.data, w.pattern.rows, *w.pattern.transposed)} == \
        {"weights"}
    g = fresh.zeros((w.nnz,), category="optimizer")
    assert category_of(g.copy()) == "optimizer"
    assert category_of(proxcl.ops.gather(fresh, g, fresh.to_device(np.array([0, -1], np.int32), np.int32))) \
        == "optimizer"
    assert category_of(fresh.copy(w.data, category="optimizer")) == "optimizer"
    assert category_of(w @ rng.standard_normal((30, 4)).astype(np.float32)) == "activations"


def test_launch_keeps_no_buffer_alive(fresh, rng):
    """A kernel's previous arguments are not kept referenced: a freed buffer is freed."""
    w = proxcl.CSRMatrix.from_scipy(__import__("scipy.sparse", fromlist=["random"]).random(
        40, 50, density=0.2, format="csr", random_state=1, dtype=np.float32), fresh)
    x = fresh.to_device(rng.standard_normal((50, 8)).astype(np.float32))
    before = fresh.memory.live()["activations"]
    y = w @ x
    assert fresh.memory.live()["activations"] == before + y.nbytes
    ref = y.get()
    del y
    gc.collect()
    assert fresh.memory.live()["activations"] == before
    np.testing.assert_allclose((w @ x).get(), ref)   # and a new result buffer still works


class _DriverModelPool:
    """pyopencl's MemoryPool as its source describes it, over a driver of ``capacity`` bytes:
    a request takes a kept buffer of its bin if there is one, else asks the driver; when the
    driver is out of memory, kept buffers go back to it one at a time, largest first, and it is
    asked again; when none are left the request fails.  Bins are exact sizes here."""

    def __init__(self, capacity):
        self.capacity, self.kept = capacity, []
        self.held_blocks = self.active_blocks = self.active_bytes = self.managed_bytes = 0

    def bin_number(self, n):
        return n

    def alloc_size(self, b):
        return b

    def allocate(self, n):
        if n in self.kept:
            self.kept.remove(n)
            self.held_blocks -= 1
        else:
            while self.managed_bytes + n > self.capacity:
                if not self.kept:
                    raise MemoryError("out of device memory")
                self.kept.sort()
                self.managed_bytes -= self.kept.pop()
                self.held_blocks -= 1
            self.managed_bytes += n
        self.active_blocks += 1
        self.active_bytes += n
        return n

    def give_back(self, n):          # a buffer freed by its array: kept
        self.active_blocks -= 1
        self.active_bytes -= n
        self.kept.append(n)
        self.held_blocks += 1


def test_kept_buffers_given_back_to_the_driver_clear_the_launch_cache(fresh):
    """Whenever the pool gives kept buffers back to the driver (their handles may name new
    buffers), the memory tells its listeners (the device's launch cache), also where the
    pool's block count stays the same (one given back, one made) and where the request then
    fails; a kept buffer handed out or a plain driver allocation tells nobody."""
    mem = fresh.memory
    pool = _DriverModelPool(100)
    mem._pools["activations"] = mem._allocators["activations"].pool = pool
    mem._pool_list = list(mem._pools.values())
    told = []
    mem.on_release(lambda: told.append(1))
    alloc = mem.allocator("activations")
    before = mem.driver_allocations
    alloc(40)                        # the driver
    assert (mem.driver_allocations - before, told) == (1, [])
    pool.give_back(40)
    alloc(40)                        # the kept one
    assert (mem.driver_allocations - before, told) == (1, [])
    pool.give_back(40)
    alloc(70)                        # 40 given back, 70 made: the same number of blocks
    assert (mem.driver_allocations - before, len(told)) == (2, 1) and pool.held_blocks == 0
    pool.give_back(70)
    with pytest.raises(MemoryError):
        alloc(200)                   # 70 given back, and still too little
    assert len(told) == 2 and pool.managed_bytes == 0


@pytest.mark.parametrize("form", ["cpu", "gpu"])
def test_no_driver_allocation_per_step_after_warm_up(dev, rng, monkeypatch, form):
    """After warm-up, training steps (dense and CSR, with evaluation between), inference calls
    and W @ X in a loop take every buffer from the pools: no driver allocation."""
    monkeypatch.setenv("PROXCL_TUNING", form)
    d = proxcl.Device(dev.spec)
    model = build("lenet5", device=d)
    opt = make_optimizer("prox-sgd", lr=1e-3, l1=1e-4, device=d)
    x, y = _batch(model, rng, 16)
    mem = d.memory
    for sparse in (False, True):
        if sparse:
            _switch(model, opt, 0.05, "to_sparse")
        for _ in range(2):      # warm-up: the first step's new buffers reuse kept temporaries
            _steps(model, opt, x, y, 1)
            model.eval_batch(*model.stage_batch(x, y))
            model.forward(x[:5])
        before, requests = mem.driver_allocations, mem.requests
        with d.record_launches() as launches:
            for _ in range(3):
                _steps(model, opt, x, y, 1)
                model.eval_batch(*model.stage_batch(x, y))
                model.forward(x[:5])
        assert mem.driver_allocations == before
        packed = sum(name == "gemm_pk" for name, _ in launches)
        if form == "cpu":      # no temporaries but the two copies of a packed product (conv2's Wᵀ D)
            assert mem.requests - requests == 2 * packed and (packed > 0) == (not sparse)
        elif not sparse:       # the GPU form's dense products take temporaries, from the pools
            assert mem.requests > requests
    w = model.param("fc1.weight").value
    xs = d.to_device(rng.standard_normal((800, 64)).astype(np.float32))
    w @ xs
    before = mem.driver_allocations
    for _ in range(5):
        w @ xs
    assert mem.driver_allocations == before


@pytest.mark.parametrize("form", ["cpu", "gpu"])
def test_no_new_views_per_step_after_warm_up(dev, rng, monkeypatch, form):
    """After warm-up, training steps of LeNet-5 and LeNet-300-100 (dense, then CSR) take every
    reshaped view of a buffer from runtime.view's cache: pyopencl's reshape, which builds a new
    Array, is not called."""
    import pyopencl.array as cla
    monkeypatch.setenv("PROXCL_TUNING", form)
    d = proxcl.Device(dev.spec)
    for name in ("lenet5", "lenet300"):
        model = build(name, device=d)
        opt = make_optimizer("prox-adam", lr=1e-3, l1=1e-4, device=d)
        x, y = _batch(model, rng, 16)
        for sparse in (False, True):
            if sparse:
                _switch(model, opt, 0.05, "to_sparse")
            _steps(model, opt, x, y, 2)
            calls = []
            reshape = cla.Array.reshape
            with monkeypatch.context() as mp:
                mp.setattr(cla.Array, "reshape", lambda self, *a, **k: calls.append(a) or reshape(self, *a, **k))
                _steps(model, opt, x, y, 2)
            assert calls == [], (name, sparse)


@pytest.mark.parametrize("optimizer", ["prox-adam", "rda"])
def test_csr_phase_holds_nothing_weight_sized(fresh, rng, optimizer):
    """In the CSR phase at 2 % (Adam moments; RDA's mean gradient and anchor), no weight,
    gradient or optimizer buffer is as large as a large layer's dense weight, and their bytes
    are at most 1/10 of the dense phase's."""
    model = build("lenet5", device=fresh)
    opt = make_optimizer(optimizer, lr=1e-3, l1=1e-4, device=fresh)
    x, y = _batch(model, rng)
    _steps(model, opt, x, y)
    dense = sum(fresh.memory.live()[c] for c in STATE)
    _switch(model, opt, 0.02, "to_sparse")
    fresh.memory.trim()
    _steps(model, opt, x, y)
    model.eval_batch(*model.stage_batch(x, y))
    gc.collect()
    for p in model.params:
        if p.penalised:
            assert p.is_sparse and p.grad.size == p.stored
            assert all(a.size == p.stored for a in opt.state(p.name).values())
    # conv2's and fc1's dense weights are 100 KB and 1.6 MB; nothing of theirs is half that
    bound = min(p.size * 4 for p in model.params if p.penalised and p.size >= 25000) / 2
    for o in gc.get_objects():
        if type(o) is cla.Array and o.base_data is not None and category_of(o, "") in STATE \
                and o.allocator.memory is fresh.memory:
            assert o.nbytes < bound, (category_of(o), o.shape)
    assert sum(fresh.memory.live()[c] for c in STATE) <= dense / 10


def test_inference_memory_holds_the_largest_activations(fresh):
    """lenet300 at batch n: weights, the input batch, and activations of two ping-pong buffers
    (the flatten's 784 rows, then fc1's 300, which fc2 and fc3 reuse), not of all layers."""
    model = build("lenet300", device=fresh)
    weights = sum(p.size for p in model.params) * 4
    for n in (1, 256):
        m = model.inference_memory(n)
        assert m["weights"] == weights
        assert m["input"] == 784 * n * 4
        assert m["activations"] == 4 * n * (784 + 300)
        assert m["total"] == m["weights"] + m["activations"] + m["input"]


def test_loading_a_csr_model_never_makes_its_dense_weights(fresh, tmp_path, rng):
    model = build("lenet300", device=fresh)
    prune(model, 0.02, "layer")
    model.to_sparse()
    path = tmp_path / "m.proxcl"
    proxcl.save(model, path)
    other = proxcl.Device(fresh.spec)
    back = proxcl.load(path, device=other)
    assert other.memory.peak()["weights"] < 300 * 784 * 4 / 10
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(back.forward(x), model.forward(x), rtol=1e-5, atol=1e-6)
