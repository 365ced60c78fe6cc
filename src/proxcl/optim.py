"""Optimizers for sparse training: Prox-SGD, Prox-Adam and l1-RDA, plus plain SGD and Adam.

Each update is one OpenCL kernel launch per parameter and step (``kernels/optim.cl``): the
gradient step and the l1 proximal step (soft-threshold) are fused, and the threshold gives
exact zeros, so a weight leaves the support the moment ``|z| <= tau``; a NaN stays NaN (it is
never thresholded away), so a diverging run still shows in the values.  Each work-item handles
``tuning["vec"]`` values with vector loads; the kernels are memory-bound and run at the
device's bandwidth on large parameters.

Parameters are duck-typed: anything with

* ``name``      -- a unique str (``"fc1.weight"``),
* ``data``      -- flat float32 device array of the values, updated in place (for a CSR weight:
  its CSR values),
* ``grad``      -- flat float32 device array like ``data``: the gradient of the mean loss,
* ``penalised`` -- bool, whether l1 applies (weights yes, biases no).

Per-value state (momentum, Adam moments, RDA mean gradient and anchor) lives on the device,
is made the first time a parameter name is seen, and follows support changes through
:meth:`Optimizer.remap`.  The step counter ``t`` is kept per parameter name.

The l1 weight of a parameter is ``l1 * factor`` where factor comes from ``l1_factors``: a key
is a parameter name (``"fc1.weight"``) or a layer name (``"fc1"``, or any dotted prefix such as
``"features"`` for ``"features.0.weight"``); the exact name wins, then the longest prefix;
parameters no key names have factor 1.

Reweighted l1 (``reweight_eps=eps``, the adaptive lasso) scales each weight's threshold by
``c / (|w| + eps c)``, where ``c`` is the mean magnitude of the parameter's nonzero values:
weights of the typical size are shrunk as by plain l1, small ones up to 1/eps times harder, so
the penalty removes small weights and leaves large ones nearly unbiased.  ``c`` is measured when
a parameter is first seen and again at every :meth:`Optimizer.refresh_reweighting` (the
training loop calls it once per epoch); the threshold uses the current ``|w|`` at every step.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pyopencl.array as cla

from .checks import number
from .errors import InputError
from .ops import optim as kernels
from .ops.sparse import gather
from .runtime import Device, default_device

__all__ = ["OPTIMIZERS", "Optimizer", "ProxSGD", "ProxAdam", "RDA", "make_optimizer", "mean_magnitude",
           "check_l1_factors", "l1_factor", "check_factor_keys"]

OPTIMIZERS = ("prox-sgd", "prox-adam", "rda", "sgd", "adam")


def mean_magnitude(values: np.ndarray) -> float:
    """Reweighted l1's c: the mean |w| of the nonzero values (float64 sum), 1.0 when none is."""
    a = np.abs(np.asarray(values))
    nz = a[a != 0]
    return float(nz.astype(np.float64).mean()) if nz.size else 1.0


def check_l1_factors(factors) -> dict[str, float]:
    """Per-layer l1 factors checked: {parameter or layer name: factor >= 0} (None: none)."""
    if factors is None:
        return {}
    if not isinstance(factors, dict):
        raise InputError(f"l1_factors must be a dict {{name: factor}}, got {type(factors).__name__}")
    out = {}
    for k, v in factors.items():
        if not isinstance(k, str) or not k:
            raise InputError(f"l1_factors keys must be parameter or layer names, got {k!r}")
        out[k] = number(f"l1 factor of {k!r}", v, 0.0)
    return out


def l1_factor(factors: dict, name: str) -> float:
    """The l1 factor of a parameter name: exact key, else the longest dotted-prefix key, else 1."""
    if name in factors:
        return factors[name]
    best = None
    for k in factors:
        if name.startswith(k + ".") and (best is None or len(k) > len(best)):
            best = k
    return factors[best] if best is not None else 1.0


