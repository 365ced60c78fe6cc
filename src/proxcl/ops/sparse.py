"""The host side of ``kernels/csr.cl``: CSR matrices on an OpenCL device and their products,
and the host-side CSR helpers (``HostCSR``, :func:`entry_rows`, :func:`csr_problem`).  Owns
csr.cl's build defines and work sizes (``spmm_*``, ``sddmm_*``, ``scan_local`` of
:class:`proxcl.tuning.Tuning`).

``CSRMatrix`` = a support (``CSRPattern``: shape, Ap, Aj, plus derived structures built once
per support) and a values array.  Products:

* ``W @ X``      SpMM, X feature-major [k, n] -> [m, n]           (optional bias + ReLU)
* ``W.T @ D``    SpMM on the transposed structure, D [m, n] -> [k, n]
* ``W.sddmm(A, B)``  values on W's support: G[i, j] = A[i, :] . B[j, :]

The transposed structure (Tp, Ti, Pm) is a stable sort of the entries by column, made once
per support on the host; entries stay in ascending row order inside each column, so every
product is deterministic (no atomics).  A support only changes by ``compact`` (dropping
entries that became exactly zero) or ``from_dense``, each of which makes a new pattern.

No work-item loops over more than the device's ``loop_max`` (llvmpipe ends a work-item's loops
after 65,535 iterations): a row with more entries than that is cut into pieces (:func:`row_pieces`,
made once per support on the host) whose partial products ``csr_sum_pieces`` adds; SDDMM's dot
products and from_dense's rows are cut into column slices; the scan runs in blocks.
"""

from __future__ import annotations

from functools import cached_property
from typing import NamedTuple

import numpy as np
import pyopencl.array as cla

from ..errors import InputError
from ..memory import category_of
from ..runtime import Device, default_device
from .dense import sum_slices

_FILE = "csr.cl"
_I32_MAX = np.iinfo(np.int32).max
_U16_MAX = np.iinfo(np.uint16).max


def index_dtype(shape) -> np.dtype:
    """The device type of a CSR matrix's index arrays (column indices Aj, the row of every entry
    Ai, the transposed structure's row indices Ti): uint16 when both dimensions fit (half the
    bytes), else int32.  csr.cl's kernels read them through its IDX type."""
    return np.dtype(np.uint16 if max(int(shape[0]), int(shape[1])) <= _U16_MAX else np.int32)


def _idx_define(dtype) -> int:
    """csr.cl's IDX16 define for index arrays of this type."""
    return int(np.dtype(dtype) == np.uint16)

# GPU form of SDDMM: from this many columns on (a convolution's weight gradient has
# n = batch x output pixels, 73,728 for LeNet-5's conv1), each entry gets this many lanes.
SDDMM_WIDE_N = 2048
SDDMM_WIDE_LANES = 64


def entry_rows(indptr) -> np.ndarray:
    """The row of every entry of a CSR matrix with row pointers ``indptr`` (int64, host)."""
    indptr = np.asarray(indptr)
    return np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))


def csr_problem(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                shape: tuple[int, int], nnz: int) -> str | None:
    """Why these host CSR arrays are not canonical, or None: lengths m+1 / nnz / nnz, indptr
    0 .. nnz non-decreasing, column indices in range and strictly increasing within each row,
    values finite."""
    m, n = shape
    if indptr.shape != (m + 1,) or indices.shape != (nnz,) or data.shape != (nnz,):
        return (f"CSR arrays have lengths {indptr.size}/{indices.size}/{data.size}, "
                f"expected {m + 1}/{nnz}/{nnz}")
    if indptr[0] != 0:
        return f"indptr starts at {int(indptr[0])}, not 0"
    if indptr[-1] != nnz:
        return f"indptr ends at {int(indptr[-1])}, not at nnz = {nnz}"
    steps = np.diff(indptr.astype(np.int64))
    if steps.size and steps.min() < 0:
        row = int(np.argmax(steps < 0))
        return f"indptr decreases at row {row}"
    if nnz:
        why = _column_problem(indptr, indices.astype(np.int64), steps, n, nnz)
        if why:
            return why
    if not np.isfinite(data).all():
        return "values not finite (NaN or inf)"
    return None


