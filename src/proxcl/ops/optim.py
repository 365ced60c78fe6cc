"""Host side of ``kernels/optim.cl``: the fused optimizer updates and the pruning mask.

Every function updates flat float32 device arrays of ``n`` values in place with one launch.
A work-item handles ``VEC`` values with vector loads (``Device.tuning["vec"]``) in work-groups of
``Device.tuning["ew_local"]``; the kernels are memory-bound.

``reweight`` (for the three proximal updates) is ``None`` for plain l1, or ``(c, eps)`` for the
reweighted l1 threshold ``tau * c / (|w| + eps c)`` with ``w`` the value before the update.
"""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla

from ..runtime import Device

_FILE = "optim.cl"


def _reweight_args(reweight) -> tuple:
    if reweight is None:
        return np.int32(0), 1.0, 1.0
    c, eps = reweight
    return np.int32(1), float(c), float(eps) * float(c)


def _launch(dev: Device, name: str, n: int, *args) -> None:
    vec = dev.tuning["vec"]
    dev.launch(dev.kernel(_FILE, name, VEC=vec), (-(-n // vec),), (dev.tuning["ew_local"],), n, *args)


def prox_sgd(dev: Device, w: cla.Array, g: cla.Array, v: cla.Array | None, *, lr: float,
             momentum: float, tau: float, reweight=None) -> None:
    """v <- momentum v + g (v None: no momentum);  w <- S_{tau r}(w - lr v)."""
    _launch(dev, "prox_sgd", w.size, w, g, v, lr, momentum, tau, *_reweight_args(reweight))


def prox_adam(dev: Device, w: cla.Array, g: cla.Array, m: cla.Array, v: cla.Array, *, lr: float,
              beta1: float, beta2: float, rc1: float, rc2: float, eps: float, lr_lam: float,
              reweight=None) -> None:
    """Adam moments m, v; w <- S_{lr_lam r / d}(w - lr m rc1 / d), d = sqrt(v rc2) + eps."""
    _launch(dev, "prox_adam", w.size, w, g, m, v, lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2,
            rc1, rc2, eps, lr_lam, *_reweight_args(reweight))


def rda(dev: Device, w: cla.Array, g: cla.Array, gbar: cla.Array, w0: cla.Array, *, a: float,
        b: float, s: float, tau: float, reweight=None) -> None:
    """gbar <- a gbar + b g;  w <- S_{tau r}(w0 - s gbar)."""
    _launch(dev, "rda", w.size, w, g, gbar, w0, a, b, s, tau, *_reweight_args(reweight))


def apply_mask(dev: Device, x: cla.Array, mask: cla.Array) -> None:
    """x <- x * mask (a 0/1 float32 mask of the same size)."""
    if x.size:
        _launch(dev, "apply_mask", x.size, x, mask)
