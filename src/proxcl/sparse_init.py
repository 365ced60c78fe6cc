"""Sparse initialisation: penalised weights that start as random CSR supports, so that a model
is trained on CSR from its first step and its dense weights never exist on the device.

* :func:`layer_densities` spreads an overall density over the layers as the Erdős–Rényi-kernel
  rule of the dynamic sparse training literature does (Evci et al. 2020, RigL): a layer's density
  is proportional to ``sum(dims) / prod(dims)`` of its weight shape (``(out, in)`` or ``(out, c,
  kh, kw)``), so large layers get sparser and small ones denser; a layer that would exceed 1 is
  dense and the rest is spread again.  The layers' nonzeros add up to the overall density.
* :func:`random_support` draws a CSR support with an exact entry count: the entries per row from
  a multivariate hypergeometric law (as if positions were drawn without replacement from the
  whole matrix), then the columns of each row without replacement.  Host memory is O(nnz + rows
  + columns); no array of the matrix's size is ever made.
* :func:`random_csr_init` is the ``weight_init`` of proxcl.layers: values uniform in
  ``±1 / sqrt(d * fan_in)``, PyTorch's default bound for the fan-in that a unit has on average
  at density d, so activations keep the dense init's scale.  A layer whose density is above the
  switch density (the small ones, which the rule above makes dense or nearly so) is stored dense,
  zeros off its support, and turns CSR when it thins out to the switch density, as in any
  proximal run: a CSR entry costs its index arrays, gradient and state too, so above about half
  density the dense form is the smaller one.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError
from .ops import CSRMatrix, HostCSR

__all__ = ["layer_densities", "random_support", "random_csr_init"]


def layer_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-weight densities (Erdős–Rényi-kernel) whose nonzeros add up to ``density`` of all
    the weights.  ``shapes``: {name: PyTorch weight shape}."""
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise InputError(f"init density must be in (0, 1], got {density!r}")
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    score = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        if not rest:
            break
        eps = (budget - sum(sizes[n] for n in dense)) / sum(score[n] * sizes[n] for n in rest)
        over = [n for n in rest if eps * score[n] > 1.0]
        if not over:
            break
        dense.update(over)
    return {n: 1.0 if n in dense else eps * score[n] for n in shapes}


def random_support(rng: np.random.Generator, shape: tuple[int, int], nnz: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int32 [m+1], indices int32 [nnz]) of a uniformly random support of exactly
    ``nnz`` entries of an m x k matrix, column indices sorted within each row."""
    m, k = int(shape[0]), int(shape[1])
    nnz = int(nnz)
    if not 0 <= nnz <= m * k:
        raise InputError(f"a {m}x{k} support cannot have {nnz} entries")
    counts = rng.multivariate_hypergeometric(np.full(m, k, np.int64), nnz) if m else np.zeros(0, np.int64)
    indptr = np.zeros(m + 1, np.int32)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, np.int32)
    for i in np.flatnonzero(counts):
        indices[indptr[i]:indptr[i + 1]] = np.sort(rng.choice(k, int(counts[i]), replace=False))
    return indptr, indices


def random_csr_init(densities: dict[str, float], device, switch_density: float = 1.0):
    """A ``weight_init`` for proxcl.layers: weights named in ``densities`` start on random
    supports of round(d * size) entries (at least one) with uniform values of the bound above,
    as CSR matrices, or dense (zeros off the support) when d is above ``switch_density``;
    other weights get the default dense init."""

    def init(name, shape, matrix_shape, fan_in, rng):
        d = densities.get(name)
        if d is None:
            return None
        m, k = matrix_shape
        nnz = max(1, min(m * k, int(round(d * m * k))))
        indptr, indices = random_support(rng, (m, k), nnz)
        bound = 1.0 / math.sqrt(max(nnz / m, 1.0)) if m else 0.0   # the mean fan-in of a unit: d * fan_in
        values = rng.uniform(-bound, bound, size=nnz).astype(np.float32)
        if nnz <= switch_density * m * k:
            return CSRMatrix.from_arrays(indptr, indices, values, (m, k), device, category="weights")
        return device.to_device(HostCSR(indptr, indices, values, (m, k)).to_dense(), category="weights")

    return init
