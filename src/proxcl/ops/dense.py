"""The host side of ``kernels/dense.cl``: dense operations on device arrays, GEMM (NN, NT, TN,
TT) with a fused bias + ReLU epilogue, transpose, soft-thresholding, and :class:`DenseMatrix`,
a dense weight with the products of :class:`proxcl.ops.CSRMatrix`.  Owns dense.cl's build
defines and work sizes (``gemm_*`` of :class:`proxcl.tuning.Tuning`)."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla

from ..errors import InputError
from ..runtime import Device, view

_FILE = "dense.cl"
_TILE = 16          # dense.cl's TT: the transpose tile


def _as2d(dev: Device, a, name: str) -> cla.Array:
    a = dev.to_device(a)
    if a.ndim != 2:
        raise InputError(f"{name} must be 2-D, got shape {a.shape}")
    return a


def _out(dev: Device, out, shape) -> cla.Array:
    if out is None:
        return dev.empty(shape)
    if tuple(out.shape) != tuple(shape) or out.dtype != np.float32:
        raise InputError(f"out must be float32 {tuple(shape)}, got {out.dtype} {tuple(out.shape)}")
    return out


def transpose(dev: Device, a, out=None) -> cla.Array:
    """out[n, m] = a[m, n]^T."""
    a = _as2d(dev, a, "a")
    m, n = a.shape
    out = _out(dev, out, (n, m))
    if a.size:
        dev.launch(dev.kernel(_FILE, "transpose"), (n, m), (_TILE, _TILE), m, n, a, out)
    return out


def gemm(dev: Device, a, b, *, trans_a: bool = False, trans_b: bool = False,
         bias=None, relu: bool = False, out=None) -> cla.Array:
    """C = op(a) @ op(b) (+ bias[:, None]) (ReLU), float32 on the device.

    a: [M, K] ([K, M] with trans_a); b: [K, N] ([N, K] with trans_b); bias: [M] or None.
    On CPUs a product of at least ``gemm_pack[0]`` multiply-adds (``gemm_pack[1]`` with
    trans_b) and ``gemm_pack[2]`` rows and columns runs on copies of op(a) and op(b) in block
    order (:func:`_gemm_packed`), a smaller NT product as row dot products (no copy of b);
    elsewhere, and for TT, b is transposed once into a temporary and the NN kernel runs.
    """
    a = _as2d(dev, a, "a")
    b = _as2d(dev, b, "b")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != Kb:
        raise InputError(f"gemm: inner dimensions differ ({K} vs {Kb})")
    if bias is not None:
        bias = dev.to_device(bias)
        if bias.shape != (M,):
            raise InputError(f"bias must have shape ({M},), got {bias.shape}")
    out = _out(dev, out, (M, N))
    if M == 0 or N == 0:
        return out
    if K == 0:
        out.fill(np.float32(0))
        if bias is not None or relu:
            raise InputError("gemm: K == 0 with an epilogue is not supported")
        return out
    t = dev.tuning
    least, side = t.gemm_pack[1 if trans_b else 0], t.gemm_pack[2]
    if t.gemm_nv and least and M * N * K >= least and min(M, N) >= side:
        _gemm_packed(dev, t, a, b, out, bias, relu, trans_a, trans_b)
        return out
    if trans_b and not trans_a and t.gemm_nt_rn:
        _gemm_nt_rows(dev, t, a, b, out, bias, relu)
        return out
    if trans_b:
        b = transpose(dev, b)
    if t.gemm_nv:
        _gemm_blocks(dev, t, a, b, out, bias, relu, trans_a)
    elif not _gemm_tiled(dev, t, a, b, out, bias, relu, trans_a):
        _gemm_columns(dev, t, a, b, out, bias, relu, trans_a)
    return out


def _gemm_sliced(dev: Device, name: str, defines: dict, gsize, lsize, K: int, max_slice: int,
                 out, bias, relu, *args) -> None:
    """Launch a CPU-form GEMM kernel (gemm_blk, gemm_nt_blk, gemm_pk: ``M, N, K, *args, C, bias, relu``):
    whole when K fits ``max_slice``, else built with PX_SPLIT and launched with slices of K in
    its third dimension, whose partial products sum_slices adds (bias and relu there)."""
    M, N = out.shape
    slices = -(-K // max_slice)
    if slices == 1:
        dev.launch(dev.kernel(_FILE, name, **defines), gsize, lsize, M, N, K, *args, out, bias, int(relu))
        return
    part = dev.empty((slices, M, N))
    dev.launch(dev.kernel(_FILE, name, PX_SPLIT=1, **defines), gsize + (slices,), lsize + (1,),
               M, N, K, *args, part, None, 0)
    sum_slices(dev, part, out, bias=bias, relu=relu)


def _gemm_nt_rows(dev: Device, t, a, b, out, bias, relu) -> None:
    """CPU form of A B^T: dot products of rows, no transposed copy of B.  A work-item's loop
    runs KS / vec times plus its rm*rn tails of fewer than vec."""
    (M, N), K = out.shape, a.shape[1]
    vec, rm, rn, lx = t.gemm_vec, t.gemm_nt_rm, t.gemm_nt_rn, t.gemm_rows
    max_slice = (t.loop_max - rm * rn * vec) * vec
    _gemm_sliced(dev, "gemm_nt_blk", dict(VEC=vec, RM=rm, RN=rn, LX=lx), (-(-M // rm), -(-N // rn)),
                 (lx, 1), K, max_slice, out, bias, relu, a, b)


def _gemm_blocks(dev: Device, t, a, b, out, bias, relu, trans_a) -> None:
    """CPU form: an rm x nv*vec block of C in registers, row blocks varying fastest.  A
    work-item runs one of two loops over its KS values of k (interior or edge block)."""
    (M, N), K = out.shape, b.shape[0]
    vec, rm, nv, lx = t.gemm_vec, t.gemm_rm, t.gemm_nv, t.gemm_rows
    _gemm_sliced(dev, "gemm_blk", dict(VEC=vec, RM=rm, NV=nv, LX=lx, TRANS_A=int(trans_a)),
                 (-(-M // rm), -(-N // (nv * vec))), (lx, 1), K, t.loop_max // 2, out, bias, relu, a, b)


def _gemm_packed(dev: Device, t, a, b, out, bias, relu, trans_a, trans_b) -> None:
    """CPU form of large products (``gemm_pack``, any transposes): op(a) and op(b) copied
    (gemm_pack) into the order in which rm x nv*vec blocks of C (nv = gemm_pack[3]) read them,
    temporaries of their size rounded up to whole blocks, then multiplied (gemm_pk: gemm_blk's
    multiply-adds, read front to back) in slices of at most gemm_pack[4] values of k, so that a
    block's panel of b stays in cache; sum_slices adds the slices."""
    (M, N), K = out.shape, (a.shape[0] if trans_a else a.shape[1])
    vec, rm, nv, lx = t.gemm_vec, t.gemm_rm, t.gemm_pack[3], t.gemm_rows
    gsize = (-(-M // rm), -(-N // (nv * vec)))
    ap = _pack(dev, t, a, M, K, rm, trans_a)
    bp = _pack(dev, t, b, N, K, nv * vec, not trans_b)
    _gemm_sliced(dev, "gemm_pk", dict(VEC=vec, RM=rm, NV=nv, LX=lx), gsize, (lx, 1), K,
                 min(t.loop_max // 2, t.gemm_pack[4]), out, bias, relu, ap, bp)


def _pack(dev: Device, t, x, rows: int, K: int, width: int, k_major: bool) -> cla.Array:
    """gemm_pack: the [ceil(rows / width), K, width] copy of the rows x K operand x ([rows, K], or
    [K, rows] where k_major), zeros past its rows; a work-item copies up to 256 values of k (at
    most loop_max / width)."""
    blocks = -(-rows // width)
    kc = max(1, min(256, t.loop_max // width))
    p = dev.empty((blocks, K, width))
    dev.launch(dev.kernel(_FILE, "gemm_pack", PW=width, PACK_T=int(k_major)), (-(-K // kc), blocks), (1, 1),
               rows, K, kc, x, p)
    return p


def _gemm_columns(dev: Device, t, a, b, out, bias, relu, trans_a) -> None:
    """GPU form: work-items coalesced over the columns, the inner dimension split (split_k)
    when there are few output blocks."""
    (M, N), K = out.shape, b.shape[0]
    vec, rm = t.gemm_vec, t.gemm_rm
    lx, ly = t.gemm_local
    k = dev.kernel(_FILE, "gemm", VEC=vec, RM=rm, LX=lx, LY=ly, TRANS_A=int(trans_a),
                   PX_ALIGNED=int(t.aligned and N % vec == 0))
    gx, gy = -(-N // vec), -(-M // rm)
    slices, ks = split_k(gx * gy, K, max_slice=t.loop_max // 2)
    if slices == 1:
        dev.launch(k, (gx, gy, 1), (lx, ly, 1), M, N, K, a, b, out, bias, int(relu), K)
    else:
        part = dev.empty((slices, M, N))
        dev.launch(k, (gx, gy, slices), (lx, ly, 1), M, N, K, a, b, part, None, 0, ks)
        sum_slices(dev, part, out, bias=bias, relu=relu)


def _gemm_tiled(dev: Device, t, a, b, out, bias, relu, trans_a) -> bool:
    """Tiled GPU form (gemm_tile), where its work-groups number at least tile_groups_pct % of the
    compute units, with the register block halved (TM, TN 8 -> 4, and BK doubled so that a
    work-item still stages whole float4) where that takes it there, and C has at least LY*4 rows
    and LX*4 columns; False (nothing launched) elsewhere.  K is cut into
    slices (split-K, added by sum_slices) where a work-item's loops over it would pass loop_max."""
    lx, ly, tm, tn, bk = t.gemm_tile
    (M, N), K = out.shape, b.shape[0]
    if not lx or M < 4 * ly or N < 4 * lx:
        return False
    while True:
        gx, gy = -(-N // (lx * tn)), -(-M // (ly * tm))
        if 100 * gx * gy >= t.tile_groups_pct * dev.compute_units:
            break
        if tm < 8 or tn < 8:
            return False
        tm, tn, bk = tm // 2, tn // 2, bk * 2   # steps twice as long: whole float4 shares again
    na, nb = ly * tm * bk // (lx * ly), bk * lx * tn // (lx * ly)   # elements of A, B a work-item
    staged = na + nb                                                 # stages per step
    per_step = 2 * staged + bk + 1                           # its loops per step of bk
    steps = (t.loop_max - staged - tm * tn // 4) // per_step  # less the first fetch and the stores
    slices = -(-K // (max(1, steps) * bk))
    ks = -(-K // slices)
    # float4 loads from global memory where rows (of A along K, or along M when A is transposed, and
    # of B) start on multiples of 4 floats and a work-item's share of each tile is whole float4
    vec = int(t.aligned and N % 4 == 0 and na % 4 == 0 and nb % 4 == 0
              and (M % 4 == 0 if trans_a else K % 4 == 0 and bk % 4 == 0))
    if vec and not trans_a and slices > 1 and ks % 4:
        ks += 4 - ks % 4          # slices that start on float4 boundaries (steps * bk is a multiple of 4)
        slices = -(-K // ks)
    kern = dev.kernel(_FILE, "gemm_tile", LX=lx, LY=ly, TM=tm, TN=tn, BK=bk, TRANS_A=int(trans_a), GT_VEC=vec)
    gsize, lsize = (gx * lx, gy * ly, slices), (lx, ly, 1)
    if slices == 1:
        dev.launch(kern, gsize, lsize, M, N, K, a, b, out, bias, int(relu), K)
    else:
        part = dev.empty((slices, M, N))
        dev.launch(kern, gsize, lsize, M, N, K, a, b, part, None, 0, ks)
        sum_slices(dev, part, out, bias=bias, relu=relu)
    return True


def split_k(items: int, K: int, *, max_slice: int, target: int = 16384,
            min_slice: int = 256) -> tuple[int, int]:
    """(slices, k per slice) for the GPU GEMM: a product with few output blocks and a long inner
    dimension (weight gradients over a whole batch: K = N*Ho*Wo) gets split along K so that the
    device has about ``target`` work-items; the partial products are added in a fixed order.
    No slice is longer than ``max_slice`` (a work-item's loop budget), whatever the blocks."""
    slices = 1
    if items < target and K >= 2 * min_slice:
        slices = min(-(-target // items), K // min_slice, 256)
    slices = max(slices, -(-K // max_slice))
    ks = -(-K // slices)
    return -(-K // ks), ks


def sum_slices(dev: Device, part: cla.Array, out: cla.Array, *, bias=None, relu: bool = False) -> None:
    """out = the sum of part[S, *out.shape] over its first axis, slices added in order
    (+ bias per row of out, ReLU): the reduction of every split product (split-K GEMMs,
    column-sliced SDDMM and bias gradients)."""
    slices = part.shape[0]
    size = out.size
    if slices > dev.tuning.loop_max:
        raise InputError(f"a product split into {slices} slices: more than this device's "
                         f"{dev.tuning.loop_max} per work-item (inner dimension too long)")
    cols = out.shape[-1] if out.ndim > 1 else 1
    if size:
        dev.launch(dev.kernel(_FILE, "gemm_sum_slices"), (size,), (dev.tuning.ew_local,),
                   size, cols, slices, part, out, bias, int(relu))


def soft_threshold(dev: Device, z, tau, *, scale: float = 1.0, out=None) -> cla.Array:
    """S_tau(z) = sign(z) max(|z| - tau, 0) element-wise; tau a scalar or an array like z
    (then the threshold is scale * tau[q]).  out may be z itself (in place)."""
    z = dev.to_device(z)
    out = _out(dev, out, z.shape) if out is not None else dev.empty(z.shape)
    if np.isscalar(tau):
        tau_scale, tau_arr = float(tau) * scale, None
    else:
        tau_arr = dev.to_device(tau)
        if tau_arr.shape != z.shape:
            raise InputError(f"tau must be a scalar or have shape {z.shape}, got {tau_arr.shape}")
        tau_scale = scale
    if z.size:
        dev.launch(dev.kernel(_FILE, "soft_threshold"), (z.size,), (dev.tuning.ew_local,),
                   z.size, z, out, tau_scale, tau_arr)
    return out


class DenseMatrix:
    """A dense float32 weight W[m, k] on the device (``value``, used in place) with the
    products of :class:`proxcl.ops.CSRMatrix`, so that a layer runs either kind the same way."""

    def __init__(self, device: Device, value: cla.Array):
        self.device = device
        self.value = value

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.value.shape)

    def matmul(self, x, *, bias=None, relu: bool = False, out=None) -> cla.Array:
        """Y = W X (+ bias[:, None]) (ReLU)."""
        return gemm(self.device, self.value, x, bias=bias, relu=relu, out=out)

    def matmul_t(self, d, *, out=None) -> cla.Array:
        """Z = W^T D."""
        return gemm(self.device, self.value, d, trans_a=True, out=out)

    def grad(self, dy, x, *, out: cla.Array) -> None:
        """out (flat, W's size) = dy x^T, the gradient of every entry."""
        gemm(self.device, dy, x, trans_b=True, out=view(out, self.shape))
