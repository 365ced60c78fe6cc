"""Models: a list of layers built from a spec, with dense or CSR weights, trained and run on
an OpenCL device.

``build(name_or_spec, device=None, seed=0)`` takes a built-in name (``lenet300``, ``lenet5``,
``convnet-small``), a spec dict, a JSON string or the path of a JSON file::

    {"input_shape": [1, 28, 28], "num_classes": 10, "layers": [
        {"type": "conv2d", "name": "conv1", "out": 20, "kernel": 5},
        {"type": "maxpool2d", "kernel": 2}, {"type": "relu"}, {"type": "flatten"},
        {"type": "dropout", "p": 0.5}, {"type": "linear", "name": "fc1", "out": 10}]}

Layer types: linear (out, bias), conv2d (out, kernel, stride, padding, bias), maxpool2d (kernel,
stride, padding), relu, flatten, dropout (p).  In-sizes follow from ``input_shape``; params are
named as PyTorch would name them (``conv1.weight`` [O, C, kh, kw], ``fc1.bias`` [out]).
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pyopencl.array as cla

from .layers import (Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d, Param, ReLU, Workspace,
                     nn_kernel, softmax_xent)
from .ops import CSRMatrix, HostCSR
from .runtime import Device, default_device

__all__ = ["build", "Model", "BUILTIN_SPECS", "normalize_spec"]


def _lin(name, out):
    return {"type": "linear", "name": name, "out": out}


def _conv(name, out, k, padding=0):
    return {"type": "conv2d", "name": name, "out": out, "kernel": k, "padding": padding}


BUILTIN_SPECS = {
    # LeNet-300-100: 784-300-100-10 with ReLU.
    "lenet300": {"input_shape": [1, 28, 28], "num_classes": 10, "layers": [
        {"type": "flatten"}, _lin("fc1", 300), {"type": "relu"}, _lin("fc2", 100), {"type": "relu"},
        _lin("fc3", 10)]},
    # The Caffe LeNet-5: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, fc 500, ReLU, fc 10.
    "lenet5": {"input_shape": [1, 28, 28], "num_classes": 10, "layers": [
        _conv("conv1", 20, 5), {"type": "maxpool2d", "kernel": 2},
        _conv("conv2", 50, 5), {"type": "maxpool2d", "kernel": 2},
        {"type": "flatten"}, _lin("fc1", 500), {"type": "relu"}, _lin("fc2", 10)]},
    # A small VGG-style net for 3x32x32 inputs.
    "convnet-small": {"input_shape": [3, 32, 32], "num_classes": 10, "layers": [
        _conv("conv1", 64, 3, 1), {"type": "relu"}, _conv("conv2", 64, 3, 1), {"type": "relu"},
        {"type": "maxpool2d", "kernel": 2},
        _conv("conv3", 128, 3, 1), {"type": "relu"}, _conv("conv4", 128, 3, 1), {"type": "relu"},
        {"type": "maxpool2d", "kernel": 2},
        {"type": "flatten"}, _lin("fc1", 256), {"type": "relu"}, {"type": "dropout", "p": 0.5},
        _lin("fc2", 10)]},
}

_FIELDS = {
    "linear": {"type", "name", "out", "bias"},
    "conv2d": {"type", "name", "out", "kernel", "stride", "padding", "bias"},
    "maxpool2d": {"type", "kernel", "stride", "padding"},
    "relu": {"type"},
    "flatten": {"type"},
    "dropout": {"type", "p"},
}


def _int(v, what: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise ValueError(f"{what} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _norm_pair(v, what: str, lo: int):
    vals = list(v) if isinstance(v, (list, tuple)) else [v, v]
    if len(vals) != 2:
        raise ValueError(f"{what} must be an integer or a pair, got {v!r}")
    a, b = (_int(x, what, lo) for x in vals)
    return a if a == b else [a, b]


def _load_spec(name_or_spec) -> dict:
    if isinstance(name_or_spec, dict):
        return copy.deepcopy(name_or_spec)
    if not isinstance(name_or_spec, str):
        raise ValueError(f"a model is a built-in name, a spec dict, JSON text or a JSON file, "
                         f"got {type(name_or_spec).__name__}")
    s = name_or_spec.strip()
    if s in BUILTIN_SPECS:
        spec = copy.deepcopy(BUILTIN_SPECS[s])
        spec["name"] = s
        return spec
    if s.startswith("{"):
        try:
            spec = json.loads(s)
        except json.JSONDecodeError as e:
            raise ValueError(f"model spec is not valid JSON: {e}") from None
    elif os.path.isfile(s):
        try:
            with open(s, encoding="utf-8") as f:
                spec = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"model spec file {s}: {e}") from None
    else:
        raise ValueError(f"unknown model {s!r}: use one of {', '.join(BUILTIN_SPECS)}, "
                         "a JSON spec or a JSON file")
    if not isinstance(spec, dict):
        raise ValueError("a model spec must be a JSON object")
    return spec


def normalize_spec(name_or_spec) -> dict:
    """The full spec (every field explicit, param layers named, shapes checked) of a built-in
    name, spec dict, JSON text or JSON file.  Raises ValueError with a one-line message."""
    spec = _load_spec(name_or_spec)
    unknown = set(spec) - {"name", "input_shape", "num_classes", "layers"}
    if unknown:
        raise ValueError(f"model spec: unknown keys {sorted(unknown)}")
    shape = spec.get("input_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) not in (1, 3):
        raise ValueError("model spec: input_shape must be [features] or [C, H, W]")
    shape = [_int(v, "input_shape entries") for v in shape]
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("model spec: layers must be a non-empty list")
    out_layers, names, counts = [], set(), {"linear": 0, "conv2d": 0}
    for i, l in enumerate(layers):
        if not isinstance(l, dict) or l.get("type") not in _FIELDS:
            raise ValueError(f"model spec: layer {i} needs a type, one of {', '.join(_FIELDS)}")
        t = l["type"]
        extra = set(l) - _FIELDS[t]
        if extra:
            raise ValueError(f"model spec: layer {i} ({t}) has unknown fields {sorted(extra)}")
        n = {"type": t}
        if t in ("linear", "conv2d"):
            counts[t] += 1
            name = l.get("name") or f"{'fc' if t == 'linear' else 'conv'}{counts[t]}"
            if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name in names:
                raise ValueError(f"model spec: layer {i} name {name!r} must be unique letters, digits, _")
            names.add(name)
            n["name"] = name
            n["out"] = _int(l.get("out"), f"layer {name} out")
            if t == "conv2d":
                if "kernel" not in l:
                    raise ValueError(f"model spec: conv2d layer {name} needs a kernel size")
                n["kernel"] = _norm_pair(l["kernel"], f"layer {name} kernel", 1)
                n["stride"] = _norm_pair(l.get("stride", 1), f"layer {name} stride", 1)
                n["padding"] = _norm_pair(l.get("padding", 0), f"layer {name} padding", 0)
            b = l.get("bias", True)
            if not isinstance(b, bool):
                raise ValueError(f"model spec: layer {name} bias must be true or false")
            n["bias"] = b
        elif t == "maxpool2d":
            if "kernel" not in l:
                raise ValueError(f"model spec: maxpool2d layer {i} needs a kernel size")
            n["kernel"] = _norm_pair(l["kernel"], f"maxpool2d layer {i} kernel", 1)
            n["stride"] = _norm_pair(l.get("stride", l["kernel"]), f"maxpool2d layer {i} stride", 1)
            n["padding"] = _norm_pair(l.get("padding", 0), f"maxpool2d layer {i} padding", 0)
        elif t == "dropout":
            p = l.get("p", 0.5)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ValueError(f"model spec: dropout layer {i} p must be in [0, 1), got {p!r}")
            n["p"] = float(p)
        out_layers.append(n)
    full = {}
    if "name" in spec:
        full["name"] = str(spec["name"])
    full["input_shape"] = shape
    full["layers"] = out_layers
    # Check the geometry (and find the output size) without a device.
    out_shape = _shapes(full)[-1]
    if len(out_shape) != 1:
        raise ValueError(f"model spec: the last layer's output must be flat, got shape {list(out_shape)} "
                         "(add a flatten and a linear layer)")
    k = out_shape[0]
    if "num_classes" in spec and spec["num_classes"] != k:
        raise ValueError(f"model spec: num_classes is {spec['num_classes']} but the last layer gives {k}")
    if k < 2:
        raise ValueError("model spec: a classifier needs at least 2 outputs")
    full["num_classes"] = k
    return {key: full[key] for key in ("name", "input_shape", "num_classes", "layers") if key in full}


def _shapes(spec) -> list[tuple]:
    """Per-sample shapes: input, then after each layer (no device needed)."""
    shapes = [tuple(spec["input_shape"])]
    for i, l in enumerate(spec["layers"]):
        s, t = shapes[-1], l["type"]
        if t == "linear":
            if len(s) != 1:
                raise ValueError(f"model spec: linear layer {l['name']} needs a flat input, got shape "
                                 f"{list(s)} (add a flatten layer)")
            s = (l["out"],)
        elif t in ("conv2d", "maxpool2d"):
            if len(s) != 3:
                raise ValueError(f"model spec: {t} layer {i} needs a [C, H, W] input, got shape {list(s)}")
            kh, kw = _pairs(l["kernel"])
            sh, sw = _pairs(l["stride"])
            ph, pw = _pairs(l["padding"])
            ho, wo = (s[1] + 2 * ph - kh) // sh + 1, (s[2] + 2 * pw - kw) // sw + 1
            if ho < 1 or wo < 1 or s[1] + 2 * ph < kh or s[2] + 2 * pw < kw:
                raise ValueError(f"model spec: {t} layer {i}: a {kh}x{kw} window does not fit a "
                                 f"{s[1]}x{s[2]} input")
            if t == "maxpool2d" and (2 * ph > kh or 2 * pw > kw):
                raise ValueError(f"model spec: maxpool2d layer {i}: padding must be at most half the kernel")
            s = (l["out"] if t == "conv2d" else s[0], ho, wo)
        elif t == "flatten":
            s = (int(np.prod(s)),)
        shapes.append(s)
    return shapes


def _pairs(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def build(name_or_spec, device: Device | None = None, seed: int = 0) -> "Model":
    """A model from a built-in name, a spec dict, JSON text or a JSON file path, initialised
    with seeded PyTorch-default (Kaiming uniform) weights."""
    return Model(normalize_spec(name_or_spec), device=device, seed=seed)


class Model:
    """A feed-forward classifier on one OpenCL device.  See the module docstring for specs."""

    def __init__(self, spec: dict, device: Device | None = None, seed: int = 0):
        spec = normalize_spec(spec)
        self.spec = spec
        self.device = device if device is not None else default_device()
        self.input_shape = tuple(spec["input_shape"])
        self.num_classes = int(spec["num_classes"])
        self.workspace = Workspace(self.device)
        rng = np.random.default_rng(seed)
        dev, ws = self.device, self.workspace
        self.layers: list[Layer] = []
        shape = self.input_shape
        n_dropout = 0
        for i, l in enumerate(spec["layers"]):
            t = l["type"]
            if t == "linear":
                layer = Linear(dev, ws, shape, l["name"], l["out"], l["bias"], rng=rng, key=i)
            elif t == "conv2d":
                layer = Conv2d(dev, ws, shape, l["name"], l["out"], l["kernel"], l["stride"], l["padding"],
                               l["bias"], rng=rng, key=i)
            elif t == "maxpool2d":
                layer = MaxPool2d(dev, ws, shape, l["kernel"], l["stride"], l["padding"], key=i)
            elif t == "relu":
                layer = ReLU(dev, ws, shape, key=i)
            elif t == "flatten":
                layer = Flatten(dev, ws, shape, key=i)
            else:
                layer = Dropout(dev, ws, shape, l["p"], index=n_dropout, key=i)
                n_dropout += 1
            self.layers.append(layer)
            shape = layer.out_shape
        # The layers that run: a ReLU right after a Linear, Conv2d or MaxPool2d is fused into it.
        self._exec: list[Layer] = []
        for layer in self.layers:
            prev = self._exec[-1] if self._exec else None
            if isinstance(layer, ReLU) and isinstance(prev, (Linear, Conv2d, MaxPool2d)) and not prev.relu:
                prev.relu = True
                continue
            self._exec.append(layer)
        self._first_param = next((i for i, l in enumerate(self._exec) if l.params), len(self._exec))
        self.params: list[Param] = [p for layer in self.layers for p in layer.params]
        self._by_name = {p.name: p for p in self.params}

    # ---- description -------------------------------------------------------
    def __repr__(self) -> str:
        name = self.spec.get("name", "custom")
        return f"Model({name}, {len(self.params)} params, device={self.device.name!r})"

    def param(self, name: str) -> Param:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"no parameter named {name!r} (have {', '.join(self._by_name)})") from None

    def weight_stats(self) -> list[dict]:
        out = []
        for p in self.params:
            nnz = p.nnz
            out.append({"name": p.name, "kind": "csr" if p.is_sparse else "dense", "shape": list(p.shape),
                        "nnz": nnz, "size": p.size, "density": nnz / p.size if p.size else 0.0,
                        "penalised": p.penalised})
        return out

    def set_seed(self, seed: int) -> None:
        """Seed the dropout masks (and restart their step counters)."""
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.set_seed(seed)

    # ---- inputs ------------------------------------------------------------
    def _check_x(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise ValueError(f"inputs must be numeric, got dtype {x.dtype}")
        feat = int(np.prod(self.input_shape))
        ok = (tuple(x.shape[1:]) == self.input_shape or (x.ndim == 2 and x.shape[1] == feat)
              or (len(self.input_shape) == 3 and self.input_shape[0] == 1
                  and tuple(x.shape[1:]) == self.input_shape[1:]))
        if not ok:
            raise ValueError(f"inputs must have shape [N, {', '.join(map(str, self.input_shape))}] or "
                             f"[N, {feat}], got {list(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        return np.ascontiguousarray(x, np.float32)

    def _check_y(self, y, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise ValueError(f"labels must be {n} integers, got {y.dtype} {list(y.shape)}")
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}]")
        return y.astype(np.int32)

    def _upload(self, x: np.ndarray, out: cla.Array | None = None, wait: bool = True) -> cla.Array:
        """Host batch -> the internal layout ([C, N, H, W] or [F, N]) on the device.  With
        wait=False the copy is asynchronous: the caller keeps x alive until it reads back."""
        dev = self.device
        n = x.shape[0]
        shape = Layer.batch_shape(self.input_shape, n)
        if len(self.input_shape) == 3 and self.input_shape[0] == 1:
            if out is None:
                return cla.to_device(dev.queue, x.reshape(shape))
            out.set(x.reshape(shape), async_=not wait)
            return out
        raw = cla.to_device(dev.queue, x, async_=not wait)
        out = out if out is not None else dev.empty(shape)
        if len(self.input_shape) == 3:
            c, hw = self.input_shape[0], self.input_shape[1] * self.input_shape[2]
            dims, strides = (c, n, hw), (hw, c * hw, 1)
        else:
            f = self.input_shape[0]
            dims, strides = (1, f, n), (0, 1, f)
        dev.launch(nn_kernel(dev, "permute3"), (out.size,), (dev.tuning["ew_local"],), *dims, *strides, raw, out)
        return out

    def prepare_batch(self, x, y=None):
        """Numpy inputs (NCHW or [N, features]) -> a device batch in the internal layout; with
        labels, (x_dev, y_dev) with int32 labels on the device.  Fresh arrays each call."""
        x = self._check_x(x)
        xd = self._upload(x)
        if y is None:
            return xd
        return xd, self.device.to_device(self._check_y(y, x.shape[0]), np.int32)

    def _check_prepared(self, xb) -> int:
        if not isinstance(xb, cla.Array) or xb.dtype != np.float32 or xb.ndim < 2:
            raise ValueError("expected a batch from prepare_batch")
        n = int(xb.shape[1])
        if tuple(xb.shape) != Layer.batch_shape(self.input_shape, n):
            raise ValueError(f"device batch has shape {list(xb.shape)}, expected "
                             f"{list(Layer.batch_shape(self.input_shape, n))}")
        return n

    # ---- passes ------------------------------------------------------------
    def _forward(self, x: cla.Array, train: bool, keep: bool) -> cla.Array:
        layers, i = self._exec, 0
        while i < len(layers):
            layer = layers[i]
            if not keep and isinstance(layer, Conv2d) and layer.direct_ok():
                # inference with a sparse CSR convolution: no im2col; the pooling and the
                # flatten that follow run inside the same kernel
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                pool = nxt if isinstance(nxt, MaxPool2d) else None
                j = i + 1 + (pool is not None)
                flat = j < len(layers) and isinstance(layers[j], Flatten)
                x = layer.forward_direct(x, pool, flat)
                i = j + int(flat)
                continue
            x = layer.forward(x, train=train, keep=keep)
            i += 1
        return x

    def _backward(self, dz: cla.Array) -> None:
        d = dz
        for i in range(len(self._exec) - 1, self._first_param - 1, -1):
            d = self._exec[i].backward(d, need_dx=i > self._first_param)

    def _loss_step(self, xb, yb, *, train: bool, grads: bool) -> tuple[float, int]:
        n = self._check_prepared(xb)
        if not isinstance(yb, cla.Array) or yb.shape != (n,) or yb.dtype != np.int32:
            raise ValueError(f"labels must be an int32 device array of shape ({n},) from prepare_batch")
        z = self._forward(xb, train=train, keep=grads)
        ws = self.workspace
        partial = ws.get(("loss", "partial"), (-(-n // 64), 2))
        dz = ws.get(("loss", "dz"), z.shape) if grads else None
        softmax_xent(self.device, z, yb, dz=dz, gscale=1.0 / n, partial=partial)
        if grads:
            self._backward(dz)
        part = partial.get().astype(np.float64)
        return float(part[:, 0].sum()), int(round(part[:, 1].sum()))

    def train_batch(self, xb, yb) -> tuple[float, int]:
        """Forward (dropout on) and backward on a prepared batch: fills every ``param.grad``
        with the gradient of the mean loss.  Returns (mean loss, number correct)."""
        loss_sum, correct = self._loss_step(xb, yb, train=True, grads=True)
        return loss_sum / xb.shape[1], correct

    def eval_batch(self, xb, yb) -> tuple[float, int]:
        """(summed loss, number correct) of a prepared batch in evaluation mode."""
        return self._loss_step(xb, yb, train=False, grads=False)

    def forward(self, x, train: bool = False, batch_size: int = 256):
        """Logits.  Numpy in ([N, ...]) -> numpy [N, classes] (run in chunks of batch_size);
        a batch from prepare_batch -> device logits [classes, N] (a fresh array)."""
        if isinstance(x, cla.Array):
            self._check_prepared(x)
            return self._forward(x, train=train, keep=False).copy()
        return self._host_pass(x, train, batch_size, probs=False)

    def predict_proba(self, x, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities [N, classes] of numpy inputs (evaluation mode)."""
        return self._host_pass(x, False, batch_size, probs=True)

    def _host_pass(self, x, train, batch_size, probs) -> np.ndarray:
        x = self._check_x(x)
        out = []
        for s in range(0, x.shape[0], batch_size):
            xc = x[s:s + batch_size]
            xd = self._upload(xc, self.workspace.get(("input", "x"), Layer.batch_shape(self.input_shape,
                                                                                       xc.shape[0])),
                              wait=False)
            z = self._forward(xd, train=train, keep=False)
            if probs:
                p = self.workspace.get(("loss", "probs"), z.shape)
                softmax_xent(self.device, z, None, probs=p)
                z = p
            out.append(z.get().T)
        return np.ascontiguousarray(np.concatenate(out, axis=0))

    def loss_and_grads(self, x, y, train: bool = False) -> tuple[float, dict]:
        """Mean loss and the gradients {param name: array in the PyTorch shape} of numpy inputs
        (for a CSR weight: the gradient on its support, zero elsewhere).  Evaluation mode
        (dropout off) unless ``train``."""
        xb, yb = self.prepare_batch(x, y)
        loss_sum, _ = self._loss_step(xb, yb, train=train, grads=True)
        return loss_sum / xb.shape[1], {p.name: p.grad_numpy() for p in self.params}

    # ---- dense <-> CSR -----------------------------------------------------
    def _targets(self, name):
        if name is None:
            return [p for p in self.params if p.penalised]
        p = self.param(name)
        if not p.penalised:
            raise ValueError(f"{name} is a bias; only weights can be stored as CSR")
        return [p]

    def to_sparse(self, name: str | None = None, threshold: float = 0.0) -> dict:
        """Store a weight (all weights when name is None) as CSR, keeping |w| > threshold.
        Returns {name: Src} for each weight switched: int32 device arrays of the kept entries'
        flat dense positions (to gather per-coordinate optimizer state).  CSR weights stay."""
        out = {}
        for p in self._targets(name):
            if p.is_sparse:
                continue
            w, src = CSRMatrix.from_dense(p.value, self.device, threshold=float(threshold), return_src=True)
            p.set_value(w)
            out[p.name] = src
        return out

    def to_dense(self, name: str | None = None) -> dict:
        """Store a CSR weight (all when name is None) densely again.  Returns {name: Pos}: int32
        device arrays of the old entries' flat dense positions (to scatter per-entry state)."""
        out = {}
        for p in self._targets(name):
            if not p.is_sparse:
                continue
            w = p.value
            h = w.to_host()
            rows = np.repeat(np.arange(w.shape[0], dtype=np.int64), np.diff(h.indptr))
            pos = (rows * w.shape[1] + h.indices).astype(np.int32)
            p.set_value(self.device.to_device(h.to_dense().astype(np.float32), np.float32))
            out[p.name] = self.device.to_device(pos, np.int32)
        return out

    def compact(self) -> dict:
        """Drop the entries of CSR weights that became exactly zero.  Returns {name: Src} for the
        weights that changed: the kept entries' positions in the old values."""
        out = {}
        for p in self.params:
            if not p.is_sparse:
                continue
            w, _, src = p.value.compact(return_src=True)
            if src is not None:
                p.set_value(w)
                out[p.name] = src
        return out

    # ---- state -------------------------------------------------------------
    def state_dict(self) -> dict:
        """{name: float32 array in the PyTorch shape} (dense, zeros off a CSR support)."""
        return {p.name: p.to_numpy() for p in self.params}

    def _check_names(self, d: dict) -> None:
        if not isinstance(d, dict):
            raise ValueError("a state must be a dict of parameter name -> array")
        missing = [n for n in self._by_name if n not in d]
        extra = [n for n in d if n not in self._by_name]
        if missing or extra:
            raise ValueError(f"state does not match the model: missing {missing}, unexpected {extra}")

    def _dense_array(self, p: Param, a) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{p.name}: expected a numeric array, got {a.dtype}")
        if tuple(a.shape) not in (p.shape, p.matrix_shape):
            raise ValueError(f"{p.name}: expected shape {list(p.shape)}, got {list(a.shape)}")
        a = np.ascontiguousarray(a, np.float32).reshape(p.matrix_shape)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{p.name}: values must be finite")
        return a

    def load_state_dict(self, d: dict) -> None:
        """Load PyTorch-shaped arrays; a dense param is written in place, a CSR weight takes
        the nonzeros of the given array as its support."""
        self._check_names(d)
        arrays = {p.name: self._dense_array(p, d[p.name]) for p in self.params}
        for p in self.params:
            a = arrays[p.name]
            if p.is_sparse:
                p.set_value(CSRMatrix.from_dense(a, self.device))
            else:
                p.value.set(a)

    def sparse_state(self) -> dict:
        """{name: array (PyTorch shape) for dense params, HostCSR (2-D storage shape) for CSR}."""
        return {p.name: (p.value.to_host() if p.is_sparse else p.to_numpy()) for p in self.params}

    def load_sparse_state(self, d: dict) -> None:
        """Load what sparse_state gives: a HostCSR makes the weight CSR, an array dense."""
        self._check_names(d)
        new = {}
        for p in self.params:
            v = d[p.name]
            if isinstance(v, HostCSR):
                if not p.penalised:
                    raise ValueError(f"{p.name} is a bias; it cannot be CSR")
                if tuple(v.shape) != p.matrix_shape:
                    raise ValueError(f"{p.name}: CSR shape {list(v.shape)} != {list(p.matrix_shape)}")
                arrays = [np.asarray(a) for a in (v.indptr, v.indices, v.data)]
                if any(a.dtype.kind not in "iu" for a in arrays[:2]) or arrays[2].dtype.kind not in "fiu":
                    raise ValueError(f"{p.name}: CSR arrays must be integer row pointers and column "
                                     f"indices and numeric values")
                data = arrays[2]
                if data.size and not np.all(np.isfinite(data)):
                    raise ValueError(f"{p.name}: values must be finite")
                try:
                    new[p.name] = CSRMatrix.from_host(v, self.device)
                except (ValueError, IndexError) as e:
                    raise ValueError(f"{p.name}: bad CSR arrays ({e})") from None
                _check_csr(new[p.name], p.name)
            else:
                new[p.name] = self._dense_array(p, v)
        for p in self.params:
            v = new[p.name]
            if isinstance(v, CSRMatrix):
                p.set_value(v)
            elif p.is_sparse:
                p.set_value(self.device.to_device(v, np.float32))
            else:
                p.value.set(v)


def _check_csr(w: CSRMatrix, name: str) -> None:
    """Canonical CSR: Ap non-decreasing from 0, column indices in range and increasing per row."""
    indptr, indices, _ = w.to_arrays()
    m, k = w.shape
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ValueError(f"{name}: CSR row pointers must start at 0 and never decrease")
    if indices.size:
        if indices.min() < 0 or indices.max() >= k:
            raise ValueError(f"{name}: CSR column indices out of range")
        rows = np.repeat(np.arange(m), np.diff(indptr))
        step = np.diff(indices.astype(np.int64))
        same_row = rows[1:] == rows[:-1]
        if np.any(step[same_row] <= 0):
            raise ValueError(f"{name}: CSR column indices must increase within each row")
