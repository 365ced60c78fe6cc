"""Learning-rate schedules and the l1 ramp: small pure-Python objects, evaluated per step.

Every schedule answers for a position in training given as (epoch, step_in_epoch,
steps_per_epoch), epochs counted from 0:

* ``ConstantLR(base_lr)``                         lr = base_lr
* ``StepLR(base_lr, every, gamma)``               lr = base_lr * gamma ** (epoch // every)
* ``CosineLR(base_lr, epochs, floor)``            from base_lr down to floor over ``epochs``,
  following half a cosine, smoothly inside each epoch; it stays at floor afterwards
* ``L1Ramp(l1, ramp_epochs)``                     lambda rises linearly over the first
  ``ramp_epochs`` epochs, step by step, and reaches l1 at the last step of the ramp;
  ``ramp_epochs=0`` keeps it constant

Build them with :func:`make_lr_schedule` and :func:`make_l1_schedule`; bad arguments raise a
one-line ValueError.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["LR_SCHEDULES", "ConstantLR", "StepLR", "CosineLR", "L1Ramp",
           "make_lr_schedule", "make_l1_schedule"]

LR_SCHEDULES = ("constant", "step", "cosine")


def _number(name: str, v, *, positive: bool = False) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
    return x


def _count(name: str, v, *, minimum: int) -> int:
    if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
            or v != int(v) or int(v) < minimum):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {v!r}")
    return int(v)


def _progress(epoch, step_in_epoch, steps_per_epoch) -> float:
    """Epochs done before this step, as a float (epoch + step_in_epoch / steps_per_epoch)."""
    e = _count("epoch", epoch, minimum=0)
    n = _count("steps_per_epoch", steps_per_epoch, minimum=1)
    s = _count("step_in_epoch", step_in_epoch, minimum=0)
    if s >= n:
        raise ValueError(f"step_in_epoch must be < steps_per_epoch ({n}), got {s}")
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
            raise ValueError(f"step schedule: gamma must be in (0, 1], got {gamma!r}")

    def lr_at(self, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 1) -> float:
        _progress(epoch, step_in_epoch, steps_per_epoch)
        return self.base_lr * self.gamma ** (int(epoch) // self.every)

    def __repr__(self) -> str:
        return f"StepLR({self.base_lr:g}, every={self.every}, gamma={self.gamma:g})"


class CosineLR:
    """lr = floor + (base_lr - floor) (1 + cos(pi x)) / 2 with x = min(1, progress / epochs)."""

    def __init__(self, base_lr, epochs, floor=0.0):
        self.base_lr = _number("learning rate", base_lr, positive=True)
        self.epochs = _count("epochs", epochs, minimum=1)
        self.floor = _number("cosine schedule: floor", floor)
        if self.floor > self.base_lr:
            raise ValueError(f"cosine schedule: floor ({floor!r}) must not exceed the learning rate "
                             f"({base_lr!r})")

    def lr_at(self, epoch: int, step_in_epoch: int = 0, steps_per_epoch: int = 1) -> float:
        x = min(1.0, _progress(epoch, step_in_epoch, steps_per_epoch) / self.epochs)
        return self.floor + (self.base_lr - self.floor) * 0.5 * (1.0 + math.cos(math.pi * x))

    def __repr__(self) -> str:
        return f"CosineLR({self.base_lr:g}, epochs={self.epochs}, floor={self.floor:g})"


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
    max(1, epochs // 3); ``gamma``, default 0.1); ``cosine`` (``floor``, default 0)."""
    key = str(kind).strip().lower()
    if key not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {kind!r} (choose from {', '.join(LR_SCHEDULES)})")
    epochs = _count("epochs", epochs, minimum=1)
    allowed = {"constant": (), "step": ("every", "gamma"), "cosine": ("floor",)}[key]
    extra = sorted(set(kw) - set(allowed))
    if extra:
        raise ValueError(f"{key} schedule takes no option {extra[0]!r}"
                         + (f" (options: {', '.join(allowed)})" if allowed else ""))
    if key == "constant":
        return ConstantLR(base_lr)
    if key == "step":
        return StepLR(base_lr, kw.get("every", max(1, epochs // 3)), kw.get("gamma", 0.1))
    return CosineLR(base_lr, epochs, kw.get("floor", 0.0))


def make_l1_schedule(l1, ramp_epochs=0) -> L1Ramp:
    """lambda constant (ramp_epochs=0) or ramped linearly from 0 over the first ramp_epochs."""
    return L1Ramp(l1, ramp_epochs)
