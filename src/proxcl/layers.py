"""Layers with exact forward and backward passes on an OpenCL device, dense or CSR weights.

Activations are feature-major (DESIGN.md section 2): a flat batch is ``[F, N]`` and a
spatial one channel-major ``[C, N, H, W]``, so a convolution is ``W[O, C*kh*kw] @ cols``
with ``cols[C*kh*kw, N*Ho*Wo]`` and its output ``[O, N, Ho, Wo]`` comes out directly.
Per-sample shapes (``in_shape``, ``out_shape``) are PyTorch's: ``(F,)`` or ``(C, H, W)``.

A layer's ``forward(x, train, keep)`` returns its output (a buffer of the shared
:class:`Workspace`, valid until the next call); with ``keep`` it remembers what its
``backward(dy, need_dx)`` needs.  ``backward`` fills the ``grad`` of its params and returns
dx (or None).  It may overwrite dy.  A ReLU that directly follows a Linear, Conv2d or
MaxPool2d is fused into that layer (``relu=True``): the forward uses the kernels' epilogue,
the backward masks dy with the stored output.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import pyopencl.array as cla

from .errors import InputError
from .memory import category_of
from .ops import CSRMatrix, DenseMatrix, HostCSR, gemm
from .ops import nn
from .ops.nn import mix32
from .runtime import Device, view

__all__ = ["Param", "Workspace", "Layer", "Linear", "Conv2d", "MaxPool2d", "ReLU", "Flatten",
           "Dropout"]


def _fill_poison(a: cla.Array) -> None:
    if a.size:
        a.fill(np.float32(np.nan) if a.dtype == np.float32 else a.dtype.type(-1))


# The im2col buffer is cut into batch chunks above the device's Tuning.cols_limit_mib.  With the
# CPU form's 8 MiB, LeNet-5 at batch 128 (conv2's columns: 16 MB) runs in two chunks, for about
# 1 % more CPU time per dense training step and 4 % per CSR step on PoCL; on the H200 the same
# chunks cost 25-30 % of a step (its steps are bound by launches), so the GPU form takes none
# (docs/PERFORMANCE.md, memory; scripts/im2col_chunks.py).


class Workspace:
    """Device buffers reused across calls (memory category ``activations``), one per (owner,
    role), sized by need: a buffer grows to the largest shape asked of it and a smaller request
    (the last, short batch of an epoch; an evaluation batch) gets a view of its front.

    Two kinds of owner share them: a layer's own buffers, which training keeps from the forward
    to the backward pass, and, for inference, a pair of buffers that consecutive layers
    alternate between (:meth:`pingpong`) plus scratch space shared by every layer (``SCRATCH``
    roles), so that inference holds the largest activations, not all of them."""

    SCRATCH = "scratch"

    def __init__(self, device: Device):
        self.device = device
        self._bufs: dict = {}      # key -> (flat buffer, {(shape, dtype): view})
        self._poisoned = False
        self.shared = False        # whether layers put their outputs in the ping-pong pair
        # bytes: larger im2col buffers go in batch chunks (None: never)
        self.cols_limit: int | None = (device.tuning.cols_limit_mib << 20) or None
        self.tags: dict = {}       # what a scratch buffer holds now, for owners that may reuse it

    def get(self, key, shape, dtype=np.float32, category: str = "activations") -> cla.Array:
        """A buffer of ``shape`` for ``key`` (valid until the next request of the same key)."""
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        slot = self._bufs.get(key)
        if slot is not None and slot[0].dtype == dtype:
            view = slot[1].get(shape)
            if view is not None:
                return view
        size = int(np.prod(shape))
        if slot is None or slot[0].dtype != dtype or slot[0].size < size:
            slot = self._bufs[key] = (self._new(max(size, 1), dtype, category), {})
        flat, views = slot
        if len(views) >= 8:
            views.clear()
        view = views[shape] = (flat if size == flat.size else flat[:size]).reshape(shape)
        return view

    def _new(self, size: int, dtype, category: str) -> cla.Array:
        a = self.device.empty((size,), dtype, category=category)
        if self._poisoned:
            _fill_poison(a)
        return a

    def pingpong(self, x: cla.Array, shape, dtype=np.float32) -> cla.Array:
        """An output buffer for a layer whose input is x: the one of the pair that x is not in."""
        first = self._bufs.get(("pingpong", 0))
        side = 1 if first is not None and x.base_data is first[0].base_data else 0
        return self.get(("pingpong", side), shape, dtype)

    def release(self, owner) -> None:
        """Drop every buffer of an owner (a layer key, "pingpong" or SCRATCH)."""
        for key in [k for k in self._bufs if isinstance(k, tuple) and k[0] == owner]:
            del self._bufs[key]

    def clear(self) -> None:
        """Drop every buffer."""
        self._bufs.clear()
        self.tags.clear()

    def arrays(self) -> list:
        return [slot[0] for slot in self._bufs.values()]

    def nbytes_by_owner(self, category: str = "activations") -> dict:
        """Bytes of the buffers of a memory category per owner (the first element of a key: a
        layer key, "loss", "input", "pingpong", SCRATCH)."""
        out: dict = {}
        for key, (flat, _) in self._bufs.items():
            if category_of(flat) == category:
                owner = key[0] if isinstance(key, tuple) else key
                out[owner] = out.get(owner, 0) + flat.nbytes
        return out

    def poison(self) -> None:
        """Fill every buffer with NaN (float) or -1 (int), now and whenever a new one is made
        from here on: a test aid, so that an element a kernel fails to write shows up."""
        self._poisoned = True
        for a in self.arrays():
            _fill_poison(a)


class Param:
    """A trainable tensor.  ``value``: a dense device array of ``matrix_shape`` or a
    :class:`CSRMatrix`; ``data``: the flat float32 storage of the values (updated in place by
    optimizers); ``grad``: a flat array like ``data`` written by backward, made (zeros) when it
    is first used, so that a model used only for inference holds no gradients."""

    def __init__(self, name: str, shape, matrix_shape, penalised: bool, value, device: Device):
        self._device = device
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.matrix_shape = tuple(int(s) for s in matrix_shape)
        self.penalised = bool(penalised)
        self.value = value
        self._grad = None

    @property
    def grad(self) -> cla.Array:
        if self._grad is None:
            self._grad = self.device.zeros((int(self.data.size),), np.float32, category="gradients")
        return self._grad

    @property
    def grad_buffer(self) -> cla.Array | None:
        """The gradient array if it has been made, else None (without making it)."""
        return self._grad

    def set_value(self, value) -> None:
        """Replace the storage (a dense device array of matrix_shape or a CSRMatrix); the
        gradient goes, and is made anew (zeros, of the new size) when next used."""
        self._grad = None
        self.value = value

    def release_grad(self) -> None:
        """Free the gradient ahead of a support change; it is made anew (zeros) when next used.
        Between steps a gradient holds nothing that is needed."""
        self._grad = None

    @property
    def device(self) -> Device:
        return self._device

    @property
    def is_sparse(self) -> bool:
        return isinstance(self.value, CSRMatrix)

    @property
    def matrix(self) -> "CSRMatrix | DenseMatrix":
        """The weight as a matrix of ``matrix_shape`` with its products (matmul, matmul_t,
        grad): the CSRMatrix itself, or the dense storage as a DenseMatrix."""
        if isinstance(self.value, CSRMatrix):
            return self.value
        return DenseMatrix(self._device, self.value)

    @property
    def data(self) -> cla.Array:
        value = self.value
        if isinstance(value, CSRMatrix):
            return value.data
        return view(value, (value.size,))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def stored(self) -> int:
        """Number of stored values (the CSR entries, or ``size`` when dense)."""
        return int(self.data.size)

    @property
    def nnz(self) -> int:
        """Number of nonzero values (counted on the host; for logging)."""
        d = self.data
        return int(np.count_nonzero(d.get())) if d.size else 0

    @property
    def density(self) -> float:
        return self.nnz / self.size if self.size else 0.0

    def to_numpy(self) -> np.ndarray:
        """The values as a dense float32 array of the PyTorch shape (zeros off a CSR support)."""
        if self.is_sparse:
            return self.value.to_dense().reshape(self.shape)
        return self.value.get().reshape(self.shape)

    def grad_numpy(self) -> np.ndarray:
        """The gradient in the PyTorch shape (for a CSR weight: on its support, zero elsewhere)."""
        g = self.grad.get()
        if self.is_sparse:
            indptr, indices, _ = self.value.to_arrays()
            return HostCSR(indptr, indices, g, self.matrix_shape).to_dense().reshape(self.shape)
        return g.reshape(self.shape)

    def __repr__(self) -> str:
        kind = "csr" if self.is_sparse else "dense"
        return f"Param({self.name!r}, shape={self.shape}, {kind}, stored={self.stored})"


def _make_param(dev: Device, name, shape, matrix_shape, penalised, host: np.ndarray) -> Param:
    return Param(name, shape, matrix_shape, penalised,
                 dev.to_device(np.ascontiguousarray(host, np.float32).reshape(matrix_shape),
                               category="weights"), dev)


def _make_weight(dev: Device, name, shape, matrix_shape, fan_in: int, rng, weight_init) -> Param:
    """A layer's weight: what ``weight_init(name, shape, matrix_shape, fan_in, rng)`` gives (a
    CSRMatrix, so the weight starts sparse and is never dense on the device, or a dense device
    array of matrix_shape), or, when there is no such function or it gives None, PyTorch's
    default dense init."""
    value = weight_init(name, shape, matrix_shape, fan_in, rng) if weight_init is not None else None
    if value is not None:
        return Param(name, shape, matrix_shape, True, value, dev)
    return _make_param(dev, name, shape, matrix_shape, True, _uniform(rng, shape, fan_in))


def _uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """PyTorch's default init for Linear and Conv2d (Kaiming uniform with a = sqrt(5), which
    is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the same bound for the bias)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Layer:
    """Base class: per-sample ``in_shape``/``out_shape``, ``params``, ``forward``, ``backward``."""

    kind = ""

    def __init__(self, device: Device, workspace: Workspace, in_shape, key=None):
        self.device = device
        self.ws = workspace
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = self.in_shape
        self.params: list[Param] = []
        self.key = key if key is not None else id(self)
        self.relu = False

    def _buf(self, role, shape, dtype=np.float32) -> cla.Array:
        return self.ws.get((self.key, role), shape, dtype)

    def _out(self, x: cla.Array, shape, keep: bool) -> cla.Array:
        """The output buffer of a forward pass on x: the layer's own (kept for the backward), or
        in inference, when the workspace shares outputs, one of its ping-pong pair."""
        if self.ws.shared and not keep:
            return self.ws.pingpong(x, shape)
        return self._buf("y", shape)

    def _scratch(self, role, shape) -> cla.Array:
        """A buffer shared by every layer, valid until the next layer's call."""
        return self.ws.get((Workspace.SCRATCH, role), shape)

    @staticmethod
    def batch_shape(shape, n: int) -> tuple:
        """The internal array shape of a batch of n samples of per-sample ``shape``."""
        if len(shape) == 1:
            return (shape[0], n)
        return (shape[0], n) + tuple(shape[1:])

    def forward(self, x: cla.Array, train: bool = False, keep: bool = False) -> cla.Array:
        raise NotImplementedError

    def backward(self, dy: cla.Array, need_dx: bool = True):
        raise NotImplementedError

    def _mask_and_bias_grad(self, dy2: cla.Array, y2: cla.Array, bias: Param | None) -> None:
        """The fused ReLU's backward (dy2 masked in place by y2 > 0) and the bias gradient
        (row sums of dy2), in one kernel.  dy2, y2: [m, n]."""
        if bias is None and not self.relu:
            return
        nn.bias_grad(self.device, dy2, y2, self.relu, bias.grad if bias is not None else None)


