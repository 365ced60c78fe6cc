"""Models: a list of layers built from a spec, with dense or CSR weights, trained and run on
an OpenCL device.

``build(name_or_spec, device=None, seed=0)`` takes a built-in name (``lenet300``, ``lenet5``,
``convnet-small``), a spec dict, a JSON string or the path of a JSON file; proxcl.spec
describes the format and checks it.
"""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla

from .errors import InputError
from .layers import Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d, Param, ReLU, Workspace
from .ops import CSRMatrix, HostCSR, csr_problem
from .ops import nn
from .runtime import Device, default_device
from .sparse_init import layer_densities, random_csr_init
from .spec import BUILTIN_SPECS, normalize_spec, weight_shapes

__all__ = ["build", "Model", "BUILTIN_SPECS", "normalize_spec"]


def build(name_or_spec, device: Device | None = None, seed: int = 0, *, init_density: float | None = None,
          switch_density: float = 1.0, csr=()) -> "Model":
    """A model from a built-in name, a spec dict, JSON text or a JSON file path, initialised
    with seeded PyTorch-default (Kaiming uniform) weights.

    ``init_density``: every weight starts instead on a random support, the overall density
    spread over the layers by proxcl.sparse_init, as a CSR matrix (never dense on the device), or
    stored dense when its density is above ``switch_density``.  ``csr``: names of
    weights that start as empty CSR matrices, for a load_sparse_state that fills them (a sparse
    model file is loaded without its dense weights)."""
    return Model(normalize_spec(name_or_spec), device=device, seed=seed, init_density=init_density,
                 switch_density=switch_density, csr=csr)


