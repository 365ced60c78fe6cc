"""Learning-rate schedules and the l1 ramp: small pure-Python objects, evaluated per step.

Every schedule answers for a position in training given as (epoch, step_in_epoch,
steps_per_epoch), epochs counted from 0:

* ``ConstantLR(base_lr)``                         lr = base_lr
* ``StepLR(base_lr, every, gamma)``               lr = base_lr * gamma ** (epoch // every)
* ``CosineLR(base_lr, epochs, floor, hold)``      base_lr for the first ``hold`` epochs (default 0),
  then down to floor by the end of ``epochs`` following half a cosine, smoothly inside each
  epoch; it stays at floor afterwards
* ``Warmup(schedule, epochs)``                     the schedule's lr times a linear ramp from
  1/steps to 1 over the first ``epochs`` (step by step); 0 epochs leaves it unchanged
* ``L1Ramp(l1, ramp_epochs)``                     lambda rises linearly over the first
  ``ramp_epochs`` epochs, step by step, and reaches l1 at the last step of the ramp;
  ``ramp_epochs=0`` keeps it constant
* ``CubicSparsity(final, start, end, initial)``   the sparsity of gradual magnitude pruning
  (Zhu & Gupta 2017): ``s(x) = final + (initial - final) (1 - (x - start) / (end - start))^3``
  between ``start`` and ``end`` (in epochs), ``initial`` before and ``final`` after
* ``DensityController(target, l1, ramp, start)``  lambda adapted during training so that the share
  of nonzero weights follows 1 - CubicSparsity from ``start`` (1: dense) down to ``target`` and
  then stays there

Build them with :func:`make_lr_schedule` and :func:`make_l1_schedule`; bad arguments raise a
one-line ValueError.
"""

from __future__ import annotations

import math

from .checks import number, whole
from .errors import InputError

__all__ = ["LR_SCHEDULES", "ConstantLR", "StepLR", "CosineLR", "Warmup", "L1Ramp", "CubicSparsity",
           "DensityController", "make_lr_schedule", "make_l1_schedule"]

LR_SCHEDULES = ("constant", "step", "cosine", "hold-cosine")


def _number(name: str, v, *, positive: bool = False) -> float:
    return number(name, v, 0.0, lo_open=positive)


def _count(name: str, v, *, minimum: int) -> int:
    return whole(name, v, minimum, integral_floats=True)


def _progress(epoch, step_in_epoch, steps_per_epoch) -> float:
    """Epochs done before this step, as a float (epoch + step_in_epoch / steps_per_epoch)."""
    e = _count("epoch", epoch, minimum=0)
    n = _count("steps_per_epoch", steps_per_epoch, minimum=1)
    s = _count("step_in_epoch", step_in_epoch, minimum=0)
    if s >= n:
        raise InputError(f"step_in_epoch must be < steps_per_epoch ({n}), got {s}")
    return e + s / n


class ConstantLR:
    def __init__(self, base_lr):
        self.base_lr = _number("learning rate", base_lr, positive=True)

    def lr_at(self, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 1) -> float:
        _progress(epoch, step_in_epoch, steps_per_epoch)
        return self.base_lr

    def __repr__(self) -> str:
        return f"ConstantLR({self.base_lr:g})"