class Linear(Layer):
    """y = W x + b on ``[in, N] -> [out, N]``; W dense ``[out, in]`` or CSR."""

    kind = "linear"

    def __init__(self, device, workspace, in_shape, name: str, out: int, bias: bool = True,
                 rng: np.random.Generator | None = None, key=None, weight_init=None):
        super().__init__(device, workspace, in_shape, key)
        if len(self.in_shape) != 1:
            raise InputError(f"linear layer {name!r} needs a flat input, got shape {list(self.in_shape)} "
                             "(add a flatten layer)")
        fan_in = self.in_shape[0]
        self.name = name
        self.out_shape = (int(out),)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.weight = _make_weight(device, f"{name}.weight", (out, fan_in), (out, fan_in), fan_in, rng,
                                   weight_init)
        self.bias = (_make_param(device, f"{name}.bias", (out,), (out,), False, _uniform(rng, (out,), fan_in))
                     if bias else None)
        self.params = [self.weight] + ([self.bias] if self.bias is not None else [])

    def forward(self, x, train=False, keep=False):
        n = x.shape[1]
        y = self._out(x, (self.out_shape[0], n), keep)
        b = self.bias.value if self.bias is not None else None
        self.weight.matrix.matmul(x, bias=b, relu=self.relu, out=y)
        if keep:
            self._x, self._y = x, y
        return y

    def backward(self, dy, need_dx=True):
        x, y = self._x, self._y
        self._mask_and_bias_grad(dy, y, self.bias)
        self._dy2 = dy
        w = self.weight.matrix
        w.grad(dy, x, out=self.weight.grad)
        if not need_dx:
            return None
        dx = self._buf("dx", x.shape)
        w.matmul_t(dy, out=dx)
        return dx

    def grad_rows(self, r0: int, r1: int, out: cla.Array) -> None:
        """out[r1-r0, in] = rows r0 .. r1-1 of the dense weight gradient of the last backward
        pass (whatever the weight's storage): the gradient of connections a CSR weight lacks,
        computed a block of rows at a time so that no weight-sized buffer is made."""
        n = self._dy2.shape[1]
        dyb = self._scratch("dy_rows", (r1 - r0, n))
        nn.col_block(self.device, self._dy2, dyb, r0 * n, to_y=False)
        gemm(self.device, dyb, self._x, trans_b=True, out=out)


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise InputError(f"{what} must be an int or a pair, got {v!r}")
        a, b = v
    else:
        a = b = v
    try:
        if int(a) != a or int(b) != b:
            raise TypeError
    except (TypeError, ValueError):
        raise InputError(f"{what} must be an int or a pair of ints, got {v!r}") from None
    return int(a), int(b)


