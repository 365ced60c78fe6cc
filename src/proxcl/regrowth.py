"""Regrowth: new entries for CSR weights, so that a support that only shrinks under the proximal
step can also gain connections (as in the dynamic sparse training of SET and RigL).

:func:`regrow` adds to every penalised CSR weight ``fraction`` of its stored entries as new
entries of value zero, chosen

* ``random``: uniformly among the positions the support lacks (SET);
* ``gradient``: where the dense gradient of the last backward pass is largest in magnitude
  (RigL).  The gradient of the missing connections is computed a block of rows at a time
  (``Layer.grad_rows``) into a buffer of at most max(columns, stored entries) floats, read
  back, and the best candidates kept on the host, so no weight-sized buffer exists.

The new support is built on the host from the old one's index arrays (O(nnz) host memory), the
values and every per-value optimizer state are gathered onto it on the device (zero for the new
entries), and the gradient is made anew.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .ops import CSRMatrix, CSRPattern, gather
from .ops.sparse import index_dtype

__all__ = ["KINDS", "regrow", "merge_support", "random_positions", "gradient_positions"]

KINDS = ("random", "gradient")


def merge_support(indptr: np.ndarray, indices: np.ndarray, new_pos: np.ndarray, shape) -> tuple:
    """The union of a CSR support and new flat positions (i*k + j, none already in it):
    (indptr, indices, src) with src[q] = the old position of entry q, or -1 for a new one."""
    m, k = int(shape[0]), int(shape[1])
    old_rows = np.repeat(np.arange(m, dtype=np.int64), np.diff(indptr))
    pos = np.concatenate([old_rows * k + indices.astype(np.int64), np.asarray(new_pos, np.int64)])
    src = np.concatenate([np.arange(indices.size, dtype=np.int64), np.full(len(new_pos), -1, np.int64)])
    order = np.argsort(pos, kind="stable")
    pos, src = pos[order], src[order]
    if pos.size > 1 and np.any(np.diff(pos) == 0):
        raise InputError("regrowth: a new position is already in the support")
    new_indptr = np.zeros(m + 1, np.int32)
    np.cumsum(np.bincount(pos // k, minlength=m), out=new_indptr[1:])
    return new_indptr, (pos % k).astype(np.int32), src.astype(np.int32)


def random_positions(rng: np.random.Generator, indptr: np.ndarray, indices: np.ndarray, shape,
                     count: int) -> np.ndarray:
    """``count`` flat positions drawn uniformly among those the support lacks."""
    m, k = int(shape[0]), int(shape[1])
    free = k - np.diff(indptr).astype(np.int64)
    count = int(min(count, free.sum()))
    per_row = rng.multivariate_hypergeometric(free, count) if count else np.zeros(m, np.int64)
    out = []
    for i in np.flatnonzero(per_row):
        missing = np.setdiff1d(np.arange(k), indices[indptr[i]:indptr[i + 1]], assume_unique=True)
        out.append(i * k + rng.choice(missing, int(per_row[i]), replace=False).astype(np.int64))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def gradient_positions(layer, indptr: np.ndarray, indices: np.ndarray, shape, count: int,
                       block_floats: int) -> np.ndarray:
    """The ``count`` flat positions outside the support with the largest dense-gradient
    magnitude (ties to the lower position), computed ``block_floats // k`` rows at a time."""
    m, k = int(shape[0]), int(shape[1])
    rows = max(1, min(m, block_floats // max(k, 1)))
    buf = layer.ws.get(("scratch", "grad_rows"), (rows, k))
    best_pos = np.zeros(0, np.int64)
    best_val = np.zeros(0, np.float32)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        blk = buf if r1 - r0 == rows else layer.ws.get(("scratch", "grad_rows"), (r1 - r0, k))
        layer.grad_rows(r0, r1, blk)
        mag = np.abs(blk.get()).reshape(-1)
        taken = np.repeat(np.arange(r1 - r0), np.diff(indptr[r0:r1 + 1])) * k + indices[indptr[r0]:indptr[r1]]
        mag[taken] = -1.0
        pos = np.arange(r0 * k, r1 * k, dtype=np.int64)
        keep = mag >= 0
        cand_pos = np.concatenate([best_pos, pos[keep]])
        cand_val = np.concatenate([best_val, mag[keep]])
        if cand_val.size > count:
            order = np.lexsort((cand_pos, -cand_val))[:count]
            cand_pos, cand_val = cand_pos[order], cand_val[order]
        best_pos, best_val = cand_pos, cand_val
    return np.sort(best_pos)


def regrow(model, opt, kind: str, fraction: float, rng: np.random.Generator) -> dict[str, int]:
    """Add ``round(fraction * stored)`` new zero entries to every penalised CSR weight of
    ``model`` (at least one while the support lacks any); ``gradient`` needs a backward pass
    just before (``model.train_batch``).  The optimizer's state follows.  Returns {name: entries
    added}."""
    if kind not in KINDS:
        raise InputError(f"regrowth must be one of {', '.join(KINDS)}, got {kind!r}")
    dev = model.device
    layers = {layer.weight.name: layer for layer in model.layers if getattr(layer, "weight", None) is not None}
    added = {}
    for p in model.params:
        if not (p.penalised and p.is_sparse):
            continue
        w = p.value
        m, k = w.shape
        count = min(max(1, int(round(fraction * w.nnz))), m * k - w.nnz)
        if count <= 0:
            continue
        indptr, indices, _ = w.to_arrays()
        if kind == "random":
            new = random_positions(rng, indptr, indices, w.shape, count)
        else:
            new = gradient_positions(layers[p.name], indptr, indices, w.shape, count, max(k, w.nnz))
        if not new.size:
            continue
        new_indptr, new_indices, src = merge_support(indptr, indices, new, w.shape)
        src_dev = dev.to_device(src, np.int32, category="weights")
        cat = w.pattern.category
        pattern = CSRPattern(dev, w.shape, dev.to_device(new_indptr, np.int32, category=cat),
                             dev.to_device(new_indices, index_dtype(w.shape), category=cat), new_indices.size)
        p.release_grad()
        w.pattern.drop_derived()
        p.set_value(CSRMatrix(pattern, gather(dev, w.data, src_dev)))
        del w
        opt.remap(p.name, src_dev)
        added[p.name] = int(new.size)
    return added