def check_factor_keys(factors: dict, names) -> None:
    """Every factor key must name one of the parameters ``names`` or a dotted prefix of one."""
    names = set(names)
    unused = [k for k in factors if not any(n == k or n.startswith(k + ".") for n in names)]
    if unused:
        raise InputError(f"l1_factors key {unused[0]!r} names no parameter "
                         f"(parameters: {', '.join(sorted(names))})")


class _State:
    """The optimizer state of one parameter: its step count, its size and per-value arrays."""

    __slots__ = ("t", "size", "arrays", "rw_c")

    def __init__(self, t: int, size: int, arrays: dict, rw_c: float = 1.0):
        self.t = t
        self.size = size
        self.arrays = arrays
        self.rw_c = rw_c        # reweighted l1: the mean nonzero magnitude c


class Optimizer:
    """Base class: hyper-parameters, lazy per-parameter state, l1 factors, checkpoints.

    Subclasses set ``kind``, ``slots`` (names of the per-value state arrays) and implement
    ``_init_slot`` and ``_update``."""

    kind = ""
    slots: tuple[str, ...] = ()
    has_l1 = True
    _HYPER: tuple[str, ...] = ()

    def __init__(self, *, lr, l1=0.0, l1_factors=None, reweight_eps=None, device: Device | None = None):
        self.device = device or default_device()
        self.lr = self._check_lr(lr)
        self.l1 = self._check_l1(l1)
        self.l1_factors = self._check_factors(l1_factors)
        self.reweight_eps = self._check_reweight(reweight_eps)
        self._state: dict[str, _State] = {}
        self._factors_checked = False

    # ---- hyper-parameters ---------------------------------------------------
    def _check_lr(self, lr) -> float:
        return number(f"{self.kind}: learning rate", lr, 0.0, lo_open=True)

    def _check_l1(self, l1) -> float:
        v = number(f"{self.kind}: l1", l1, 0.0)
        if v and not self.has_l1:
            raise InputError(f"{self.kind} has no l1 term (got l1={l1!r}); use prox-{self.kind} or rda")
        return v

    def _check_reweight(self, eps) -> float:
        """0.0 for plain l1, else the reweighting's eps (> 0)."""
        if eps is None or eps == 0:
            return 0.0
        v = number(f"{self.kind}: reweighting eps", eps, 0.0, lo_open=True)
        if not self.has_l1:
            raise InputError(f"{self.kind} has no l1 term, so it cannot reweight it")
        return v

    def _reweight_of(self, p, st: _State):
        """The kernels' reweight argument for a parameter: None (plain l1) or (c, eps)."""
        return (st.rw_c, self.reweight_eps) if self.reweight_eps and p.penalised else None

    @staticmethod
    def _mean_magnitude(p) -> float:
        return mean_magnitude(p.data.get() if p.data.size else np.zeros(0, np.float32))

    def refresh_reweighting(self, params: Iterable) -> None:
        """Measure c (mean nonzero magnitude) again for every penalised parameter already seen."""
        if not self.reweight_eps:
            return
        for p in params:
            st = self._state.get(p.name)
            if st is not None and p.penalised:
                st.rw_c = self._mean_magnitude(p)

    def reweight_scale(self, name: str) -> float | None:
        """The c of a parameter under reweighted l1 (None before its first step or without it)."""
        st = self._state.get(name)
        return st.rw_c if st is not None and self.reweight_eps else None

    def _check_factors(self, factors) -> dict[str, float]:
        out = check_l1_factors(factors)
        if out and not self.has_l1:
            raise InputError(f"{self.kind} has no l1 term, so l1_factors cannot apply")
        return out

    def factor(self, name: str) -> float:
        """The l1 factor of a parameter name: exact key, else the longest dotted-prefix key, else 1."""
        return l1_factor(self.l1_factors, name)

    def l1_of(self, p) -> float:
        """lambda_l of a parameter at the current l1: 0 for unpenalised ones."""
        return self.l1 * self.factor(p.name) if p.penalised else 0.0

    # ---- the update -----------------------------------------------------------
    def step(self, params: Iterable, *, lr=None, l1=None) -> None:
        """One update of every parameter.  ``lr``/``l1`` (from schedules) replace the current
        values before the update and stay in force for later steps."""
        if lr is not None:
            self.lr = self._check_lr(lr)
        if l1 is not None:
            self.l1 = self._check_l1(l1)
        params = list(params)
        seen = set()
        for p in params:
            self._check_param(p)
            if p.name in seen:
                raise InputError(f"parameter {p.name!r} is given twice")
            seen.add(p.name)
        if not self._factors_checked and params:
            check_factor_keys(self.l1_factors, seen)
            self._factors_checked = True
        for p in params:
            st = self._state_of(p)
            st.t += 1
            if st.size:
                self._update(p, st, self.l1_of(p))

    def _check_param(self, p) -> None:
        name = getattr(p, "name", None)
        if not isinstance(name, str) or not name:
            raise InputError(f"a parameter needs a non-empty str name, got {name!r}")
        data, grad = getattr(p, "data", None), getattr(p, "grad", None)
        if not isinstance(data, cla.Array) or data.dtype != np.float32 or data.ndim != 1:
            raise InputError(f"parameter {name!r}: data must be a flat float32 device array")
        if not isinstance(grad, cla.Array) or grad.dtype != np.float32 or grad.shape != data.shape:
            raise InputError(f"parameter {name!r}: grad must be a float32 device array "
                             f"of shape {data.shape}")
        for a in (data, grad):
            if a.size and a.context.int_ptr != self.device.context.int_ptr:
                raise InputError(f"parameter {name!r} lives on another OpenCL context "
                                 f"than the optimizer's device")

    def _state_of(self, p) -> _State:
        st = self._state.get(p.name)
        n = int(p.data.size)
        if st is None:
            st = _State(0, n, {s: self._init_slot(s, p) for s in self.slots})
            if self.reweight_eps and p.penalised:
                st.rw_c = self._mean_magnitude(p)
            self._state[p.name] = st
        elif st.size != n:
            raise InputError(f"parameter {p.name!r} has {n} values but its optimizer state has "
                             f"{st.size}; call remap() when the support changes")
        return st

    def _init_slot(self, slot: str, p) -> cla.Array:
        return self.device.zeros((int(p.data.size),), np.float32, category="optimizer")

    def _update(self, p, st: _State, lam: float) -> None:
        raise NotImplementedError

    # ---- support changes -------------------------------------------------------
    def remap(self, name: str, src) -> None:
        """The parameter ``name`` has a new support: value q of the new one was value src[q] of
        the old one, or is new where src[q] = -1 (src: int32 device array, e.g. from
        CSRMatrix.from_dense(return_src=True), compact(return_src=True) or regrowth).  Gathers
        every per-value state array (a new value's state starts at zero); the step count stays.
        A name the optimizer has not seen yet is left alone."""
        st = self._state.get(name)
        if st is None:
            return
        if not isinstance(src, cla.Array) or src.dtype != np.int32 or src.ndim != 1:
            raise InputError(f"remap {name!r}: src must be a flat int32 device array")
        if src.size:
            host = src.get()
            lo, hi = int(host.min()), int(host.max())
            if lo < -1 or hi >= st.size:
                raise InputError(f"remap {name!r}: src holds positions outside [-1, {st.size})")
        for s in list(st.arrays):    # one at a time: each old array is freed before the next gather
            st.arrays[s] = gather(self.device, st.arrays[s], src)
        st.size = int(src.size)

    def state(self, name: str) -> dict[str, cla.Array]:
        """The per-value state arrays of a parameter (empty before its first step)."""
        st = self._state.get(name)
        return dict(st.arrays) if st else {}

    def steps(self, name: str) -> int:
        """How many updates the parameter ``name`` has had."""
        st = self._state.get(name)
        return st.t if st else 0

    # ---- checkpoints -------------------------------------------------------------
    def hyper(self) -> dict[str, float]:
        """The hyper-parameters as numbers (lr, l1, reweight_eps (0: plain l1) and the kind's own)."""
        return {"lr": self.lr, "l1": self.l1, "reweight_eps": self.reweight_eps,
                **{h: getattr(self, h) for h in self._HYPER}}

    def state_dict(self) -> dict:
        """Everything needed for an exact resume, as {key: number or numpy array}:
        ``kind`` (index in OPTIMIZERS), the hyper-parameters, ``l1_factor/<key>``, and per
        parameter ``step/<name>``, ``size/<name>``, ``rw_c/<name>`` (reweighting's c) and
        ``state/<name>/<slot>`` (float32 arrays)."""
        d: dict = {"kind": OPTIMIZERS.index(self.kind), **self.hyper()}
        for k, v in self.l1_factors.items():
            d[f"l1_factor/{k}"] = v
        for name, st in self._state.items():
            d[f"step/{name}"] = st.t
            d[f"size/{name}"] = st.size
            d[f"rw_c/{name}"] = st.rw_c
            for s, a in st.arrays.items():
                d[f"state/{name}/{s}"] = a.get() if a.size else np.zeros(0, np.float32)
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a :meth:`state_dict` (hyper-parameters included) onto this optimizer's device."""
        kind = d.get("kind")
        if not isinstance(kind, (int, np.integer)) or not 0 <= int(kind) < len(OPTIMIZERS):
            raise InputError("optimizer state: missing or invalid 'kind'")
        if OPTIMIZERS[int(kind)] != self.kind:
            raise InputError(f"optimizer state is for {OPTIMIZERS[int(kind)]}, not {self.kind}")
        hyper, factors, steps, sizes, arrays, scales = {}, {}, {}, {}, {}, {}
        for key, v in d.items():
            if key == "kind":
                continue
            if key in ("lr", "l1", "reweight_eps", *self._HYPER):
                hyper[key] = v
            elif key.startswith("l1_factor/"):
                factors[key[len("l1_factor/"):]] = v
            elif key.startswith("step/"):
                steps[key[5:]] = v
            elif key.startswith("size/"):
                sizes[key[5:]] = v
            elif key.startswith("rw_c/"):
                scales[key[5:]] = v
            elif key.startswith("state/") and "/" in key[6:]:
                name, slot = key[6:].rsplit("/", 1)
                arrays.setdefault(name, {})[slot] = v
            else:
                raise InputError(f"optimizer state: unexpected key {key!r}")
        missing = {"lr", "l1", "reweight_eps", *self._HYPER} - set(hyper)
        if missing:
            raise InputError(f"optimizer state: missing {sorted(missing)[0]!r}")
        if set(steps) != set(sizes) or set(scales) != set(steps) or not set(arrays) <= set(steps):
            raise InputError("optimizer state: step/, size/ and state/ keys name different parameters")
        own = {h: self._check_hyper(h, hyper[h]) for h in self._HYPER}
        slots = set(self._slots_with(own))
        state = {}
        for name, t in steps.items():
            n = int(sizes[name])
            got = arrays.get(name, {})
            if set(got) != slots:
                raise InputError(f"optimizer state of {name!r} has slots {sorted(got)}, "
                                 f"{self.kind} needs {sorted(slots)}")
            dev_arrays = {}
            for s, a in got.items():
                a = np.asarray(a)
                if a.dtype != np.float32 or a.shape != (n,):
                    raise InputError(f"optimizer state {name!r}/{s}: expected float32 ({n},), "
                                     f"got {a.dtype} {a.shape}")
                dev_arrays[s] = (self.device.to_device(a, category="optimizer") if n else
                                 self.device.zeros((0,), np.float32, category="optimizer"))
            if int(t) < 0 or n < 0:
                raise InputError(f"optimizer state of {name!r}: negative step or size")
            rw_c = number(f"optimizer state of {name!r}: reweighting scale", scales[name], 0.0, lo_open=True)
            state[name] = _State(int(t), n, dev_arrays, rw_c)
        # validate everything before changing anything
        lr, l1 = self._check_lr(hyper["lr"]), self._check_l1(hyper["l1"])
        fac = self._check_factors(factors or None)
        rw = self._check_reweight(hyper["reweight_eps"])
        self.lr, self.l1, self.l1_factors, self._state, self.reweight_eps = lr, l1, fac, state, rw
        for h, v in own.items():
            setattr(self, h, v)
        self._factors_checked = bool(state)

    def _check_hyper(self, name: str, value) -> float:
        raise NotImplementedError

    def _slots_with(self, hyper: dict) -> tuple[str, ...]:
        """The state slots this optimizer would have with the given own hyper-parameters."""
        return tuple(self.slots)

    # ---- logging -----------------------------------------------------------------
    def penalty(self, params: Iterable) -> float:
        """sum over penalised parameters of lambda_l * ||w||_1 (reads the values back)."""
        total = 0.0
        for p in params:
            lam = self.l1_of(p)
            if lam and p.data.size:
                total += lam * float(np.abs(p.data.get().astype(np.float64)).sum())
        return total

    def __repr__(self) -> str:
        h = ", ".join(f"{k}={v:g}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({self.kind}, {h})"


class ProxSGD(Optimizer):
    """Prox-SGD with momentum mu: v <- mu v + g; w <- S_{lr lambda}(w - lr v).
    With ``plain=True`` it is SGD with momentum (no l1).  mu = 0 keeps no state."""

    _HYPER = ("momentum",)

    def __init__(self, *, lr, l1=0.0, l1_factors=None, momentum=0.9, plain=False, reweight_eps=None,
                 device=None):
        self.kind = "sgd" if plain else "prox-sgd"
        self.has_l1 = not plain
        self.momentum = self._check_hyper("momentum", momentum)
        super().__init__(lr=lr, l1=l1, l1_factors=l1_factors, reweight_eps=reweight_eps, device=device)

    @property
    def slots(self):
        return self._slots_with({"momentum": self.momentum})

    def _slots_with(self, hyper):
        return ("momentum",) if hyper["momentum"] else ()

    def _check_hyper(self, name, value):
        if name != "momentum":
            raise InputError(f"{self.kind}: unknown hyper-parameter {name!r}")
        return number(f"{self.kind}: momentum", value, 0.0, 1.0, hi_open=True)

    def _update(self, p, st, lam):
        kernels.prox_sgd(self.device, p.data, p.grad, st.arrays.get("momentum"), lr=self.lr,
                         momentum=self.momentum, tau=self.lr * lam, reweight=self._reweight_of(p, st))


class ProxAdam(Optimizer):
    """Prox-Adam: Adam moments with bias correction, d = sqrt(v_hat) + eps,
    w <- S_{lr lambda / d}(w - lr m_hat / d) (a per-coordinate threshold).
    With ``plain=True`` it is Adam (no l1)."""

    slots = ("m", "v")
    _HYPER = ("beta1", "beta2", "eps")

    def __init__(self, *, lr, l1=0.0, l1_factors=None, betas=(0.9, 0.999), eps=1e-8,
                 plain=False, reweight_eps=None, device=None):
        self.kind = "adam" if plain else "prox-adam"
        self.has_l1 = not plain
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise InputError(f"{self.kind}: betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.beta1 = self._check_hyper("beta1", b1)
        self.beta2 = self._check_hyper("beta2", b2)
        self.eps = self._check_hyper("eps", eps)
        super().__init__(lr=lr, l1=l1, l1_factors=l1_factors, reweight_eps=reweight_eps, device=device)

    def _check_hyper(self, name, value):
        if name in ("beta1", "beta2"):
            return number(f"{self.kind}: {name}", value, 0.0, 1.0, hi_open=True)
        if name == "eps":
            return number(f"{self.kind}: eps", value, 0.0, lo_open=True)
        raise InputError(f"{self.kind}: unknown hyper-parameter {name!r}")

    def _update(self, p, st, lam):
        b1, b2, t = self.beta1, self.beta2, st.t
        rc1 = 1.0 / (1.0 - b1 ** t)
        rc2 = 1.0 / (1.0 - b2 ** t)
        kernels.prox_adam(self.device, p.data, p.grad, st.arrays["m"], st.arrays["v"], lr=self.lr,
                          beta1=b1, beta2=b2, rc1=rc1, rc2=rc2, eps=self.eps, lr_lam=self.lr * lam,
                          reweight=self._reweight_of(p, st))


class RDA(Optimizer):
    """l1-RDA anchored at the first iterate w0 (captured the first time a parameter is seen):
    gbar_t = ((t-1)/t) gbar_{t-1} + g_t / t;  w_{t+1} = S_{lambda sqrt(t)/gamma}(w0 - (sqrt(t)/gamma) gbar_t).
    The step size is sqrt(t)/gamma: the learning rate is not used (schedules' lr is ignored);
    gamma is the RDA constant (larger gamma, smaller steps)."""

    kind = "rda"
    slots = ("gbar", "w0")
    _HYPER = ("gamma",)

    def __init__(self, *, lr=None, l1=0.0, l1_factors=None, gamma=1.0, reweight_eps=None, device=None):
        self.gamma = self._check_hyper("gamma", gamma)
        super().__init__(lr=1.0 if lr is None else lr, l1=l1, l1_factors=l1_factors,
                         reweight_eps=reweight_eps, device=device)

    def _check_lr(self, lr) -> float:
        # unused by RDA, but kept (and checked) so that schedules and checkpoints stay uniform
        return number("rda: learning rate", lr, 0.0, lo_open=True)

    def _check_hyper(self, name, value):
        if name != "gamma":
            raise InputError(f"rda: unknown hyper-parameter {name!r}")
        return number("rda: gamma", value, 0.0, lo_open=True)

    def _init_slot(self, slot, p):
        if slot == "w0":
            return self.device.copy(p.data, category="optimizer")
        return super()._init_slot(slot, p)

    def _update(self, p, st, lam):
        t = st.t
        s = math.sqrt(t) / self.gamma
        kernels.rda(self.device, p.data, p.grad, st.arrays["gbar"], st.arrays["w0"], a=(t - 1) / t,
                    b=1.0 / t, s=s, tau=lam * s, reweight=self._reweight_of(p, st))


def make_optimizer(name: str, *, lr=None, l1=0.0, l1_factors=None, momentum=0.9,
                   betas=(0.9, 0.999), eps=1e-8, gamma=1.0, reweight_eps=None,
                   device: Device | None = None) -> Optimizer:
    """An optimizer by name: ``prox-sgd``, ``prox-adam``, ``rda`` (lr unused, gamma its constant),
    ``sgd`` or ``adam`` (no l1: for dense training and debiasing).  ``reweight_eps`` turns the l1
    term of the proximal ones into reweighted l1.  Raises a one-line ValueError for an unknown
    name or an invalid hyper-parameter."""
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")
    if key != "rda" and lr is None:
        raise InputError(f"{key} needs a learning rate")
    if key in ("prox-sgd", "sgd"):
        return ProxSGD(lr=lr, l1=l1, l1_factors=l1_factors, momentum=momentum,
                       plain=key == "sgd", reweight_eps=reweight_eps, device=device)
    if key in ("prox-adam", "adam"):
        return ProxAdam(lr=lr, l1=l1, l1_factors=l1_factors, betas=betas, eps=eps,
                        plain=key == "adam", reweight_eps=reweight_eps, device=device)
    return RDA(lr=lr, l1=l1, l1_factors=l1_factors, gamma=gamma, reweight_eps=reweight_eps, device=device)
