"""proxcl's proximal optimizers as ``torch.optim`` optimizers: Prox-SGD, Prox-Adam and l1-RDA with
the same updates as ``kernels/optim.cl`` (DESIGN.md, "The method"), on CPU and CUDA tensors.

Every update rounds as the OpenCL kernels do on a CPU device (PoCL): the same float32 operations in
the same order, the multiply-adds that the OpenCL compiler fuses (``-cl-mad-enable``) fused here
too (done in float64, where the product of two floats is exact), square roots and quotients
correctly rounded.  On identical gradients the weights agree with proxcl's to float32 rounding,
their exact zeros included.

Parameters are given as torch expects them; give ``model.named_parameters()`` to use per-layer
l1 factors (``l1_factors={"fc3": 0.5}``: a parameter or layer name, the longest dotted prefix
wins, as in proxcl).  Weights (tensors of two or more dimensions) are penalised, biases are not.

What proxcl's training loop does around its optimizer is here too:

* ``reweight_eps``: reweighted l1, every threshold times ``c / (|w| + eps c)`` with c the mean
  nonzero magnitude of the layer, measured at its first step and again at every ``end_epoch()``;
* ``target_density`` (with ``density_ramp``, in steps; ProxSGD and ProxAdam, not RDA, as in
  proxcl's training): lambda is adapted every 10 steps of an
  epoch by :class:`proxcl.schedules.DensityController` so that the share of nonzero weights
  follows the cubic path down to the target; when it stops shrinking, today's zeros are frozen;
  ``end_epoch(final=True)`` cuts the weights to exactly ``round(target x weights)``;
* ``switch_density``: at ``end_epoch()`` a weight whose density has fallen to it keeps its support
  from then on (where proxcl stores it as CSR), and a frozen weight drops its new zeros (proxcl's
  compaction): a mask is applied to its gradient before and to its values after every step.

Call ``end_epoch()`` after every epoch of the sparse phase, as proxcl's training does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from proxcl.checks import number
from proxcl.errors import InputError
from proxcl.optim import check_factor_keys, check_l1_factors, l1_factor, mean_magnitude
from proxcl.pruning import keep_largest
from proxcl.schedules import DensityController
from proxcl.training import DENSITY_CHECK_STEPS

__all__ = ["ProxSGD", "ProxAdam", "RDA"]


def _f32(x: float) -> float:
    """A host scalar as the float32 kernel argument it becomes."""
    return float(np.float32(x))


def _fma(a: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """a x + y rounded once to x's type (the kernels' fused multiply-add)."""
    return torch.add(y.double(), x.double(), alpha=a).to(x.dtype)


def _fms(w: torch.Tensor, s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """w - s d rounded once."""
    return torch.addcmul(w.double(), s.double(), d.double(), value=-1.0).to(w.dtype)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root (torch's float32 one on the CPU is not)."""
    return x.double().sqrt().to(x.dtype)


def _div(a, x: torch.Tensor) -> torch.Tensor:
    """a / x correctly rounded, a a scalar (``a / tensor`` in torch is a reciprocal and a product)."""
    return (torch.full((), a, dtype=torch.float64, device=x.device) / x.double()).to(x.dtype)


def _shrink(z: torch.Tensor, tau) -> torch.Tensor:
    """S_tau(z) = sign(z) max(|z| - tau, 0): an exact +0 where |z| <= tau; NaN stays NaN."""
    if not torch.is_tensor(tau):
        tau = torch.full((), tau, dtype=z.dtype, device=z.device)     # a fill, no copy from the host
    return (z - torch.copysign(tau, z)).masked_fill_(z.abs() <= tau, 0.0)


