"""Debiasing in PyTorch: freeze the support of the weights and retrain the values on it.

proxcl debiases by storing every weight as CSR, so no new nonzero can appear.  Here a weight
stays dense and a mask does the same: ``freeze_support(model, optimizer)`` takes the nonzeros of
every weight (every parameter of two or more dimensions) as its support and, at every step of the
optimizer, zeroes the gradient off the support before the update and the values off the support
after it.  Any optimizer works (``torch.optim.Adam``, or ``proxcl.torch.ProxSGD`` with l1=0,
which is proxcl's own debiasing SGD); under DistributedDataParallel the masks act on the averaged
gradients, the same on every rank.
"""

from __future__ import annotations

import torch

from proxcl.errors import InputError

__all__ = ["FrozenSupport", "freeze_support"]


def _weights(source) -> list[torch.Tensor]:
    params = source.parameters() if isinstance(source, torch.nn.Module) else source
    out = []
    for p in params:
        p = p[1] if isinstance(p, tuple) else p
        if not isinstance(p, torch.Tensor):
            raise InputError(f"freeze_support takes a module or parameters, got {type(p).__name__}")
        if p.dim() >= 2:
            out.append(p)
    return out


class FrozenSupport:
    """The masks (p != 0) of a set of weights, applied around the steps of attached optimizers."""

    def __init__(self, weights):
        self.masks = {p: p.detach() != 0 for p in _weights(weights)}
        self._handles: list = []

    @torch.no_grad()
    def mask_grads(self) -> None:
        for p, m in self.masks.items():
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def mask_weights(self) -> None:
        for p, m in self.masks.items():
            p.masked_fill_(~m, 0.0)

    def attach(self, optimizer: torch.optim.Optimizer) -> "FrozenSupport":
        """Mask the gradients before and the weights after every ``optimizer.step()``."""
        self._handles.append(optimizer.register_step_pre_hook(lambda *_: self.mask_grads()))
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.mask_weights()))
        return self

    def remove(self) -> None:
        """Detach from every optimizer (the support is free again)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def nonzero_count(self) -> tuple[int, int]:
        """(entries on the support, all weights)."""
        return (sum(int(m.sum()) for m in self.masks.values()),
                sum(m.numel() for m in self.masks.values()))


def freeze_support(weights, optimizer: torch.optim.Optimizer | None = None) -> FrozenSupport:
    """Freeze the support of a module's weights (or of the given parameters) and attach the masks
    to ``optimizer`` if given; returns the :class:`FrozenSupport` (``.remove()`` undoes it)."""
    frozen = FrozenSupport(weights)
    return frozen.attach(optimizer) if optimizer is not None else frozen
