"""Launch settings of every kernel family, one table per kernel form.

Two forms: ``cpu`` (PoCL: few, large work-items, each holding a row segment of several vectors
in registers) and ``gpu`` (work-items coalesced over the batch columns, a LANES-wide reduction
for SDDMM).  A device gets the form of its kind; ``$PROXCL_TUNING`` ("cpu" or "gpu") forces one
on any device (the tests run both forms on PoCL that way), and :func:`for_device` adapts it to
the device's preferred vector width (``gemm_wide``).  Values measured with
``proxcl bench kernels`` (docs/PERFORMANCE.md).

Each kernel host module (proxcl.ops) reads the fields of its kernel file; nothing else does.
A ``Tuning`` is also a read-only mapping of its field names, for code that reads it by key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields, replace

from .errors import InputError

__all__ = ["Tuning", "FORMS", "kernel_form", "ENV_VAR"]

ENV_VAR = "PROXCL_TUNING"


@dataclass(frozen=True)
class Tuning(Mapping):
    """Vector widths, blockings and local sizes of one kernel form.

    Every kernel file: ``vec`` (its VEC), ``ew_local`` (local size of element-wise kernels),
    ``aligned`` (vector loads straight from memory where rows allow), ``loop_max`` (the most loop
    iterations one work-item may run, all its loops together: longer inner dimensions, rows and
    columns are split over work-items or launches; llvmpipe ends a work-item's loops silently
    after 65,535 iterations in all, docs/PORTABILITY.md).
    dense.cl: ``gemm_*`` (``gemm_nv`` > 0 selects the CPU register-block form, ``gemm_nt_rn``
    > 0 the row-dot-product form of A B^T).
    ``gemm_tile`` (LX, LY, TM, TN, BK of the tiled GPU form, gemm_tile; LX 0: off).
    ``gemm_wide`` (W, RM, VEC): on a device whose preferred float vector width is at least W
    (0: never), ``gemm_rm`` and ``gemm_vec`` become RM and VEC (:func:`for_device`): PoCL on a
    CPU with AVX-512 reports 16, and there an 8 x 32 block of C per work-item in 16-wide
    vectors ran 1.6-3x faster than 6 x 16 in 8-wide ones on products from 300 x 784 x 128 up
    (docs/PERFORMANCE.md).
    ``gemm_pack`` (MACS, MACS_T, SIDE, NV, KS): a CPU-form product of at least MACS multiply-adds
    (MACS_T for op(B) = B^T) whose C has at least SIDE rows and columns copies op(A) and op(B)
    into the order its blocks read them and multiplies the copies in gemm_rm x NV*gemm_vec
    blocks, in slices of at most KS values of k, so that a block's panel of B stays in the
    core's cache (gemm_pack, gemm_pk; 0: never).  Unpacked, a block reads B's rows N floats
    apart, a new page at every k; on a 2-core Xeon (AVX-512) packing made 2048^2 x 2048 x 512 2x
    faster and A B^T of LeNet-300's first layer (its weight gradient, whose unpacked form is row
    dot products) 1.7-2.6x, but products without B^T gained about 10 % below 10^8
    multiply-adds, not worth the copies' memory (docs/PERFORMANCE.md).
    csr.cl: ``spmm_*`` (``spmm_nv`` > 0: the CPU row-segment form; the vectors of either form
    are ``spmm_wide_vec`` wide when a whole number of segments, or of the GPU form's column groups
    of LX vectors, spans the batch), ``sddmm_*`` (``sddmm_lanes`` > 1: the GPU form with a
    reduction over lanes), ``scan_local``.  ``spmm_swizzle`` (SWZ of the GPU form, csr_spmm): > 0
    orders its work-groups in column slices of that many groups, so that the groups in flight
    share a slice of X in the cache (0: rows of groups in launch order).  The GPU form takes its
    wider vectors only where the launch still makes at least ``spmm_wide_groups_pct`` % of the
    compute units in work-groups (fewer, wider work-items were slower on small layers).
    ``tile_groups_pct``: gemm_tile runs only where its work-groups number at least this percentage
    of the compute units, with its register block halved (TM, TN 8 -> 4, BK doubled) where that takes it there,
    and where both sides of C are at least its halved block (LY*4 rows, LX*4 columns); elsewhere
    the untiled form keeps the units busy and wastes no work on padding.
    ``launch_events``: every launch returns its event (pyopencl's enqueue); False: a launch that
    nothing records, profiles or waits for is enqueued without one (Device.launch).  On in both
    forms: the call without an event is slower on PoCL (ctypes) and not yet timed on a GPU
    (scripts/enqueue_cost.py).
    ``cols_limit_mib``: a convolution's im2col buffer larger than this many MiB is cut into batch
    chunks (0: never), where the chunks' extra launches cost little (docs/PERFORMANCE.md, memory).
    nn.cl: ``nn_rows`` (local size of the kernels that give a work-item one image row),
    ``nn_reduce`` (RL: work-group of a row sum), ``nn_softmax`` (XL: samples per softmax group).
    """
    kind: str
    vec: int
    ew_local: int
    aligned: bool
    loop_max: int
    gemm_rm: int
    gemm_vec: int
    gemm_nv: int
    gemm_rows: int
    gemm_local: tuple[int, int]
    gemm_nt_rm: int
    gemm_nt_rn: int
    gemm_tile: tuple[int, int, int, int, int]
    gemm_wide: tuple[int, int, int]
    gemm_pack: tuple[int, int, int, int, int]
    spmm_vec: int
    spmm_wide_vec: int
    spmm_nv: int
    spmm_rows: int
    spmm_local: tuple[int, int]
    spmm_swizzle: int
    spmm_wide_groups_pct: int
    sddmm_lanes: int
    sddmm_vec: int
    sddmm_epw: int
    sddmm_group: int
    scan_local: int
    tile_groups_pct: int
    launch_events: bool
    cols_limit_mib: int
    nn_rows: int
    nn_reduce: int
    nn_softmax: int

    # read-only mapping of the field names (``t["vec"]``, ``dict(t)``)
    def __getitem__(self, key: str):
        if key not in _NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(_NAMES)

    def __len__(self) -> int:
        return len(_NAMES)

    def __hash__(self) -> int:
        return hash(astuple(self))


_NAMES = tuple(f.name for f in fields(Tuning))


# field: (cpu form, gpu form)
_TABLE = {
    "vec": (8, 4), "ew_local": (64, 256), "aligned": (False, True), "loop_max": (32768, 32768),
    "gemm_rm": (6, 4), "gemm_vec": (8, 2), "gemm_nv": (2, 0), "gemm_rows": (4, 0),
    "gemm_local": ((4, 4), (32, 8)), "gemm_nt_rm": (3, 0), "gemm_nt_rn": (3, 0),
    "gemm_tile": ((0, 0, 0, 0, 0), (16, 16, 8, 8, 8)), "gemm_wide": ((16, 8, 16), (0, 0, 0)),
    "gemm_pack": ((134_217_728, 4_194_304, 128, 3, 2048), (0, 0, 0, 0, 0)),
    "spmm_vec": (8, 2), "spmm_wide_vec": (16, 4), "spmm_nv": (8, 0), "spmm_rows": (8, 0), "spmm_local": ((4, 4), (32, 8)),
    "spmm_swizzle": (0, 1), "spmm_wide_groups_pct": (0, 300),
    "sddmm_lanes": (1, 8), "sddmm_vec": (8, 4), "sddmm_epw": (4, 1), "sddmm_group": (16, 16),
    "scan_local": (256, 256), "tile_groups_pct": (0, 50),
    "launch_events": (True, True), "cols_limit_mib": (8, 0), "nn_rows": (8, 64), "nn_reduce": (64, 256), "nn_softmax": (64, 64),
}
FORMS = {kind: Tuning(kind=kind, **{k: v[i] for k, v in _TABLE.items()})
         for i, kind in enumerate(("cpu", "gpu"))}


def kernel_form(is_cpu: bool) -> str:
    """"cpu" or "gpu": ``$PROXCL_TUNING`` if set, else the device's kind.  ValueError for any
    other value of the variable."""
    kind = os.environ.get(ENV_VAR, "").strip().lower() or ("cpu" if is_cpu else "gpu")
    if kind not in FORMS:
        raise InputError(f"{ENV_VAR} must be 'cpu' or 'gpu', got {kind!r}")
    return kind


def for_device(form: Tuning, preferred_float_width: int) -> Tuning:
    """The form as a device with this preferred float vector width (CL_DEVICE_PREFERRED_VECTOR_
    WIDTH_FLOAT) runs it: with ``gemm_wide``'s GEMM block where the width reaches its W."""
    w, rm, vec = form.gemm_wide
    if not w or preferred_float_width < w:
        return form
    return replace(form, gemm_rm=rm, gemm_vec=vec)