class _Proximal(torch.optim.Optimizer):
    """What the three share: lambda per parameter, reweighting, masks, the density controller."""

    kind = ""
    slots: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, *, l1_factors=None, reweight_eps=None,
                 target_density=None, density_ramp=None, switch_density=0.5):
        defaults["l1"] = number(f"{self.kind}: l1", defaults["l1"], 0.0)
        super().__init__(params, defaults)
        self.l1_factors = check_l1_factors(l1_factors)
        if self.l1_factors:
            names = [n for g in self.param_groups for n in g.get("param_names", ())]
            if not names:
                raise InputError("l1_factors need parameter names: pass model.named_parameters()")
            check_factor_keys(self.l1_factors, names)
        self.reweight_eps = 0.0 if reweight_eps in (None, 0) else \
            number(f"{self.kind}: reweighting eps", reweight_eps, 0.0, lo_open=True)
        self.switch_density = number("switch density", switch_density, 0.0, 1.0)
        self.controller = None
        if target_density is not None:
            if density_ramp is None:
                raise InputError("target_density needs density_ramp: the steps over which to reach it")
            self.controller = DensityController(target_density, self.defaults["l1"],
                                                number("density ramp (steps)", density_ramp, 0.0, lo_open=True))
        self.steps_done = 0          # steps since construction (the controller's clock)
        self.epoch_steps = 0         # steps since the last end_epoch() (when density is checked)
        self.density = None          # the controller's last measurement

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    def _check_group(self, group: dict) -> None:
        group["lr"] = number(f"{self.kind}: learning rate", group["lr"], 0.0, lo_open=True)
        group["l1"] = number(f"{self.kind}: l1", group["l1"], 0.0)

    # ---- which parameters, which lambda ----------------------------------------------------------
    def _named(self):
        """(group, parameter, name or None) for every parameter."""
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for p, name in zip(group["params"], names):
                yield group, p, name

    @staticmethod
    def penalised(p: torch.Tensor) -> bool:
        """Weights (two or more dimensions) carry the l1 term; biases do not."""
        return p.dim() >= 2

    def _lambda(self, group: dict, p, name) -> float:
        if not self.penalised(p):
            return 0.0
        return group["l1"] * (l1_factor(self.l1_factors, name) if name is not None else 1.0)

    def _weights(self) -> list[torch.Tensor]:
        return [p for _, p, _ in self._named() if self.penalised(p)]

    # ---- state -------------------------------------------------------------------------------------
    def _state_of(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        if not st:
            st["step"] = 0
            for s in self.slots:
                st[s] = self._init_slot(s, p)
            st["rw_c"] = self._magnitude(p) if self.reweight_eps and self.penalised(p) else 1.0
        return st

    def _init_slot(self, slot: str, p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _magnitude(p: torch.Tensor) -> float:
        return mean_magnitude(p.detach().cpu().numpy())

    def refresh_reweighting(self) -> None:
        """Measure c (the mean nonzero magnitude) again for every weight already stepped."""
        if self.reweight_eps:
            for p in self._weights():
                if self.state[p]:
                    self.state[p]["rw_c"] = self._magnitude(p)

    def _reweight(self, p: torch.Tensor, st: dict):
        """r = c / (|w| + eps c) of the values before the update, or None for plain l1."""
        if not (self.reweight_eps and self.penalised(p)):
            return None
        c = st["rw_c"]
        return _div(_f32(c), p.abs() + _f32(self.reweight_eps * c))

    # ---- the step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._control_density()
        for group, p, name in self._named():
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise InputError(f"{self.kind} does not take sparse gradients")
            st = self._state_of(p)
            st["step"] += 1
            mask = st.get("mask")
            g = p.grad if mask is None else p.grad * mask
            self._update(p, g, st, group, self._lambda(group, p, name), self._reweight(p, st))
            if mask is not None:
                p.masked_fill_(~mask, 0.0)
        self.steps_done += 1
        self.epoch_steps += 1
        return loss

    def _update(self, p, g, st, group, lam: float, r) -> None:
        raise NotImplementedError

    # ---- density control and frozen supports --------------------------------------------------------
    def nonzero_count(self) -> tuple[int, int]:
        """(nonzero weights, all weights) over the penalised parameters."""
        ws = self._weights()
        return sum(int(torch.count_nonzero(p)) for p in ws), sum(p.numel() for p in ws)

    def _control_density(self) -> None:
        """The controller's lambda for this step (proxcl checks the density every 10 steps of an
        epoch); when shrinking stops, the zeros made so far are frozen."""
        ctl = self.controller
        if ctl is None:
            return
        if self.epoch_steps % DENSITY_CHECK_STEPS == 0:
            nnz, size = self.nonzero_count()
            self.density = nnz / size
            shrinking = ctl.l1 > 0
            if ctl.update(self.density, float(self.steps_done)) == 0 and shrinking:
                for p in self._weights():
                    self._freeze(p)
        for group in self.param_groups:
            group["l1"] = ctl.l1

    def _freeze(self, p: torch.Tensor) -> None:
        """From now on the support of p is its nonzeros (narrowed by an existing mask); the state
        off the support is dropped, as proxcl's compaction drops it with the entries."""
        st = self._state_of(p)
        keep = p != 0
        if "mask" in st:
            keep &= st["mask"]
        st["mask"] = keep
        for s in self.slots:
            st[s].masked_fill_(~keep, 0.0)

    def masks(self) -> dict:
        """{weight: bool mask} of the weights whose support is frozen."""
        return {p: self.state[p]["mask"] for p in self._weights() if "mask" in self.state[p]}

    @torch.no_grad()
    def end_epoch(self, final: bool = False) -> None:
        """What proxcl does after an epoch of sparse learning: with a target density and
        ``final``, cut the weights to exactly round(target x weights) by magnitude (globally);
        frozen weights drop their new zeros and weights whose density fell to ``switch_density``
        freeze their support; reweighting's c is measured again."""
        if final and self.controller is not None:
            self._cut_to(self.controller.target)
        for p in self._weights():
            frozen = "mask" in self.state[p]
            if frozen or (self.switch_density > 0 and
                          int(torch.count_nonzero(p)) <= self.switch_density * p.numel()):
                self._freeze(p)
        self.refresh_reweighting()
        self.epoch_steps = 0

    def _cut_to(self, density: float) -> None:
        """Keep the max(1, round(density x weights)) largest magnitudes of all weights together."""
        ws = self._weights()
        values = [p.detach().cpu().numpy().ravel() for p in ws]
        flat = np.abs(np.concatenate(values)) if values else np.zeros(0, np.float32)
        kept = keep_largest(flat, max(1, int(round(density * flat.size))))
        offset = 0
        for p, v in zip(ws, values):
            k = torch.from_numpy(kept[offset:offset + v.size]).to(p.device).view_as(p)
            offset += v.size
            p.masked_fill_(~k, 0.0)

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        d = super().state_dict()
        d["proxcl"] = {"steps_done": self.steps_done, "epoch_steps": self.epoch_steps,
                       "controller": self.controller.state() if self.controller else None}
        return d

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("proxcl", None) or {}
        super().load_state_dict(state_dict)
        for st in self.state.values():       # torch casts every state tensor to the parameter's type
            if "mask" in st:
                st["mask"] = st["mask"] != 0
        self.steps_done = int(extra.get("steps_done", 0))
        self.epoch_steps = int(extra.get("epoch_steps", 0))
        if self.controller is not None and extra.get("controller"):
            self.controller.load_state(extra["controller"])


class ProxSGD(_Proximal):
    """Prox-SGD with heavy-ball momentum mu: v <- mu v + g; w <- S_{lr lambda r}(w - lr v).
    With l1=0 it is proxcl's plain SGD (debiasing); momentum 0 keeps no state."""

    kind = "prox-sgd"

    def __init__(self, params, lr, l1=0.0, momentum=0.9, *, l1_factors=None, reweight_eps=None,
                 target_density=None, density_ramp=None, switch_density=0.5):
        super().__init__(params, {"lr": lr, "l1": l1, "momentum": momentum}, l1_factors=l1_factors,
                         reweight_eps=reweight_eps, target_density=target_density,
                         density_ramp=density_ramp, switch_density=switch_density)

    def _check_group(self, group):
        super()._check_group(group)
        group["momentum"] = number("prox-sgd: momentum", group["momentum"], 0.0, 1.0, hi_open=True)

    @property
    def slots(self):
        return ("momentum",) if any(g["momentum"] for g in self.param_groups) else ()

    def _update(self, p, g, st, group, lam, r):
        lr, mu = group["lr"], group["momentum"]
        if mu:
            v = _fma(_f32(mu), st["momentum"], g)
            st["momentum"].copy_(v)
        else:
            v = g
        z = _fma(-_f32(lr), v, p)
        tau = _f32(lr * lam)
        p.copy_(_shrink(z, tau if r is None else r * tau))


class ProxAdam(_Proximal):
    """Prox-Adam: Adam moments with bias correction, d = sqrt(v_hat) + eps,
    w <- S_{lr lambda r / d}(w - lr m_hat / d) (a per-coordinate threshold).  l1=0: plain Adam."""

    kind = "prox-adam"
    slots = ("m", "v")

    def __init__(self, params, lr, l1=0.0, betas=(0.9, 0.999), eps=1e-8, *, l1_factors=None,
                 reweight_eps=None, target_density=None, density_ramp=None, switch_density=0.5):
        super().__init__(params, {"lr": lr, "l1": l1, "betas": betas, "eps": eps}, l1_factors=l1_factors,
                         reweight_eps=reweight_eps, target_density=target_density,
                         density_ramp=density_ramp, switch_density=switch_density)

    def _check_group(self, group):
        super()._check_group(group)
        try:
            b1, b2 = group["betas"]
        except (TypeError, ValueError):
            raise InputError(f"prox-adam: betas must be a pair (beta1, beta2), got {group['betas']!r}") from None
        group["betas"] = tuple(number(f"prox-adam: {n}", b, 0.0, 1.0, hi_open=True)
                               for n, b in (("beta1", b1), ("beta2", b2)))
        group["eps"] = number("prox-adam: eps", group["eps"], 0.0, lo_open=True)

    def _update(self, p, g, st, group, lam, r):
        (b1, b2), lr, t = group["betas"], group["lr"], st["step"]
        rc1, rc2 = 1.0 / (1.0 - b1 ** t), 1.0 / (1.0 - b2 ** t)
        m = _fma(_f32(b1), st["m"], g * _f32(1.0 - b1))
        v = _fma(_f32(b2), st["v"], (g * g) * _f32(1.0 - b2))
        st["m"].copy_(m)
        st["v"].copy_(v)
        inv_d = _div(1.0, _sqrt(v * _f32(rc2)) + _f32(group["eps"]))
        z = _fms(p, (m * _f32(rc1)) * _f32(lr), inv_d)
        tau = inv_d * _f32(lr * lam)
        p.copy_(_shrink(z, tau if r is None else tau * r))


class RDA(_Proximal):
    """l1-RDA anchored at the first iterate w0: gbar_t = ((t-1)/t) gbar_{t-1} + g_t / t;
    w_{t+1} = S_{lambda r sqrt(t)/gamma}(w0 - (sqrt(t)/gamma) gbar_t).  The learning rate is not
    used (it is kept, as in proxcl, so that schedulers and checkpoints stay uniform)."""

    kind = "rda"
    slots = ("gbar", "w0")

    def __init__(self, params, l1=0.0, gamma=1.0, lr=1.0, *, l1_factors=None, reweight_eps=None,
                 target_density=None, density_ramp=None, switch_density=0.5):
        if target_density is not None:
            raise InputError("RDA: target_density is not supported (RDA recomputes every weight from "
                             "its averaged gradient, so lambda moves the density at once); give l1")
        super().__init__(params, {"lr": lr, "l1": l1, "gamma": gamma}, l1_factors=l1_factors,
                         reweight_eps=reweight_eps, target_density=target_density,
                         density_ramp=density_ramp, switch_density=switch_density)

    def _check_group(self, group):
        super()._check_group(group)
        group["gamma"] = number("rda: gamma", group["gamma"], 0.0, lo_open=True)

    def _init_slot(self, slot, p):
        return p.detach().clone(memory_format=torch.preserve_format) if slot == "w0" else super()._init_slot(slot, p)

    def _update(self, p, g, st, group, lam, r):
        t = st["step"]
        s = math.sqrt(t) / group["gamma"]
        gbar = _fma(_f32((t - 1) / t), st["gbar"], g * _f32(1.0 / t))
        st["gbar"].copy_(gbar)
        z = _fma(-_f32(s), gbar, st["w0"])
        tau = _f32(lam * s)
        p.copy_(_shrink(z, tau if r is None else r * tau))