def _column_problem(indptr, cols, steps, n: int, nnz: int) -> str | None:
    if cols.min() < 0 or cols.max() >= n:
        bad = int(cols[(cols < 0) | (cols >= n)][0])
        return f"column index {bad} out of range 0..{n - 1}"
    inner = np.ones(nnz, bool)          # inner[k]: entry k is in the same row as entry k-1
    starts = indptr[:-1][steps > 0]
    inner[starts] = False
    bad = inner[1:] & (np.diff(cols) <= 0)
    if bad.any():
        k = int(np.argmax(bad)) + 1
        row = int(np.searchsorted(indptr, k, side="right")) - 1
        return f"column indices not strictly increasing in row {row}"
    return None


class HostCSR(NamedTuple):
    """A CSR matrix in host memory (no scipy needed): indptr[m+1], indices[nnz], data[nnz]."""
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, self.data.dtype if self.data.size else np.float32)
        out[entry_rows(self.indptr), self.indices] = self.data
        return out

    def positions(self) -> np.ndarray:
        """The flat dense position i*k + j of every entry (int64)."""
        return entry_rows(self.indptr) * self.shape[1] + self.indices


class RowPieces(NamedTuple):
    """The rows of a CSR support cut into pieces of at most ``limit`` entries (the entries stay
    where they are): piece s is entries [Qp[s], Qp[s+1]), row i is pieces [Rp[i], Rp[i+1])
    (none for an empty row).  Qp and Rp on the device, Rp also on the host."""
    count: int
    qp: cla.Array
    rp: cla.Array
    rp_host: np.ndarray


