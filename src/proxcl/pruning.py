"""Magnitude pruning of a model's weights: one-shot (Han et al. 2015), the steps of gradual
magnitude pruning (Zhu & Gupta 2017), and the exact cut of proximal training's end.

Every cut keeps the ``keep`` largest-magnitude nonzero values of a group of weights (one layer,
or all weights together for the global scope), ties broken by position, so the count is exact.
Values are read from and written to the parameters' flat storage (``Param.data``: a dense
weight's values or a CSR weight's entries), so CSR weights are pruned in place too; the zeros
they get are dropped by the next ``Model.compact``.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

SCOPES = ("layer", "global")


def keep_largest(magnitudes: np.ndarray, keep: int) -> np.ndarray:
    """Boolean mask of the ``keep`` largest entries of ``magnitudes`` among the nonzero ones
    (all nonzero ones when there are fewer), ties broken by position."""
    mask = magnitudes != 0
    if keep >= int(mask.sum()):
        return mask
    order = np.argsort(-magnitudes, kind="stable")
    out = np.zeros(magnitudes.size, bool)
    out[order[:max(0, keep)]] = True
    return out


def _groups(params, scope: str) -> list[list]:
    if scope not in SCOPES:
        raise InputError(f"prune scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return [[p] for p in params] if scope == "layer" else [list(params)]


def prune(model, density: float, scope: str = "global", masks: dict | None = None) -> int:
    """Zero all but ``max(1, round(density * size))`` weights of each group (of every penalised
    layer, or of all of them together) by magnitude.  ``masks`` ({name: 0/1 float32 device array}
    of dense weights) are narrowed to the kept entries.  Returns the number of values zeroed."""
    params = [p for p in model.params if p.penalised]
    zeroed = 0
    for group in _groups(params, scope):
        values = [p.data.get() if p.data.size else np.zeros(0, np.float32) for p in group]
        flat = np.abs(np.concatenate(values)) if values else np.zeros(0, np.float32)
        keep = max(1, int(round(density * sum(p.size for p in group))))
        kept = keep_largest(flat, keep)
        offset = 0
        for p, v in zip(group, values):
            k = kept[offset:offset + v.size]
            offset += v.size
            drop = (v != 0) & ~k
            if not drop.any():
                continue
            zeroed += int(drop.sum())
            p.data.set(np.where(k, v, np.float32(0)).astype(np.float32))
            if masks is not None and p.name in masks:
                masks[p.name].set(k.astype(np.float32))
    return zeroed


def magnitude_prune(model, density: float, scope: str = "layer") -> None:
    """Zero all but the largest-magnitude ``density`` fraction of the penalised weights: of every
    layer (scope "layer", as in Han et al. 2015) or of all of them together (scope "global")."""
    prune(model, density, scope)


def nonzero_count(model) -> tuple[int, int]:
    """(nonzero penalised weights, all penalised weights), read back from the device."""
    nnz = size = 0
    for p in model.params:
        if p.penalised:
            nnz += p.nnz
            size += p.size
    return nnz, size