def _out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class _Window(Layer):
    """Shared geometry of Conv2d and MaxPool2d."""

    def _geometry(self, what, kernel, stride, padding):
        if len(self.in_shape) != 3:
            raise InputError(f"{what} needs a [C, H, W] input, got shape {list(self.in_shape)}")
        self.kh, self.kw = _pair(kernel, f"{what} kernel")
        self.sh, self.sw = _pair(stride, f"{what} stride")
        self.ph, self.pw = _pair(padding, f"{what} padding")
        if min(self.kh, self.kw, self.sh, self.sw) < 1 or min(self.ph, self.pw) < 0:
            raise InputError(f"{what}: kernel and stride must be >= 1 and padding >= 0")
        c, h, w = self.in_shape
        self.ho = _out_size(h, self.kh, self.sh, self.ph)
        self.wo = _out_size(w, self.kw, self.sw, self.pw)
        if self.ho < 1 or self.wo < 1:
            raise InputError(f"{what}: a {self.kh}x{self.kw} window does not fit a {h}x{w} input "
                             f"with padding {self.ph},{self.pw}")

    def _geo(self, n: int, pool: "MaxPool2d | None" = None, out: int = 0) -> nn.Geometry:
        """The geometry G of nn.cl for a batch of n (cached per n and pooling)."""
        key = (n, id(pool), out)
        cache = self.__dict__.setdefault("_geo_cache", {})
        g = cache.get(key)
        if g is None:
            if len(cache) > 8:
                cache.clear()
            g = cache[key] = nn.geometry(self.device, *self._windows(n, pool), out)
        return g

    def _windows(self, n: int, pool: "MaxPool2d | None") -> tuple:
        """(conv, pool) geometry tuples of nn.geometry for a batch of n."""
        c, h, w = self.in_shape
        conv = (c, n, h, w, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.ho, self.wo)
        window = None if pool is None else (pool.kh, pool.kw, pool.sh, pool.sw, pool.ph, pool.pw,
                                            pool.ho, pool.wo)
        return conv, window