class StepLR:
    """lr = base_lr * gamma ** (epoch // every): a drop by gamma every ``every`` epochs."""

    def __init__(self, base_lr, every, gamma=0.1):
        self.base_lr = _number("learning rate", base_lr, positive=True)
        self.every = _count("step schedule: every", every, minimum=1)
        self.gamma = _number("step schedule: gamma", gamma, positive=True)
        if self.gamma > 1:
            raise InputError(f"step schedule: gamma must be in (0, 1], got {gamma!r}")

    def lr_at(self, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 1) -> float:
        _progress(epoch, step_in_epoch, steps_per_epoch)
        return self.base_lr * self.gamma ** (int(epoch) // self.every)

    def __repr__(self) -> str:
        return f"StepLR({self.base_lr:g}, every={self.every}, gamma={self.gamma:g})"


class CosineLR:
    """lr = floor + (base_lr - floor) (1 + cos(pi x)) / 2 with
    x = clip((progress - hold) / (epochs - hold), 0, 1): constant for ``hold`` epochs, then half a
    cosine down to floor at ``epochs``."""

    def __init__(self, base_lr, epochs, floor=0.0, hold=0.0):
        self.base_lr = _number("learning rate", base_lr, positive=True)
        self.epochs = _count("epochs", epochs, minimum=1)
        self.floor = _number("cosine schedule: floor", floor)
        self.hold = number("cosine schedule: hold", hold, 0.0, float(self.epochs), hi_open=True)
        if self.floor > self.base_lr:
            raise InputError(f"cosine schedule: floor ({floor!r}) must not exceed the learning rate "
                             f"({base_lr!r})")

    def lr_at(self, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 1) -> float:
        done = _progress(epoch, step_in_epoch, steps_per_epoch)
        x = min(1.0, max(0.0, done - self.hold) / (self.epochs - self.hold))
        return self.floor + (self.base_lr - self.floor) * 0.5 * (1.0 + math.cos(math.pi * x))

    def __repr__(self) -> str:
        hold = f", hold={self.hold:g}" if self.hold else ""
        return f"CosineLR({self.base_lr:g}, epochs={self.epochs}, floor={self.floor:g}{hold})"


class Warmup:
    """lr = schedule's lr * min(1, (steps done including this one) / (epochs * steps_per_epoch)):
    a linear warm-up over the first ``epochs`` (a float; 0: none), which keeps large learning
    rates from diverging on an unlucky initialisation."""

    def __init__(self, schedule, epochs):
        self.schedule = schedule
        self.epochs = _number("warm-up epochs", epochs)

    def lr_at(self, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 1) -> float:
        lr = self.schedule.lr_at(epoch, step_in_epoch, steps_per_epoch)
        if not self.epochs:
            return lr
        done = _progress(epoch, step_in_epoch, steps_per_epoch) * steps_per_epoch + 1
        return lr * min(1.0, done / (self.epochs * steps_per_epoch))

    def __repr__(self) -> str:
        return f"Warmup({self.schedule!r}, epochs={self.epochs:g})"


class L1Ramp:
    """lambda = l1 * min(1, (steps done including this one) / (ramp_epochs * steps_per_epoch));
    constant l1 when ramp_epochs is 0."""

    def __init__(self, l1, ramp_epochs=0):
        self.l1 = _number("l1", l1)
        self.ramp_epochs = _count("l1 ramp epochs", ramp_epochs, minimum=0)

    def l1_at(self, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 1) -> float:
        done = _progress(epoch, step_in_epoch, steps_per_epoch)
        if not self.ramp_epochs:
            return self.l1
        frac = (done * steps_per_epoch + 1) / (self.ramp_epochs * steps_per_epoch)
        return self.l1 * min(1.0, frac)

    def __repr__(self) -> str:
        return f"L1Ramp({self.l1:g}, ramp_epochs={self.ramp_epochs})"


def make_lr_schedule(kind: str, base_lr, epochs, **kw):
    """A learning-rate schedule by name: ``constant``; ``step`` (``every`` epochs, default
    max(1, epochs // 3); ``gamma``, default 0.1); ``cosine`` (``floor``, default 0);
    ``hold-cosine`` (constant for ``hold`` epochs, default half of them, then cosine to ``floor``)."""
    key = str(kind).strip().lower()
    if key not in LR_SCHEDULES:
        raise InputError(f"unknown learning-rate schedule {kind!r} (choose from {', '.join(LR_SCHEDULES)})")
    epochs = _count("epochs", epochs, minimum=1)
    allowed = {"constant": (), "step": ("every", "gamma"), "cosine": ("floor",),
               "hold-cosine": ("floor", "hold")}[key]
    extra = sorted(set(kw) - set(allowed))
    if extra:
        raise InputError(f"{key} schedule takes no option {extra[0]!r}"
                         + (f" (options: {', '.join(allowed)})" if allowed else ""))
    if key == "constant":
        return ConstantLR(base_lr)
    if key == "step":
        return StepLR(base_lr, kw.get("every", max(1, epochs // 3)), kw.get("gamma", 0.1))
    if key == "cosine":
        return CosineLR(base_lr, epochs, kw.get("floor", 0.0))
    return CosineLR(base_lr, epochs, kw.get("floor", 0.0), kw.get("hold", epochs / 2))


def make_l1_schedule(l1, ramp_epochs=0) -> L1Ramp:
    """lambda constant (ramp_epochs=0) or ramped linearly from 0 over the first ramp_epochs."""
    return L1Ramp(l1, ramp_epochs)


class CubicSparsity:
    """Sparsity s(x) at training progress x (epochs, a float) of gradual magnitude pruning:
    ``initial`` until ``start``, then ``final + (initial - final) (1 - (x - start) / (end - start))^3``,
    and ``final`` from ``end`` on (Zhu & Gupta 2017, eq. 1, with time in epochs)."""

    def __init__(self, final, start, end, initial=0.0):
        self.final = _number("final sparsity", final)
        self.initial = _number("initial sparsity", initial)
        self.start = _number("pruning start", start)
        self.end = _number("pruning end", end)
        if not (self.initial <= self.final < 1.0):
            raise InputError(f"sparsities must satisfy 0 <= initial ({initial!r}) <= final ({final!r}) < 1")
        if self.end <= self.start:
            raise InputError(f"pruning must end ({end!r}) after it starts ({start!r})")

    def at(self, x: float) -> float:
        if x <= self.start:
            return self.initial
        if x >= self.end:
            return self.final
        f = 1.0 - (x - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * f ** 3

    def __repr__(self) -> str:
        return (f"CubicSparsity({self.final:g}, start={self.start:g}, end={self.end:g}, "
                f"initial={self.initial:g})")


class DensityController:
    """Adapts lambda so that the density (share of nonzero weights) follows a target path.

    The path is ``1 - CubicSparsity(1 - target, 0, ramp, 1 - start)``: from ``start`` (dense, or
    the density of a sparse initialisation) down to ``target`` over the first ``ramp`` epochs
    along Zhu & Gupta's cubic, then ``target``.  At every :meth:`update` with
    the measured density ``d`` and the path's ``d*``, ``e = clip(log(d / d*), -1, 1)`` and

        I <- I + ki e;    lambda = l1 * exp(I + kp e)  if d > d*,  else 0

    a proportional-integral controller on log lambda while the model is denser than the path, and
    no shrinkage at all once it is not: soft-thresholding with lambda = 0 zeroes nothing, so the
    density stops falling at once (a CSR weight's support never grows back, and reweighted l1
    keeps removing small weights for a while even at a small lambda, so a lambda that only
    decreases would carry the density far below the target).  The integral keeps the lambda at
    which the density last followed the path.  lambda stays within [``l1_min``, ``l1_max``]."""

    def __init__(self, target, l1, ramp, kp=1.0, ki=0.02, l1_min=1e-8, l1_max=1.0, start=1.0):
        self.target = _number("target density", target, positive=True)
        if self.target > 1:
            raise InputError(f"target density must be in (0, 1], got {target!r}")
        self.base = _number("l1", l1, positive=True)
        self.kp = _number("controller kp", kp)
        self.ki = _number("controller ki", ki, positive=True)
        self.l1_min, self.l1_max = float(l1_min), float(l1_max)
        start = _number("start density", start, positive=True)
        if not self.target <= start <= 1:
            raise InputError(f"the density path must start between the target ({target!r}) and 1, got {start!r}")
        self.path = CubicSparsity(1.0 - self.target, 0.0, _number("density ramp", ramp, positive=True),
                                  initial=1.0 - start)
        self.integral = 0.0
        self.l1 = self.base

    def density_at(self, x: float) -> float:
        """The target density after ``x`` epochs."""
        return 1.0 - self.path.at(x)

    def update(self, density: float, x: float) -> float:
        """Adjust lambda for a measured ``density`` after ``x`` epochs; returns the new lambda."""
        err = max(-1.0, min(1.0, math.log(max(density, 1e-12) / self.density_at(x))))
        if err <= 0:
            self.l1 = 0.0
            return self.l1
        lo, hi = math.log(self.l1_min / self.base), math.log(self.l1_max / self.base)
        self.integral = min(hi, max(lo, self.integral + self.ki * err))
        self.l1 = min(self.l1_max, max(self.l1_min, self.base * math.exp(self.integral + self.kp * err)))
        return self.l1

    def state(self) -> dict:
        return {"integral": self.integral, "l1": self.l1}

    def load_state(self, d: dict) -> None:
        self.integral, self.l1 = float(d["integral"]), float(d["l1"])

    def __repr__(self) -> str:
        return f"DensityController(target={self.target:g}, l1={self.l1:g}, ramp={self.path.end:g})"