class Model:
    """A feed-forward classifier on one OpenCL device.  See the module docstring for specs."""

    def __init__(self, spec: dict, device: Device | None = None, seed: int = 0, *,
                 init_density: float | None = None, switch_density: float = 1.0, csr=()):
        spec = normalize_spec(spec)
        self.spec = spec
        self.device = device if device is not None else default_device()
        init = _weight_init(spec, self.device, init_density, switch_density, csr)
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
                layer = Linear(dev, ws, shape, l["name"], l["out"], l["bias"], rng=rng, key=i, weight_init=init)
            elif t == "conv2d":
                layer = Conv2d(dev, ws, shape, l["name"], l["out"], l["kernel"], l["stride"], l["padding"],
                               l["bias"], rng=rng, key=i, weight_init=init)
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
        self._fusion = self._plan_fusion()
        for prev, layer in zip(self._exec, self._exec[1:]):
            # a max pooling's gradient may overwrite its input when the layer that made it keeps
            # nothing of its output for its own backward pass (no fused ReLU to mask with)
            if isinstance(layer, MaxPool2d) and isinstance(prev, (Conv2d, Linear)) and not prev.relu:
                layer.dx_over_input = True
        self._first_param = next((i for i, l in enumerate(self._exec) if l.params), len(self._exec))
        self.params: list[Param] = [p for layer in self.layers for p in layer.params]
        self._by_name = {p.name: p for p in self.params}
        self._kept = False     # whether a pass kept its activations for a backward (training)

    def _plan_fusion(self) -> dict[int, tuple]:
        """For each Conv2d that runs: the max pooling and the flatten right after it, which its
        direct (inference, CSR) convolution runs inside the same kernel.
        {index in _exec: (pool or None, flat, index of the next layer to run)}."""
        plan, layers = {}, self._exec
        for i, layer in enumerate(layers):
            if isinstance(layer, Conv2d):
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                pool = nxt if isinstance(nxt, MaxPool2d) else None
                j = i + 1 + (pool is not None)
                flat = j < len(layers) and isinstance(layers[j], Flatten)
                plan[i] = (pool, flat, j + int(flat))
        return plan

    # ---- description -------------------------------------------------------
    def __repr__(self) -> str:
        name = self.spec.get("name", "custom")
        return f"Model({name}, {len(self.params)} params, device={self.device.name!r})"

    def param(self, name: str) -> Param:
        try:
            return self._by_name[name]
        except KeyError:
            raise InputError(f"no parameter named {name!r} (have {', '.join(self._by_name)})") from None

    def weight_stats(self) -> list[dict]:
        out = []
        for p in self.params:
            nnz = p.nnz
            out.append({"name": p.name, "kind": "csr" if p.is_sparse else "dense", "shape": list(p.shape),
                        "nnz": nnz, "size": p.size, "density": nnz / p.size if p.size else 0.0,
                        "penalised": p.penalised})
        return out

    def inference_memory(self, batch: int) -> dict[str, int]:
        """The device memory a forward pass of ``batch`` images needs, measured on the model's
        device (which should hold only this model): at the pass's peak, the bytes of the
        ``weights`` (their device storage, CSR structures included), of the ``activations`` and
        workspaces, of the ``input`` batch, and their ``total``.  The workspace is emptied first,
        so only this batch size's buffers count; before a model has trained, a pass holds the
        largest activations (the ping-pong pair), not all of them."""
        self.workspace.clear()
        x = np.zeros((int(batch),) + self.input_shape, np.float32)
        with self.device.memory.measure() as m:
            self.forward(x, batch_size=int(batch))
            self.device.finish()
        at = m["at_peak"]
        return {"weights": at["weights"], "activations": at["activations"], "input": at["data"],
                "total": m["peak"]["total"]}

    def activation_bytes(self) -> dict[str, int]:
        """Bytes of the activation and workspace buffers the model holds now, per owner: a
        layer (its name, or kind@index in the spec for layers without one), "scratch" (the
        im2col buffer the convolutions share), "pingpong" (inference outputs), "loss"."""
        out = {}
        for owner, n in self.workspace.nbytes_by_owner("activations").items():
            if isinstance(owner, int):
                layer = self.layers[owner]
                owner = getattr(layer, "name", None) or f"{layer.kind}@{owner}"
            out[str(owner)] = n
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
            raise InputError(f"inputs must be numeric, got dtype {x.dtype}")
        feat = int(np.prod(self.input_shape))
        ok = (tuple(x.shape[1:]) == self.input_shape or (x.ndim == 2 and x.shape[1] == feat)
              or (len(self.input_shape) == 3 and self.input_shape[0] == 1
                  and tuple(x.shape[1:]) == self.input_shape[1:]))
        if not ok:
            raise InputError(f"inputs must have shape [N, {', '.join(map(str, self.input_shape))}] or "
                             f"[N, {feat}], got {list(x.shape)}")
        if x.shape[0] == 0:
            raise InputError("empty batch")
        return np.ascontiguousarray(x, np.float32)

    def _check_y(self, y, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise InputError(f"labels must be {n} integers, got {y.dtype} {list(y.shape)}")
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise InputError(f"labels must lie in [0, {self.num_classes - 1}]")
        return y.astype(np.int32)

    def _upload(self, x: np.ndarray, out: cla.Array | None = None, wait: bool = True) -> cla.Array:
        """Host batch -> the internal layout ([C, N, H, W] or [F, N]) on the device.  With
        wait=False the copy is asynchronous: the caller keeps x alive until it reads back."""
        dev = self.device
        n = x.shape[0]
        shape = Layer.batch_shape(self.input_shape, n)
        if len(self.input_shape) == 3 and self.input_shape[0] == 1:
            if out is None:
                return dev.to_device(x.reshape(shape), category="data")
            out.set(x.reshape(shape), async_=not wait)
            return out
        raw = self.workspace.get(("input", "raw"), x.shape, category="data")
        raw.set(x, async_=not wait)
        out = out if out is not None else dev.empty(shape, category="data")
        if len(self.input_shape) == 3:
            c, hw = self.input_shape[0], self.input_shape[1] * self.input_shape[2]
            nn.batch_to_channel_major(dev, raw, out, c, n, hw)
        else:
            nn.samples_to_features(dev, raw, out, self.input_shape[0], n)
        return out

    def prepare_batch(self, x, y=None):
        """Numpy inputs (NCHW or [N, features]) -> a device batch in the internal layout; with
        labels, (x_dev, y_dev) with int32 labels on the device.  Fresh arrays each call."""
        x = self._check_x(x)
        xd = self._upload(x)
        if y is None:
            return xd
        return xd, self.device.to_device(self._check_y(y, x.shape[0]), np.int32, category="data")

    def stage_batch(self, x, y):
        """Like ``prepare_batch(x, y)``, but into the model's own input buffers (memory category
        data), which the next call overwrites: what the training and evaluation loops use, so
        that one batch is held on the device, not the batch kept for the backward pass and the
        next one.  The copies are asynchronous (the host does not wait for the device's previous
        work): x and y must not change until the queue has run them, which the loops' batches
        never do."""
        x = self._check_x(x)
        n = x.shape[0]
        ws = self.workspace
        # asynchronous copies: pyopencl's copy events hold the host arrays until the copies are done
        xd = self._upload(x, ws.get(("input", "x"), Layer.batch_shape(self.input_shape, n), category="data"),
                          wait=False)
        yd = ws.get(("input", "y"), (n,), np.int32, category="data")
        yd.set(self._check_y(y, n), async_=True)
        return xd, yd

    def _check_prepared(self, xb) -> int:
        if not isinstance(xb, cla.Array) or xb.dtype != np.float32 or xb.ndim < 2:
            raise InputError("expected a batch from prepare_batch")
        n = int(xb.shape[1])
        if tuple(xb.shape) != Layer.batch_shape(self.input_shape, n):
            raise InputError(f"device batch has shape {list(xb.shape)}, expected "
                             f"{list(Layer.batch_shape(self.input_shape, n))}")
        return n

    # ---- passes ------------------------------------------------------------
    def _forward(self, x: cla.Array, train: bool, keep: bool) -> cla.Array:
        # Until a pass keeps activations for a backward (training), inference passes put every
        # layer's output in the workspace's ping-pong pair: only the largest activations are
        # held.  Once training buffers exist, evaluation reuses them.
        self._kept = self._kept or keep
        self.workspace.shared = not self._kept
        layers, i = self._exec, 0
        while i < len(layers):
            fused = None if keep else self._fusion.get(i)
            if fused is not None and layers[i].direct_ok(fused[0]):
                # inference with a sparse CSR convolution: no im2col; the pooling and the
                # flatten that follow run inside the same kernel
                pool, flat, after = fused
                x = layers[i].forward_direct(x, pool, flat, owner=layers[after - 1])
                i = after
                continue
            x = layers[i].forward(x, train=train, keep=keep)
            i += 1
        return x

    def _backward(self, dz: cla.Array) -> None:
        d = dz
        for i in range(len(self._exec) - 1, self._first_param - 1, -1):
            d = self._exec[i].backward(d, need_dx=i > self._first_param)

    def _loss_step(self, xb, yb, *, train: bool, grads: bool, predictions: bool = False) -> tuple:
        n = self._check_prepared(xb)
        if not isinstance(yb, cla.Array) or yb.shape != (n,) or yb.dtype != np.int32:
            raise InputError(f"labels must be an int32 device array of shape ({n},) from prepare_batch")
        z = self._forward(xb, train=train, keep=grads)
        ws = self.workspace
        partial = ws.get(("loss", "partial"), nn.softmax_partial_shape(self.device, n))
        dz = ws.get(("loss", "dz"), z.shape) if grads else None
        nn.softmax_xent(self.device, z, yb, dz=dz, gscale=1.0 / n, partial=partial)
        pred = z.get().argmax(axis=0) if predictions else None
        # the loss sums are read without waiting for the backward pass: the read is queued before
        # it and waited for after it is queued, so the device runs it while the host goes on
        part, read = self.device.get_async(partial)
        if grads:
            self._backward(dz)
        read.wait()
        part = part.astype(np.float64)
        out = (float(part[:, 0].sum()), int(round(part[:, 1].sum())))
        return out + (pred,) if predictions else out

    def train_batch(self, xb, yb) -> tuple[float, int]:
        """Forward (dropout on) and backward on a prepared batch: fills every ``param.grad``
        with the gradient of the mean loss.  Returns (mean loss, number correct)."""
        loss_sum, correct = self._loss_step(xb, yb, train=True, grads=True)
        return loss_sum / xb.shape[1], correct

    def eval_batch(self, xb, yb, predictions: bool = False) -> tuple:
        """(summed loss, number correct) of a prepared batch in evaluation mode; with
        ``predictions`` also the predicted class of every image (numpy [N])."""
        return self._loss_step(xb, yb, train=False, grads=False, predictions=predictions)

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
                                                                                       xc.shape[0]),
                                                     category="data"),
                              wait=False)
            z = self._forward(xd, train=train, keep=False)
            if probs:
                p = self.workspace.get(("loss", "probs"), z.shape)
                nn.softmax_xent(self.device, z, None, probs=p)
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
            raise InputError(f"{name} is a bias; only weights can be stored as CSR")
        return [p]

    def to_sparse(self, name: str | None = None, threshold: float = 0.0) -> dict:
        """Store a weight (all weights when name is None) as CSR, keeping |w| > threshold.
        Returns {name: Src} for each weight switched: int32 device arrays of the kept entries'
        flat dense positions (to gather per-coordinate optimizer state).  CSR weights stay."""
        out = {}
        for p in self._targets(name):
            if p.is_sparse:
                continue
            p.release_grad()
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
            h = p.value.to_host()
            pos = h.positions().astype(np.int32)
            p.set_value(self.device.to_device(h.to_dense().astype(np.float32), np.float32, category="weights"))
            out[p.name] = self.device.to_device(pos, np.int32, category="weights")
        return out

    def compact(self) -> dict:
        """Drop the entries of CSR weights that became exactly zero.  Returns {name: Src} for the
        weights that changed: the kept entries' positions in the old values."""
        out = {}
        for p in self.params:
            if not p.is_sparse:
                continue
            p.release_grad()       # freed before the new support is made (see Param.release_grad)
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
            raise InputError("a state must be a dict of parameter name -> array")
        missing = [n for n in self._by_name if n not in d]
        extra = [n for n in d if n not in self._by_name]
        if missing or extra:
            raise InputError(f"state does not match the model: missing {missing}, unexpected {extra}")

    def _dense_array(self, p: Param, a) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise InputError(f"{p.name}: expected a numeric array, got {a.dtype}")
        if tuple(a.shape) not in (p.shape, p.matrix_shape):
            raise InputError(f"{p.name}: expected shape {list(p.shape)}, got {list(a.shape)}")
        a = np.ascontiguousarray(a, np.float32).reshape(p.matrix_shape)
        if not np.all(np.isfinite(a)):
            raise InputError(f"{p.name}: values must be finite")
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
                    raise InputError(f"{p.name} is a bias; it cannot be CSR")
                if tuple(v.shape) != p.matrix_shape:
                    raise InputError(f"{p.name}: CSR shape {list(v.shape)} != {list(p.matrix_shape)}")
                arrays = [np.asarray(a) for a in (v.indptr, v.indices, v.data)]
                if any(a.dtype.kind not in "iu" for a in arrays[:2]) or arrays[2].dtype.kind not in "fiu":
                    raise InputError(f"{p.name}: CSR arrays must be integer row pointers and column "
                                     f"indices and numeric values")
                data = arrays[2]
                if data.size and not np.all(np.isfinite(data)):
                    raise InputError(f"{p.name}: values must be finite")
                try:
                    new[p.name] = CSRMatrix.from_host(v, self.device)
                except (ValueError, IndexError) as e:
                    raise InputError(f"{p.name}: bad CSR arrays ({e})") from None
                _check_csr(new[p.name], p.name)
            else:
                new[p.name] = self._dense_array(p, v)
        for p in self.params:
            v = new[p.name]
            if isinstance(v, CSRMatrix):
                p.set_value(v)
            elif p.is_sparse:
                p.set_value(self.device.to_device(v, np.float32, category="weights"))
            else:
                p.value.set(v)


def _weight_init(spec: dict, device: Device, init_density, switch_density, csr):
    """The layers' weight_init for build's init_density or csr (None: the dense default)."""
    if init_density is not None:
        densities = layer_densities(weight_shapes(spec), init_density)
        return random_csr_init(densities, device, switch_density)
    names = set(csr)
    if not names:
        return None

    def empty(name, shape, matrix_shape, fan_in, rng):
        if name not in names:
            return None
        m, k = matrix_shape
        return CSRMatrix.from_arrays(np.zeros(m + 1, np.int32), np.zeros(0, np.int32),
                                     np.zeros(0, np.float32), (m, k), device)
    return empty


def _check_csr(w: CSRMatrix, name: str) -> None:
    """Canonical CSR: row pointers from 0 to nnz never decreasing, column indices in range and
    increasing within each row."""
    indptr, indices, data = w.to_arrays()
    why = csr_problem(indptr, indices, data, w.shape, w.nnz)
    if why:
        raise InputError(f"{name}: bad CSR arrays ({why})")
