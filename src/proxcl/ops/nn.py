"""The host side of ``kernels/nn.cl``: the layer kernels (im2col and col2im, max pooling,
ReLU, dropout, layout changes, bias gradient, softmax cross-entropy, the direct sparse
convolution).  Owns nn.cl's build defines (VEC, RL, XL) and work sizes (``nn_*`` of
:class:`proxcl.tuning.Tuning`); every function launches one kernel on device arrays.

Layouts (DESIGN.md): flat activations ``[F, N]``, spatial ones channel-major ``[C, N, H, W]``.
Window kernels take the :class:`Geometry` of :func:`geometry` (nn.cl's int32 array G).

No work-item runs more than ``loop_max`` loop iterations (llvmpipe ends them silently after
65,535): the row kernels cut long rows into pieces of columns, the bias gradient cuts long rows
into column slices, softmax cross-entropy over many classes runs in chunks of classes, and
:func:`conv_pool_fits` says when the direct convolution would loop too long.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyopencl.array as cla

from ..errors import InputError
from ..runtime import Device
from .dense import sum_slices

__all__ = ["Geometry", "geometry", "geometry_values", "conv_pool_fits", "im2col", "col2im", "col_block",
           "add_into", "maxpool_fwd", "maxpool_bwd", "csr_conv_pool",
           "relu_fwd", "relu_bwd", "dropout", "mix32", "batch_to_channel_major",
           "samples_to_features", "channel_major_to_features", "features_to_channel_major",
           "bias_grad", "softmax_xent", "softmax_partial_shape"]

_FILE = "nn.cl"


def _kernel(dev: Device, name: str, split: bool = False):
    """A kernel of nn.cl: one program per device and kernel form, and one built with PX_SPLIT
    for launches that cut rows into slices."""
    t = dev.tuning
    split = {"PX_SPLIT": 1} if split else {}
    return dev.kernel(_FILE, name, VEC=t.vec, RL=t.nn_reduce, XL=t.nn_softmax, **split)


def _rows(dev: Device, name: str, rows: int, cols: int, width: int, per_col: int, fixed: int,
          *args) -> None:
    """Launch a kernel that gives a work-item one image row of ``width`` columns: global
    (rows, cols, pieces), the rows cut into pieces of columns so that a work-item's loops,
    ``per_col`` iterations per column plus ``fixed``, stay within loop_max."""
    room = (dev.tuning.loop_max - fixed) // per_col
    if room < 1:
        raise InputError(f"{name}: a window this large needs more than {dev.tuning.loop_max} "
                         "loop iterations per work-item on this device")
    pieces = -(-width // room)
    if pieces == 1:
        dev.launch(_kernel(dev, name), (rows, cols), (dev.tuning.nn_rows, 1), *args)
    else:
        dev.launch(_kernel(dev, name, True), (rows, cols, pieces), (dev.tuning.nn_rows, 1, 1), *args)


def _each(dev: Device, name: str, n: int, *args) -> None:
    """Launch an element-wise kernel over n items."""
    dev.launch(_kernel(dev, name), (n,), (dev.tuning.ew_local,), *args)


# ---- windows: convolution as a product, max pooling, the direct sparse convolution ----

class Geometry(NamedTuple):
    """nn.cl's int32 array G on the device (``array``) and its values on the host (``values``:
    C, N, H, W, KH, KW, SH, SW, PH, PW, Ho, Wo and, for csr_conv_pool, QH, QW, QSH, QSW, QPH,
    QPW, Hp, Wp, O), which the launches size their pieces by."""
    array: cla.Array
    values: tuple


def geometry_values(conv, pool=None, out_channels: int = 0) -> tuple:
    """The values of G: ``conv`` = (C, N, H, W, KH, KW, SH, SW, PH, PW, Ho, Wo); for
    csr_conv_pool also the pooling ``pool`` = (QH, QW, QSH, QSW, QPH, QPW, Hp, Wp) (a 1x1 pool
    of stride 1 when None) and the output channels."""
    vals = [int(v) for v in conv]
    if pool is not None:
        vals += [int(v) for v in pool] + [int(out_channels)]
    elif out_channels:
        vals += [1, 1, 1, 1, 0, 0, vals[10], vals[11], int(out_channels)]
    return tuple(vals)


def geometry(dev: Device, conv, pool=None, out_channels: int = 0) -> Geometry:
    """The geometry G of nn.cl on the device, from the values of :func:`geometry_values`."""
    vals = geometry_values(conv, pool, out_channels)
    return Geometry(dev.to_device(np.array(vals, np.int32), np.int32, category="activations"), vals)


def im2col(dev: Device, g: Geometry, x: cla.Array, cols: cla.Array, out_rows: int, n0: int = 0) -> None:
    """cols[C*KH*KW, N*Ho*Wo] from the samples n0 .. n0+N-1 of x[C, NX, H, W] (G's batch is the
    chunk's N); out_rows = N*Ho."""
    wo = g.values[11]
    _rows(dev, "im2col", out_rows, cols.shape[0], wo, 3, 0, g.array, x, cols, n0, x.shape[1])


def col2im(dev: Device, g: Geometry, dcols: cla.Array, dx: cla.Array, n0: int = 0, n: int | None = None) -> None:
    """The samples n0 .. n0+n-1 of dx[C, NX, H, W] = the adjoint of im2col applied to dcols (a
    gather, no atomics); n (G's batch) defaults to all of dx."""
    c, nx, h, w = dx.shape
    n = nx if n is None else n
    kh, kw = g.values[4:6]
    _rows(dev, "col2im", n * h, c, w, 1 + kh * kw, kh * (1 + kw), g.array, dcols, dx, n0, nx)


def col_block(dev: Device, y: cla.Array, yc: cla.Array, off: int, to_y: bool) -> None:
    """Between a block of y[M, ld] and yc[R, L]: the R rows and L columns of y that start at its
    flat position ``off`` (row off // ld, column off % ld).  yc = that block (to_y False) or the
    block = yc (to_y True).  A work-item moves VEC columns of one row."""
    ld = y.shape[1]
    r, L = yc.shape
    if off < 0 or off % ld + L > ld or off // ld + r > y.shape[0]:
        raise ValueError(f"col_block: a {r}x{L} block at {off} does not fit {tuple(y.shape)}")
    dev.launch(_kernel(dev, "col_block"), (-(-L // dev.tuning.vec), r), (dev.tuning.nn_rows, 1),
               r, L, ld, off, y, yc, int(to_y))


def add_into(dev: Device, y: cla.Array, x: cla.Array) -> None:
    """y += x (flat arrays of one size)."""
    _each(dev, "add_into", y.size, y.size, y, x)


def maxpool_fwd(dev: Device, g: Geometry, x: cla.Array, y: cla.Array, idx: cla.Array | None,
                relu: bool) -> None:
    """y[C, N, Ho, Wo] = window maxima of x (then ReLU); idx: the winners, or None."""
    c, n, ho, wo = y.shape
    kh, kw = g.values[4:6]
    _rows(dev, "maxpool_fwd", n * ho, c, wo, 1 + kh * (1 + kw), 0, g.array, x, y, idx, int(relu))


def maxpool_bwd(dev: Device, g: Geometry, dy: cla.Array, idx: cla.Array, y: cla.Array,
                relu: bool, dx: cla.Array) -> None:
    """dx[C, N, H, W] from dy over the windows that chose each pixel (idx from maxpool_fwd):
    windows that do not overlap write their winners into zeroed bands (maxpool_bwd_tiles), others
    are searched per pixel (maxpool_bwd)."""
    c, n, h, w = dx.shape
    kh, kw, sh, sw, ph, pw, ho, wo = g.values[4:12]
    band = max(sh, h - (ho - 1) * sh + ph)                # input rows of a band, the last one's at most
    extra = max(0, w - (wo * sw - pw))                    # columns right of the last window's stride
    per_col, fixed = band * sw + 1, band * (extra + 1)
    if kh <= sh and kw <= sw and dev.tuning.loop_max - fixed >= per_col:   # else a band's loops are too long
        _rows(dev, "maxpool_bwd_tiles", n * ho, c, wo, per_col, fixed, g.array, dy, idx, y, int(relu), dx)
        return
    wy, wx = (kh - 1) // sh + 1, (kw - 1) // sw + 1       # windows holding a pixel, per axis
    _rows(dev, "maxpool_bwd", n * h, c, w, 1 + wy * (1 + wx), 0, g.array, dy, idx, y, int(relu), dx)


def conv_pool_fits(dev: Device, values, row_max: int) -> bool:
    """Whether csr_conv_pool's work-items stay within loop_max for the geometry ``values`` (of
    :func:`geometry_values`) and a CSR weight whose longest row has ``row_max`` entries (else
    the convolution goes through im2col and SpMM)."""
    wo = values[11]
    qh, qw, wp = values[12], values[13], values[19]
    per_row = wo + row_max * (1 + wo) + wp * (1 + qw)
    return 2 * wp + qh * (1 + per_row) <= dev.tuning.loop_max


def csr_conv_pool(dev: Device, g: Geometry, w, taps: cla.Array, bias, x: cla.Array, y: cla.Array,
                  relu: bool, flat: bool, out_rows: int) -> None:
    """The convolution straight from the CSR weight w (its entries' taps packed as
    c << 16 | ky << 8 | kx), fused with the pooling in G; out_rows = N*Hp.  Only where
    :func:`conv_pool_fits`."""
    dev.launch(_kernel(dev, "csr_conv_pool"), (out_rows, w.shape[0]), (dev.tuning.nn_rows, 1),
               g.array, w.indptr, taps, w.data, bias, x, y, int(relu), int(flat))


# ---- element-wise: ReLU, dropout ----

def relu_fwd(dev: Device, x: cla.Array, y: cla.Array) -> None:
    """y = max(x, 0)."""
    _each(dev, "relu_fwd", x.size, x.size, x, y)


def relu_bwd(dev: Device, y: cla.Array, dy: cla.Array, dx: cla.Array) -> None:
    """dx = dy where y > 0, else 0 (y: the ReLU's output); dx may be dy."""
    _each(dev, "relu_bwd", dy.size, dy.size, y, dy, dx)


def dropout(dev: Device, x: cla.Array, y: cla.Array, keys: tuple[int, int], p: float) -> None:
    """y = x * mask / (1 - p), the mask drawn by nn.cl's hash from the keys (k0, k1)."""
    _each(dev, "dropout", x.size, x.size, x, y, np.uint32(keys[0]), np.uint32(keys[1]), p,
          1.0 / (1.0 - p))


def mix32(x: int) -> int:
    """The 32-bit integer hash of ``nn.cl`` (px_mix), on the host."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


# ---- layouts (permute3: Out[i0, i1, i2] = In[i0*S0 + i1*S1 + i2*S2]) ----

def _permute3(dev: Device, src: cla.Array, dst: cla.Array, dims, strides) -> None:
    _each(dev, "permute3", dst.size, *dims, *strides, src, dst)


def batch_to_channel_major(dev: Device, x: cla.Array, out: cla.Array, c: int, n: int, hw: int) -> None:
    """out[C, N, H*W] from a batch x[N, C, H*W] (NCHW)."""
    _permute3(dev, x, out, (c, n, hw), (hw, c * hw, 1))


def samples_to_features(dev: Device, x: cla.Array, out: cla.Array, f: int, n: int) -> None:
    """out[F, N] from a batch x[N, F]."""
    _permute3(dev, x, out, (1, f, n), (0, 1, f))


def channel_major_to_features(dev: Device, x: cla.Array, out: cla.Array, c: int, hw: int, n: int) -> None:
    """out[C*H*W, N] (PyTorch's flatten order) from x[C, N, H*W]."""
    _permute3(dev, x, out, (c, hw, n), (n * hw, 1, hw))


def features_to_channel_major(dev: Device, d: cla.Array, out: cla.Array, c: int, hw: int, n: int) -> None:
    """out[C, N, H*W] from d[C*H*W, N]: the inverse of channel_major_to_features."""
    _permute3(dev, d, out, (c, n, hw), (hw * n, 1, n))


# ---- reductions: bias gradient, softmax cross-entropy ----

def bias_grad(dev: Device, dy: cla.Array, y: cla.Array | None, relu: bool, db: cla.Array | None) -> None:
    """With relu, dy[m, n] masked in place by y > 0 (a fused ReLU's backward); db[m] = the row
    sums of dy (db None: only the mask).  Rows longer than a work-group's loop budget are cut
    into column slices whose partial sums are added in order."""
    m, n = dy.shape
    t = dev.tuning
    rl = t.nn_reduce
    slice_max = (t.loop_max - 16) * rl // 2 // t.vec * t.vec   # both paths' loops, the reduction
    slices = -(-n // slice_max)
    args = (m, n, dy, y if relu else None, int(relu))
    if slices == 1:
        dev.launch(_kernel(dev, "bias_grad"), (m * rl,), (rl,), *args, db)
        return
    part = None if db is None else dev.empty((slices, m), np.float32)
    dev.launch(_kernel(dev, "bias_grad", True), (m * rl, slices), (rl, 1), *args, part)
    if db is not None:
        sum_slices(dev, part, db)


def softmax_partial_shape(dev: Device, n: int) -> tuple[int, int]:
    """The shape of softmax_xent's partial sums for a batch of n: one (loss, correct) per group."""
    return (-(-n // dev.tuning.nn_softmax), 2)


def softmax_xent(dev: Device, z: cla.Array, labels: cla.Array | None, *, dz: cla.Array | None = None,
                 gscale: float = 1.0, probs: cla.Array | None = None,
                 partial: cla.Array | None = None) -> cla.Array | None:
    """Softmax cross-entropy on logits ``z[K, N]`` with int32 ``labels[N]``.  Writes
    ``dz = gscale * (softmax - onehot)`` and ``probs = softmax`` when given; returns the
    per-work-group partial sums ``[G, 2]`` of (loss, correct) (``partial`` if given) when
    labels are given.  One launch."""
    k, n = z.shape
    if labels is not None and partial is None:
        partial = dev.empty(softmax_partial_shape(dev, n), np.float32)
    partial = partial if labels is not None else None
    t = dev.tuning
    xl = t.nn_softmax
    if 3 * k + 16 <= t.loop_max:
        dev.launch(_kernel(dev, "softmax_xent"), (n,), (xl,), k, n, z, labels, dz, float(gscale),
                   probs, partial)
        return partial
    # many classes: chunks of classes, each work-item's loops (2 chunk + chunks) within loop_max
    chunks = -(-k // ((t.loop_max - 16) // 3))
    if 2 * chunks + (t.loop_max - 16) // 3 > t.loop_max:
        raise InputError(f"softmax over {k} classes: too many for this device's loop budget")
    stats = dev.empty((chunks, n, 3), np.float32)
    dev.launch(_kernel(dev, "softmax_chunk_stats"), (n, chunks), (xl, 1), k, n, z, stats)
    dev.launch(_kernel(dev, "softmax_xent_chunks"), (n, chunks), (xl, 1), k, n, z, labels, dz,
               float(gscale), probs, partial, stats)
    return partial