def row_pieces(indptr: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(Qp, Rp) of :class:`RowPieces` for host row pointers ``indptr``: every row cut into
    pieces of ``limit`` entries, the last one shorter."""
    indptr = np.asarray(indptr, np.int64)
    lens = np.diff(indptr)
    per_row = -(-lens // limit)
    rp = np.zeros(lens.size + 1, np.int64)
    np.cumsum(per_row, out=rp[1:])
    row = np.repeat(np.arange(lens.size), per_row)
    starts = indptr[:-1][row] + (np.arange(rp[-1]) - rp[:-1][row]) * limit
    return np.append(starts, indptr[-1]).astype(np.int32), rp.astype(np.int32)


class CSRPattern:
    """The support of a CSR matrix on the device: shape, Ap[m+1] (int32), Aj[nnz] (of
    :func:`index_dtype`), and the structures derived from them, built on first use in the memory
    category of Ap (weights, for a layer's weight)."""

    def __init__(self, device: Device, shape, indptr: cla.Array, indices: cla.Array, nnz: int):
        self.device = device
        self.shape = (int(shape[0]), int(shape[1]))
        if indices.dtype != index_dtype(self.shape) or indptr.dtype != np.int32:
            raise InputError(f"CSR pattern {self.shape}: indptr must be int32 and indices "
                             f"{index_dtype(self.shape).name}, got {indptr.dtype} and {indices.dtype}")
        self.indptr = indptr
        self.indices = indices
        self.nnz = int(nnz)
        self._rows = None
        self._transposed = None
        self._pieces: dict = {}

    @property
    def idx(self) -> int:
        """csr.cl's IDX16 define for this pattern's index arrays."""
        return _idx_define(self.indices.dtype)

    @property
    def category(self) -> str:
        return category_of(self.indptr, "weights")

    @property
    def rows(self) -> cla.Array:
        """Ai[nnz]: the row of every entry (built on first use)."""
        if self._rows is None:
            dev, m = self.device, self.shape[0]
            self._rows = dev.empty((self.nnz,), self.indices.dtype, category=self.category)
            if self.nnz:
                dev.launch(dev.kernel(_FILE, "csr_row_of_entry", IDX16=self.idx), (self.nnz,),
                           (dev.tuning.ew_local,), m, self.indptr, self._rows)
        return self._rows

    @property
    def transposed(self) -> tuple[cla.Array, cla.Array, cla.Array]:
        """(Tp[k+1], Ti[nnz], Pm[nnz]): CSR of the transpose, values reached through Pm."""
        if self._transposed is None:
            dev, cat = self.device, self.category
            m, k = self.shape
            aj = self.indices.get() if self.nnz else np.zeros(0, np.int32)
            # the row of each entry, on the host (no device copy of Ai is made for this)
            ai = entry_rows(self.indptr.get()).astype(self.indices.dtype)
            order = np.argsort(aj, kind="stable").astype(np.int32)
            tp = np.zeros(k + 1, np.int32)
            np.cumsum(np.bincount(aj, minlength=k), out=tp[1:])
            self._tp_host = tp
            self._transposed = (dev.to_device(tp, np.int32, category=cat),
                                dev.to_device(ai[order], self.indices.dtype, category=cat),
                                dev.to_device(order, np.int32, category=cat))
        return self._transposed

    def drop_derived(self) -> None:
        """Free the derived structures (the row of every entry, the transposed structure, the
        rows' pieces); they are built again on first use.  A support about to be replaced frees
        them first, so that the old and the new support are not both held in full."""
        self._rows = None
        self._transposed = None
        self._pieces = {}

    @cached_property
    def row_max(self) -> int:
        """The most entries of a row (read back once per support)."""
        return int(np.diff(self.indptr.get()).max()) if self.nnz and self.shape[0] else 0

    def pieces(self, limit: int, transposed: bool = False) -> RowPieces | None:
        """The rows (of the transpose, with ``transposed``) cut into pieces of at most ``limit``
        entries, or None when no row is longer (made once per support and limit, in the
        support's memory category)."""
        key = (limit, transposed)
        if key not in self._pieces:
            got = None
            if self.nnz > limit:   # else no row can be longer
                if transposed:
                    self.transposed
                    ptr = self._tp_host
                longest = int(np.diff(ptr).max()) if transposed else self.row_max
                if longest > limit:
                    qp, rp = row_pieces(ptr if transposed else self.indptr.get(), limit)
                    if np.diff(rp).max() > self.device.tuning.loop_max:   # csr_sum_pieces' loop
                        raise InputError(f"a CSR row of more than {limit} x "
                                         f"{self.device.tuning.loop_max} entries")
                    dev, cat = self.device, self.category
                    got = RowPieces(int(qp.size - 1), dev.to_device(qp, np.int32, category=cat),
                                    dev.to_device(rp, np.int32, category=cat), rp)
            self._pieces[key] = got
        return self._pieces[key]

    @property
    def nbytes(self) -> int:
        """Bytes of Ap and Aj (not the derived structures)."""
        return 4 * (self.shape[0] + 1) + self.indices.dtype.itemsize * self.nnz


class CSRMatrix:
    """A float32 CSR matrix whose arrays live on an OpenCL device."""

    def __init__(self, pattern: CSRPattern, data: cla.Array):
        if data.shape != (pattern.nnz,) or data.dtype != np.float32:
            raise InputError(f"values must be float32 ({pattern.nnz},), got {data.dtype} {data.shape}")
        self.pattern = pattern
        self.data = data

    # ---- construction ------------------------------------------------------
    @classmethod
    def from_arrays(cls, indptr, indices, data, shape, device: Device | None = None, *,
                    category: str = "weights") -> "CSRMatrix":
        """From host arrays in canonical CSR form (sorted, unique column indices per row), in a
        memory category (proxcl.memory)."""
        dev = device or default_device()
        m, k = (int(shape[0]), int(shape[1]))
        if m < 0 or k < 0 or m > _I32_MAX or k > _I32_MAX:
            raise InputError(f"CSR shape {shape} out of range")
        indptr = np.asarray(indptr)
        indices = np.asarray(indices)
        data = np.asarray(data)
        nnz = int(indptr[-1]) if indptr.size else 0
        if indptr.shape != (m + 1,) or indices.shape != (nnz,) or data.shape != (nnz,):
            raise InputError("CSR arrays have inconsistent shapes")
        if nnz > _I32_MAX:
            raise InputError("CSR matrix has more than 2^31-1 nonzeros")
        if nnz and (int(indices.min()) < 0 or int(indices.max()) >= k):
            bad = int(indices[(indices < 0) | (indices >= k)][0])
            raise InputError(f"column index {bad} out of range 0..{k - 1}")
        pattern = CSRPattern(dev, (m, k), dev.to_device(indptr, np.int32, category=category),
                             dev.to_device(indices, index_dtype((m, k)), category=category), nnz)
        return cls(pattern, dev.to_device(data, np.float32, category=category))

    @classmethod
    def from_host(cls, h: HostCSR, device: Device | None = None, *, category: str = "weights") -> "CSRMatrix":
        return cls.from_arrays(h.indptr, h.indices, h.data, h.shape, device, category=category)

    @classmethod
    def from_scipy(cls, mat, device: Device | None = None) -> "CSRMatrix":
        """From any scipy.sparse matrix or array (converted to canonical CSR float32)."""
        csr = mat.tocsr()
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        return cls.from_arrays(csr.indptr, csr.indices, csr.data, csr.shape, device)

    @classmethod
    def from_dense(cls, a, device: Device | None = None, threshold: float = 0.0,
                   return_src: bool = False, *, category: str = "weights"):
        """Keep the entries with |a[i, j]| > threshold, converted on the device (count per row,
        scan, fill).  a: numpy or device array [m, k].  With return_src, also return
        Src[nnz] (int32 device array): the flat dense position i*k + j of every entry.  The
        matrix is made in ``category``."""
        dev = device or default_device()
        a = dev.to_device(a, category=category)
        if a.ndim != 2:
            raise InputError(f"from_dense needs a 2-D array, got shape {a.shape}")
        m, k = a.shape
        if m * k > _I32_MAX:
            raise InputError("from_dense: matrix has more than 2^31-1 elements")
        # rows longer than the loop budget go in pieces of columns (piece i*S + z of the scan)
        s = max(1, -(-k // dev.tuning.loop_max))
        gsize, lsize = ((m,), (dev.tuning.ew_local,)) if s == 1 else ((m, s), (dev.tuning.ew_local, 1))
        split = {"PX_SPLIT": 1} if s > 1 else {}
        ptr = _scan_rows(dev, m * s, category, lambda cnt: dev.launch(
            dev.kernel(_FILE, "dense_count_rows", **split), gsize, lsize, m, k, a, float(threshold), cnt))
        nnz = int(ptr[m * s:].get()[0])
        it = index_dtype((m, k))
        aj = dev.empty((nnz,), it, category=category)
        ax = dev.empty((nnz,), np.float32, category=category)
        src = dev.empty((nnz,), np.int32, category=category) if return_src else None
        if nnz:
            dev.launch(dev.kernel(_FILE, "dense_fill_rows", IDX16=_idx_define(it), **split), gsize, lsize,
                       m, k, a, float(threshold), ptr, aj, ax, src)
        indptr = ptr if s == 1 else dev.to_device(ptr.get()[::s], np.int32, category=category)
        w = cls(CSRPattern(dev, (m, k), indptr, aj, nnz), ax)
        return (w, src) if return_src else w

    def with_values(self, data) -> "CSRMatrix":
        """A matrix on the same support (shared pattern) with other values."""
        return CSRMatrix(self.pattern, self.device.to_device(data, category=category_of(self.data)))

    def copy(self) -> "CSRMatrix":
        return CSRMatrix(self.pattern, self.data.copy())

    # ---- description -------------------------------------------------------
    @property
    def device(self) -> Device:
        return self.pattern.device

    @property
    def shape(self) -> tuple[int, int]:
        return self.pattern.shape

    @property
    def nnz(self) -> int:
        return self.pattern.nnz

    @property
    def indptr(self) -> cla.Array:
        return self.pattern.indptr

    @property
    def indices(self) -> cla.Array:
        return self.pattern.indices

    @property
    def density(self) -> float:
        m, k = self.shape
        return self.nnz / (m * k) if m * k else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the CSR arrays: int32 row pointers, column indices, float32 values (not the
        derived structures)."""
        return self.pattern.nbytes + 4 * self.nnz

    def __repr__(self) -> str:
        return f"CSRMatrix(shape={self.shape}, nnz={self.nnz}, density={self.density:.4f})"

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, data) as host numpy arrays (int32, int32, float32)."""
        if self.nnz == 0:
            return self.indptr.get(), np.zeros(0, np.int32), np.zeros(0, np.float32)
        return self.indptr.get(), self.indices.get().astype(np.int32), self.data.get()

    def to_host(self) -> HostCSR:
        indptr, indices, data = self.to_arrays()
        return HostCSR(indptr, indices, data, self.shape)

    def to_scipy(self):
        import scipy.sparse as sp
        indptr, indices, data = self.to_arrays()
        return sp.csr_matrix((data, indices, indptr), shape=self.shape)

    def to_dense(self) -> np.ndarray:
        return self.to_host().to_dense().astype(np.float32, copy=False)

    # ---- products ----------------------------------------------------------
    def matmul(self, x, *, bias=None, relu: bool = False, out=None) -> cla.Array:
        """Y = W X (+ bias[:, None]) (ReLU);  X [k, n] numpy or device array -> Y [m, n]."""
        pieces = self.pattern.pieces(_spmm_piece(self.device))
        return _spmm(self.device, self.shape, self.indptr, self.indices, self.data, None,
                     x, bias, relu, out, self.pattern.idx, pieces)

    def matmul_t(self, d, *, out=None) -> cla.Array:
        """Z = W^T D;  D [m, n] -> Z [k, n], through the transpose permutation."""
        tp, ti, pm = self.pattern.transposed
        pieces = self.pattern.pieces(_spmm_piece(self.device), transposed=True)
        m, k = self.shape
        return _spmm(self.device, (k, m), tp, ti, self.data, pm, d, None, False, out, self.pattern.idx,
                     pieces)

    def __matmul__(self, x) -> cla.Array:
        return self.matmul(x)

    def grad(self, dy, x, *, out: cla.Array) -> None:
        """out[nnz] = (dy x^T) on W's support: the gradient of every stored entry (SDDMM)."""
        self.sddmm(dy, x, out=out)

    @property
    def T(self) -> "_TransposedCSR":
        return _TransposedCSR(self)

    def sddmm(self, a, b, *, scale: float = 1.0, out=None) -> "CSRMatrix":
        """G on W's support: G[i, j] = scale * A[i, :] . B[j, :];  A [m, n], B [k, n]."""
        dev = self.device
        a, b = dev.to_device(a), dev.to_device(b)
        m, k = self.shape
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != m or b.shape[0] != k or a.shape[1] != b.shape[1]:
            raise InputError(f"sddmm: need A [{m}, n] and B [{k}, n], got {a.shape} and {b.shape}")
        g = out if out is not None else dev.empty((self.nnz,), np.float32)
        if g.shape != (self.nnz,):
            raise InputError(f"sddmm: out must have shape ({self.nnz},)")
        if self.nnz:
            n = a.shape[1]
            t = dev.tuning
            vec = t.sddmm_vec
            if t.sddmm_lanes > 1:
                lanes, group = t.sddmm_lanes, t.sddmm_group
                if n >= SDDMM_WIDE_N:   # long dot products (conv weight gradients): more lanes each
                    lanes, group = SDDMM_WIDE_LANES, max(1, 256 // SDDMM_WIDE_LANES)
                name, defines = "csr_sddmm", dict(VEC=vec, LANES=lanes, GROUP=group,
                                                   PX_ALIGNED=int(t.aligned and n % vec == 0),
                                                   IDX16=self.pattern.idx)
                gsize, lsize = (lanes, self.nnz), (lanes, group)
                # a lane's loops: its share of a slice's vectors, a tail, the reduction
                slice_max = (t.loop_max - vec - 16) * lanes * vec
            else:
                epw, lx = t.sddmm_epw, t.sddmm_group
                name, defines = "csr_sddmm_rows", dict(VEC=vec, EPW=epw, LX=lx, IDX16=self.pattern.idx)
                gsize, lsize = (-(-self.nnz // epw),), (lx,)
                # both paths' loops: slice/vec shared, epw * slice/(2 vec) apart, tails
                slice_max = (t.loop_max - 3 * epw * (vec + 2)) * 2 * vec // (epw + 2)
            slices = -(-n // (slice_max // vec * vec))
            args = (self.nnz, n, self.pattern.rows, self.indices, a, b)
            if slices == 1:
                dev.launch(dev.kernel(_FILE, name, **defines), gsize, lsize, *args, g, float(scale))
            else:   # column slices, added in order
                part = dev.empty((slices, self.nnz), np.float32)
                dev.launch(dev.kernel(_FILE, name, PX_SPLIT=1, **defines), gsize + (slices,),
                           lsize + (1,), *args, part, float(scale))
                sum_slices(dev, part, g)
        return CSRMatrix(self.pattern, g)

    # ---- support changes ---------------------------------------------------
    def compact(self, *others: cla.Array, return_src: bool = False):
        """Drop the entries whose value is exactly zero, on the device.

        Returns (W', [o'...]) where each array in ``others`` (per-entry state such as optimizer
        moments, shaped like the values) is gathered onto the new support.  When nothing is
        dropped, W and ``others`` come back unchanged.  With return_src, a third item: the int32
        device array Src[nnz'] of the kept entries' old positions (None when nothing changed)."""
        dev = self.device
        if self.nnz == 0:
            return (self, list(others), None) if return_src else (self, list(others))
        cat = self.pattern.category
        # count and fill per row, or per piece of at most loop_max entries where rows are longer
        pieces = self.pattern.pieces(dev.tuning.loop_max)
        m, ap = (self.shape[0], self.indptr) if pieces is None else (pieces.count, pieces.qp)
        ptr = _scan_rows(dev, m, cat, lambda cnt: dev.launch(
            dev.kernel(_FILE, "csr_count_nonzero"), (m,), (dev.tuning.ew_local,),
            m, ap, self.data, cnt))
        nnz = int(ptr[m:].get()[0])
        if nnz == self.nnz:
            return (self, list(others), None) if return_src else (self, list(others))
        self.pattern.drop_derived()
        aj = dev.empty((nnz,), self.indices.dtype, category=cat)
        src = dev.empty((nnz,), np.int32, category=cat)
        if nnz:
            dev.launch(dev.kernel(_FILE, "csr_fill_nonzero", IDX16=self.pattern.idx), (m,),
                       (dev.tuning.ew_local,), m, ap, self.indices, self.data, ptr, aj, src)
        indptr = ptr if pieces is None else dev.to_device(ptr.get()[pieces.rp_host], np.int32, category=cat)
        pattern = CSRPattern(dev, self.shape, indptr, aj, nnz)
        gathered = [gather(dev, x, src) for x in (self.data, *others)]
        out = CSRMatrix(pattern, gathered[0])
        return (out, gathered[1:], src) if return_src else (out, gathered[1:])


class _TransposedCSR:
    """``W.T``: supports ``W.T @ D``."""

    def __init__(self, w: CSRMatrix):
        self.w = w

    @property
    def shape(self):
        return self.w.shape[::-1]

    def __matmul__(self, d) -> cla.Array:
        return self.w.matmul_t(d)


def gather(dev: Device, x: cla.Array, idx: cla.Array, *, out=None) -> cla.Array:
    """out[q] = x[idx[q]] for a flat float32 array x, 0 where idx[q] < 0 (out: an optional
    float32 [idx.size]; made in x's memory category when not given)."""
    if out is None:
        out = dev.empty((idx.size,), np.float32, category=category_of(x))
    elif out.shape != (idx.size,) or out.dtype != np.float32:
        raise InputError(f"gather: out must be float32 ({idx.size},), got {out.dtype} {out.shape}")
    if idx.size:
        dev.launch(dev.kernel(_FILE, "gather_f32"), (idx.size,), (dev.tuning.ew_local,),
                   idx.size, x, idx, out)
    return out


def scatter(dev: Device, x: cla.Array, idx: cla.Array, size: int) -> cla.Array:
    """A zero array of ``size`` floats with out[idx[q]] = x[q] (in x's memory category)."""
    out = dev.zeros((size,), np.float32, category=category_of(x))
    if idx.size:
        dev.launch(dev.kernel(_FILE, "scatter_f32"), (idx.size,), (dev.tuning.ew_local,),
                   idx.size, x, idx, out)
    return out


def _scan_rows(dev: Device, m: int, category: str, count) -> cla.Array:
    """Row pointers Ap[m+1] (in ``category``) from per-row counts that ``count(cnt)`` writes
    into cnt[m]: one launch per block of scan_local * chunk counts, each work-item's loops
    within loop_max."""
    indptr = dev.empty((m + 1,), np.int32, category=category)
    if m == 0:
        indptr.fill(np.int32(0))
        return indptr
    cnt = dev.empty((m,), np.int32, category=category)
    count(cnt)
    sl = dev.tuning.scan_local
    chunk = (dev.tuning.loop_max - sl) // 2
    kern = dev.kernel(_FILE, "scan_counts", SCAN_LOCAL=sl, SCAN_CHUNK=chunk)
    for first in range(0, m, sl * chunk):
        dev.launch(kern, (sl,), (sl,), m, cnt, indptr, first)
    return indptr


def _spmm_piece(dev: Device) -> int:
    """The most entries of a row one SpMM work-item takes: both of its loops (full and edge
    column segments) within loop_max."""
    return dev.tuning.loop_max // 2


def _spmm(dev: Device, shape, ap, aj, ax, pm, x, bias, relu, out, idx: int,
          pieces: RowPieces | None) -> cla.Array:
    m, k = shape
    x = dev.to_device(x)
    if x.ndim != 2 or x.shape[0] != k:
        raise InputError(f"CSR product: operand must have shape ({k}, n), got {x.shape}")
    n = x.shape[1]
    if bias is not None:
        bias = dev.to_device(bias)
        if bias.shape != (m,):
            raise InputError(f"bias must have shape ({m},), got {bias.shape}")
    if out is None:
        out = dev.empty((m, n), np.float32)
    elif out.shape != (m, n) or out.dtype != np.float32:
        raise InputError(f"out must be float32 ({m}, {n}), got {out.dtype} {out.shape}")
    if not (m and n):
        return out
    if pieces is not None:   # long rows: the products of the pieces, then their sums per row
        part = dev.empty((pieces.count, n), np.float32)
        _spmm_rows(dev, pieces.count, n, pieces.qp, aj, ax, pm, x, part, None, False, idx)
        dev.launch(dev.kernel(_FILE, "csr_sum_pieces"), (n, m), (dev.tuning.ew_local, 1),
                   m, n, pieces.rp, part, out, bias, int(relu))
    else:
        _spmm_rows(dev, m, n, ap, aj, ax, pm, x, out, bias, relu, idx)
    return out


def _spmm_rows(dev: Device, m, n, ap, aj, ax, pm, x, out, bias, relu, idx: int) -> None:
    """One SpMM launch over the m rows of (ap, aj): the CPU or GPU form (IDX16 = idx)."""
    t = dev.tuning
    vec, nv = t.spmm_vec, t.spmm_nv
    tr = int(pm is not None)
    if nv:   # CPU form: a row segment of nv vectors per work-item, rows varying fastest
        if t.spmm_wide_vec and n % (t.spmm_wide_vec * nv) == 0:
            vec = t.spmm_wide_vec      # no partial segment: the wider vectors pay
        lx = t.spmm_rows
        kern = dev.kernel(_FILE, "csr_spmm_seg", VEC=vec, NV=nv, LX=lx, TRANSPOSED=tr, IDX16=idx)
        dev.launch(kern, (m, -(-n // (nv * vec))), (lx, 1), m, n, ap, aj, ax, pm, x, out,
                   bias, int(relu))
    else:    # GPU form: work-items coalesced over the batch columns
        lx, ly = t.spmm_local
        wide = t.spmm_wide_vec
        if (wide and n % (wide * lx) == 0    # whole column groups of the wider vectors span the batch
                and 100 * (n // (wide * lx)) * -(-m // ly) >= t.spmm_wide_groups_pct * dev.compute_units):
            vec = wide
        kern = dev.kernel(_FILE, "csr_spmm", VEC=vec, LX=lx, LY=ly, TRANSPOSED=tr,
                          PX_ALIGNED=int(t.aligned and n % vec == 0), IDX16=idx, SWZ=t.spmm_swizzle,
                          PX_OFF32=int(x.shape[0] * n <= _I32_MAX))
        dev.launch(kern, (-(-n // vec), m), (lx, ly), m, n, ap, aj, ax, pm, x, out,
                   bias, int(relu))