class Conv2d(_Window):
    """2-D convolution on ``[C, N, H, W] -> [O, N, Ho, Wo]``: im2col then ``W @ cols`` with
    W dense ``[O, C*kh*kw]`` or CSR; backward: SDDMM / GEMM for dW, ``W^T dY`` then col2im
    (a gather) for dx.

    The im2col buffer (C*kh*kw times larger than the input) is scratch space that all layers
    share, not kept for the backward pass: there dW is computed from it (im2col runs again
    unless the scratch still holds this layer's columns, as it does for the last convolution),
    then ``W^T dY`` is written over it and dx gathered from that.  So a network holds one such
    buffer, the largest, instead of two per convolution (cols and dcols).  With the workspace's
    ``cols_limit`` the buffer holds a chunk of the batch at a time; the backward pass takes the
    chunks in reverse order, so the last chunk's columns are reused too."""

    kind = "conv2d"

    def __init__(self, device, workspace, in_shape, name: str, out: int, kernel, stride=1, padding=0,
                 bias: bool = True, rng: np.random.Generator | None = None, key=None, weight_init=None):
        super().__init__(device, workspace, in_shape, key)
        self._geometry(f"conv2d layer {name!r}", kernel, stride, padding)
        self.name = name
        c = self.in_shape[0]
        out = int(out)
        fan_in = c * self.kh * self.kw
        self.out_shape = (out, self.ho, self.wo)
        rng = rng if rng is not None else np.random.default_rng(0)
        self.weight = _make_weight(device, f"{name}.weight", (out, c, self.kh, self.kw), (out, fan_in),
                                   fan_in, rng, weight_init)
        self.bias = (_make_param(device, f"{name}.bias", (out,), (out,), False, _uniform(rng, (out,), fan_in))
                     if bias else None)
        self.params = [self.weight] + ([self.bias] if self.bias is not None else [])
        self.pointwise = (self.kh == self.kw == self.sh == self.sw == 1 and self.ph == self.pw == 0)
        self._cols_tag = None

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        """(first sample, samples) of the equal batch chunks whose im2col columns fit the
        workspace's ``cols_limit`` (one chunk, the whole batch, when they all fit or there is no
        limit)."""
        per_sample = 4 * self.in_shape[0] * self.kh * self.kw * self.ho * self.wo
        limit = self.ws.cols_limit
        if self.pointwise or not limit or n * per_sample <= limit:
            return [(0, n)]
        parts = -(-n // max(1, limit // per_sample))
        step = -(-n // parts)
        return [(s, min(step, n - s)) for s in range(0, n, step)]

    def _cols(self, x, n0: int, nc: int, reuse: bool = False):
        """The im2col columns of samples n0 .. n0+nc-1 of x in the shared scratch; with
        ``reuse``, im2col is skipped when the scratch still holds what this layer's forward pass
        wrote there for those samples."""
        c = self.in_shape[0]
        if self.pointwise:
            return view(x, (c, x.size // c))
        cols = self._scratch("cols", (c * self.kh * self.kw, nc * self.ho * self.wo))
        tags, tag = self.ws.tags, self._cols_tag
        if not (reuse and tag is not None and tags.get("cols") is tag and tag[1:] == (n0, nc)):
            nn.im2col(self.device, self._geo(nc), x, cols, nc * self.ho, n0)
            self._cols_tag = tags["cols"] = (object(), n0, nc)
        return cols

    def forward(self, x, train=False, keep=False):
        n = x.shape[1]
        o, p = self.out_shape[0], self.ho * self.wo
        y = self._out(x, (o, n, self.ho, self.wo), keep)
        y2 = view(y, (o, n * p))
        b = self.bias.value if self.bias is not None else None
        w = self.weight.matrix
        chunks = self._chunks(n)
        if len(chunks) == 1:
            w.matmul(self._cols(x, 0, n), bias=b, relu=self.relu, out=y2)
        else:
            for n0, nc in chunks:
                cols = self._cols(x, n0, nc)
                yc = self._scratch("yc", (o, nc * p))
                w.matmul(cols, bias=b, relu=self.relu, out=yc)
                nn.col_block(self.device, y2, yc, n0 * p, to_y=True)
        if keep:
            self._x, self._y2, self._n = x, y2, n
        return y

    def backward(self, dy, need_dx=True):
        n, x = self._n, self._x
        o, p = self.out_shape[0], self.ho * self.wo
        dy2 = view(dy, (o, n * p))
        self._mask_and_bias_grad(dy2, self._y2, self.bias)
        self._dy2 = dy2
        w = self.weight.matrix
        c = self.in_shape[0]
        dx = self._buf("dx", self.batch_shape(self.in_shape, n)) if need_dx else None
        chunks = self._chunks(n)
        if len(chunks) > 1:
            self._backward_chunks(chunks, x, dy2, dx)
            return dx
        cols = self._cols(x, 0, n, reuse=True)
        w.grad(dy2, cols, out=self.weight.grad)
        if not need_dx:
            return None
        if self.pointwise:
            dcols = view(dx, (c, dx.size // c))
        else:
            dcols, self.ws.tags["cols"] = cols, None     # written over: cols is no longer needed
        w.matmul_t(dy2, out=dcols)
        if not self.pointwise:
            nn.col2im(self.device, self._geo(n), dcols, dx)
        return dx

    def _backward_chunks(self, chunks, x, dy2, dx) -> None:
        """The backward pass chunk by chunk of the batch: im2col of the chunk, its part of dY,
        dW summed over the chunks, ``W^T dY`` over the columns and col2im into its part of dx."""
        dev, w, g = self.device, self.weight.matrix, self.weight.grad
        o, p = self.out_shape[0], self.ho * self.wo
        for i, (n0, nc) in enumerate(reversed(chunks)):     # the last chunk's columns are still there
            cols = self._cols(x, n0, nc, reuse=True)
            dyc = self._scratch("yc", (o, nc * p))
            nn.col_block(dev, dy2, dyc, n0 * p, to_y=False)
            if i == 0:
                w.grad(dyc, cols, out=g)
            else:
                part = self._scratch("dw", g.shape)
                w.grad(dyc, cols, out=part)
                nn.add_into(dev, g, part)
            if dx is not None:
                self.ws.tags["cols"] = None
                w.matmul_t(dyc, out=cols)
                nn.col2im(dev, self._geo(nc), cols, dx, n0, nc)

    def grad_rows(self, r0: int, r1: int, out: cla.Array) -> None:
        """out[r1-r0, C*kh*kw] = rows r0 .. r1-1 of the dense weight gradient of the last
        backward pass (as Linear.grad_rows), summed over the batch chunks of im2col."""
        dev, x, n = self.device, self._x, self._n
        p = self.ho * self.wo
        part = None
        for i, (n0, nc) in enumerate(self._chunks(n)):
            cols = self._cols(x, n0, nc)
            dyb = self._scratch("dy_rows", (r1 - r0, nc * p))
            # rows r0.. of dY2[O, n*p], the chunk's columns: a block at r0*n*p + n0*p, row stride n*p
            nn.col_block(dev, self._dy2, dyb, r0 * n * p + n0 * p, to_y=False)
            if i == 0:
                gemm(dev, dyb, cols, trans_b=True, out=out)
            else:
                part = part if part is not None else self._scratch("rows_part", out.shape)
                gemm(dev, dyb, cols, trans_b=True, out=part)
                nn.add_into(dev, out, part)
        self.ws.tags["cols"] = None

    # ---- inference without im2col (CSR weights) ----------------------------
    DIRECT_MAX_DENSITY = 0.2

    def direct_ok(self, pool: "MaxPool2d | None" = None) -> bool:
        """Whether forward_direct can run (followed by ``pool``): a CSR weight, sparse enough for
        the direct convolution to beat im2col + SpMM, taps that fit the packed format, and
        work-items whose loops fit the device's budget."""
        w = self.weight.value
        if not (isinstance(w, CSRMatrix) and w.density <= self.DIRECT_MAX_DENSITY
                and self.in_shape[0] < 32768 and self.kh < 256 and self.kw < 256 and self.wo <= 64):
            return False
        values = nn.geometry_values(*self._windows(1, pool), self.out_shape[0])
        return nn.conv_pool_fits(self.device, values, w.pattern.row_max)

    def _taps(self, w: CSRMatrix) -> cla.Array:
        """Ak[nnz]: each entry's (c, ky, kx) packed as c << 16 | ky << 8 | kx, made once per support."""
        cached = getattr(self, "_taps_cache", None)
        if cached is not None and cached[0]() is w.pattern:
            return cached[1]
        self._taps_cache = None      # the old taps go before the new ones are made
        j = w.indices.get().astype(np.int64) if w.nnz else np.zeros(0, np.int64)
        c, r = np.divmod(j, self.kh * self.kw)
        ky, kx = np.divmod(r, self.kw)
        taps = self.device.to_device(((c << 16) | (ky << 8) | kx).astype(np.int32), np.int32,
                                     category="weights")
        # a weak reference: the cache must not keep a replaced support alive
        self._taps_cache = (weakref.ref(w.pattern), taps)
        return taps

    def forward_direct(self, x, pool: "MaxPool2d | None" = None, flat: bool = False,
                       owner: "Layer | None" = None) -> cla.Array:
        """Inference: the convolution straight from the CSR weight, fused with the max pooling
        ``pool`` that follows (if any), the ReLUs fused into either, and the flatten after it
        when ``flat`` (output [O*Hp*Wp, N], else [O, N, Hp, Wp]).  The output goes to the
        ping-pong pair when the workspace shares outputs, else to the output buffer of ``owner``
        (the last layer fused: its buffer has this shape and exists already once trained)."""
        n = x.shape[1]
        w = self.weight.value
        o = self.out_shape[0]
        hp, wp = (pool.ho, pool.wo) if pool is not None else (self.ho, self.wo)
        relu = self.relu or (pool is not None and pool.relu)
        shape = (o * hp * wp, n) if flat else (o, n, hp, wp)
        if self.ws.shared:
            y = self.ws.pingpong(x, shape)
        else:
            y = (owner or self)._buf("y", shape)
        b = self.bias.value if self.bias is not None else None
        nn.csr_conv_pool(self.device, self._geo(n, pool, o), w, self._taps(w), b, x, y, relu, flat, n * hp)
        return y


class MaxPool2d(_Window):
    """Max pooling on ``[C, N, H, W] -> [C, N, Ho, Wo]`` (stride defaults to the kernel;
    padding counts as -inf); backward is a gather over the windows holding each pixel."""

    kind = "maxpool2d"

    def __init__(self, device, workspace, in_shape, kernel, stride=None, padding=0, key=None):
        super().__init__(device, workspace, in_shape, key)
        self._geometry("maxpool2d", kernel, kernel if stride is None else stride, padding)
        if 2 * self.ph > self.kh or 2 * self.pw > self.kw:
            raise InputError("maxpool2d: padding must be at most half the kernel size")
        self.out_shape = (self.in_shape[0], self.ho, self.wo)
        self.dx_over_input = False   # set by the model (see backward)

    def forward(self, x, train=False, keep=False):
        n = x.shape[1]
        c = self.in_shape[0]
        y = self._out(x, (c, n, self.ho, self.wo), keep)
        idx = self._buf("idx", (y.size,), np.int32) if keep else None
        nn.maxpool_fwd(self.device, self._geo(n), x, y, idx, self.relu)
        if keep:
            self._idx, self._y, self._n, self._x = idx, y, n, x
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        n = self._n
        c, h, w = self.in_shape
        # the gradient may go over the input when the layer before needs not its own output in
        # its backward pass (a convolution without a fused ReLU): one buffer instead of two
        dx = self._x if self.dx_over_input else self._buf("dx", (c, n, h, w))
        nn.maxpool_bwd(self.device, self._geo(n), dy, self._idx, self._y, self.relu, dx)
        return dx


class ReLU(Layer):
    """max(x, 0), for a ReLU that no Linear/Conv2d/MaxPool2d absorbed."""

    kind = "relu"

    def forward(self, x, train=False, keep=False):
        y = self._out(x, x.shape, keep)
        nn.relu_fwd(self.device, x, y)
        if keep:
            self._y = y
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        nn.relu_bwd(self.device, self._y, dy, dy)
        return dy


class Flatten(Layer):
    """``[C, N, H, W] -> [C*H*W, N]`` with PyTorch's feature order (c, h, w); identity on a
    flat input."""

    kind = "flatten"

    def __init__(self, device, workspace, in_shape, key=None):
        super().__init__(device, workspace, in_shape, key)
        self.out_shape = (int(np.prod(self.in_shape)),)

    def forward(self, x, train=False, keep=False):
        n = x.shape[1]
        f = self.out_shape[0]
        if len(self.in_shape) == 1:
            return x
        c, hw = self.in_shape[0], f // self.in_shape[0]
        if hw == 1:
            return view(x, (f, n))
        y = self._out(x, (f, n), keep)
        self._n = n
        nn.channel_major_to_features(self.device, x, y, c, hw, n)
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if len(self.in_shape) == 1:
            return dy
        f, n = dy.shape
        c, hw = self.in_shape[0], f // self.in_shape[0]
        shape = self.batch_shape(self.in_shape, n)
        if hw == 1:
            return view(dy, shape)
        dx = self._buf("dx", shape)
        nn.features_to_channel_major(self.device, dy, dx, c, hw, n)
        return dx


class Dropout(Layer):
    """Inverted dropout: in training, each element is zeroed with probability p and the rest
    scaled by 1/(1-p); identity in evaluation.  The mask comes from a counter-based hash of
    (seed, layer, step), so the backward pass recomputes exactly the forward's mask."""

    kind = "dropout"

    def __init__(self, device, workspace, in_shape, p: float = 0.5, index: int = 0, key=None):
        super().__init__(device, workspace, in_shape, key)
        p = float(p)
        if not (0.0 <= p < 1.0):
            raise InputError(f"dropout p must be in [0, 1), got {p}")
        self.p = p
        self.index = int(index)
        self.set_seed(0)
        self._active = False

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)
        self.step = 0

    def _keys(self, step: int) -> tuple[int, int]:
        s = self.seed & 0xFFFFFFFFFFFFFFFF
        k0 = mix32(mix32(s & 0xFFFFFFFF) ^ mix32((s >> 32) + 0x68E31DA4) ^ mix32(self.index + 0x1B56C4E9))
        k1 = mix32(mix32(step & 0xFFFFFFFF) + 0x9E3779B9 * ((step >> 32) + 1))
        return k0, k1

    def _apply(self, x, y, keys) -> None:
        nn.dropout(self.device, x, y, keys, self.p)

    def forward(self, x, train=False, keep=False):
        self._active = bool(train and self.p > 0.0)
        if not self._active:
            return x
        self._keys_used = self._keys(self.step)
        self.step += 1
        y = self._buf("y", x.shape)
        self._apply(x, y, self._keys_used)
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if self._active:
            self._apply(dy, dy, self._keys_used)
        return dy
