"""The host side of ``kernels/nn.cl``: the layer kernels (im2col and col2im, max pooling,
ReLU, dropout, layout changes, bias gradient, softmax cross-entropy, the direct sparse
convolution).  Owns nn.cl's build defines (VEC, RL, XL) and work sizes (``nn_*`` of
:class:`proxcl.tuning.Tuning`); every function launches one kernel on device arrays.

Layouts (DESIGN.md): flat activations ``[F, N]``, spatial ones channel-major ``[C, N, H, W]``.
Window kernels take the int32 geometry array G of :func:`geometry`.
"""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla

from ..runtime import Device

__all__ = ["geometry", "im2col", "col2im", "col_block", "add_into", "maxpool_fwd", "maxpool_bwd", "csr_conv_pool",
           "relu_fwd", "relu_bwd", "dropout", "mix32", "batch_to_channel_major",
           "samples_to_features", "channel_major_to_features", "features_to_channel_major",
           "bias_grad", "softmax_xent", "softmax_partial_shape"]

_FILE = "nn.cl"


def _kernel(dev: Device, name: str):
    """A kernel of nn.cl (one program per device and kernel form: the defines never vary)."""
    t = dev.tuning
    return dev.kernel(_FILE, name, VEC=t.vec, RL=t.nn_reduce, XL=t.nn_softmax)


def _rows(dev: Device, name: str, rows: int, cols: int, *args) -> None:
    """Launch a kernel that gives a work-item one image row: global (rows, cols)."""
    dev.launch(_kernel(dev, name), (rows, cols), (dev.tuning.nn_rows, 1), *args)


def _each(dev: Device, name: str, n: int, *args) -> None:
    """Launch an element-wise kernel over n items."""
    dev.launch(_kernel(dev, name), (n,), (dev.tuning.ew_local,), *args)


# ---- windows: convolution as a product, max pooling, the direct sparse convolution ----

def geometry(dev: Device, conv, pool=None, out_channels: int = 0) -> cla.Array:
    """The int32 array G of nn.cl: ``conv`` = (C, N, H, W, KH, KW, SH, SW, PH, PW, Ho, Wo); for
    csr_conv_pool also the pooling ``pool`` = (QH, QW, QSH, QSW, QPH, QPW, Hp, Wp) (a 1x1 pool
    of stride 1 when None) and the output channels."""
    vals = [int(v) for v in conv]
    if pool is not None:
        vals += [int(v) for v in pool] + [int(out_channels)]
    elif out_channels:
        vals += [1, 1, 1, 1, 0, 0, vals[10], vals[11], int(out_channels)]
    return dev.to_device(np.array(vals, np.int32), np.int32, category="activations")


def im2col(dev: Device, g: cla.Array, x: cla.Array, cols: cla.Array, out_rows: int, n0: int = 0) -> None:
    """cols[C*KH*KW, N*Ho*Wo] from the samples n0 .. n0+N-1 of x[C, NX, H, W] (G's batch is the
    chunk's N); out_rows = N*Ho."""
    _rows(dev, "im2col", out_rows, cols.shape[0], g, x, cols, n0, x.shape[1])


def col2im(dev: Device, g: cla.Array, dcols: cla.Array, dx: cla.Array, n0: int = 0, n: int | None = None) -> None:
    """The samples n0 .. n0+n-1 of dx[C, NX, H, W] = the adjoint of im2col applied to dcols (a
    gather, no atomics); n (G's batch) defaults to all of dx."""
    c, nx, h = dx.shape[:3]
    n = nx if n is None else n
    _rows(dev, "col2im", n * h, c, g, dcols, dx, n0, nx)


def col_block(dev: Device, y: cla.Array, yc: cla.Array, off: int, to_y: bool) -> None:
    """Between a block of y[M, ld] and yc[R, L]: the R rows and L columns of y that start at its
    flat position ``off`` (row off // ld, column off % ld).  yc = that block (to_y False) or the
    block = yc (to_y True)."""
    ld = y.shape[1]
    r, L = yc.shape
    if off < 0 or off % ld + L > ld or off // ld + r > y.shape[0]:
        raise ValueError(f"col_block: a {r}x{L} block at {off} does not fit {tuple(y.shape)}")
    _rows(dev, "col_block", -(-L // dev.tuning.vec), r, r, L, ld, off, y, yc, int(to_y))


def add_into(dev: Device, y: cla.Array, x: cla.Array) -> None:
    """y += x (flat arrays of one size)."""
    _each(dev, "add_into", y.size, y.size, y, x)


def maxpool_fwd(dev: Device, g: cla.Array, x: cla.Array, y: cla.Array, idx: cla.Array | None,
                relu: bool) -> None:
    """y[C, N, Ho, Wo] = window maxima of x (then ReLU); idx: the winners, or None."""
    c, n, ho = y.shape[:3]
    _rows(dev, "maxpool_fwd", n * ho, c, g, x, y, idx, int(relu))


def maxpool_bwd(dev: Device, g: cla.Array, dy: cla.Array, idx: cla.Array, y: cla.Array,
                relu: bool, dx: cla.Array) -> None:
    """dx[C, N, H, W] from dy over the windows that chose each pixel (idx from maxpool_fwd)."""
    c, n, h = dx.shape[:3]
    _rows(dev, "maxpool_bwd", n * h, c, g, dy, idx, y, int(relu), dx)


def csr_conv_pool(dev: Device, g: cla.Array, w, taps: cla.Array, bias, x: cla.Array, y: cla.Array,
                  relu: bool, flat: bool, out_rows: int) -> None:
    """The convolution straight from the CSR weight w (its entries' taps packed as
    c << 16 | ky << 8 | kx), fused with the pooling in G; out_rows = N*Hp."""
    _rows(dev, "csr_conv_pool", out_rows, w.shape[0], g, w.indptr, taps, w.data, bias, x, y,
          int(relu), int(flat))


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
    sums of dy (db None: only the mask)."""
    m, n = dy.shape
    rl = dev.tuning.nn_reduce
    dev.launch(_kernel(dev, "bias_grad"), (m * rl,), (rl,), m, n, dy, y if relu else None, int(relu), db)


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
    dev.launch(_kernel(dev, "softmax_xent"), (n,), (dev.tuning.nn_softmax,), k, n, z, labels, dz,
               float(gscale), probs, partial if labels is not None else None)
    return partial if labels is not None else None
