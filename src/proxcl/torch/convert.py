"""``nn.Module`` <-> proxcl model file.

``export(module, path)`` writes the spec and weights that ``proxcl.torch.trace.to_spec`` finds,
storing a weight as CSR where that takes fewer bytes than dense.  ``module_from_spec(spec)``
builds the ``nn.Sequential`` of a spec (layers named as in the spec, so its state_dict keys are
the model file's tensor names) and ``load(path)`` reads a model file back into one.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from proxcl.data import check_normalisation
from proxcl.errors import InputError
from proxcl.modelfile import ModelFileError, csr_nbytes, dense_nbytes, read_model_file, write_model_file
from proxcl.ops import HostCSR
from proxcl.spec import normalize_spec
from proxcl.torch.trace import layer_name, to_spec

__all__ = ["export", "module_from_spec", "load", "read", "host_csr", "clean_state_dict"]


def host_csr(a: np.ndarray) -> HostCSR:
    """The CSR form of a 2-D array: its exact nonzeros (-0.0 is a zero), row by row."""
    rows, cols = np.nonzero(a)
    indptr = np.zeros(a.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=a.shape[0]), out=indptr[1:])
    return HostCSR(indptr, cols.astype(np.int32), a[rows, cols].astype(np.float32), a.shape)


def _smaller_form(w: np.ndarray, half: bool):
    """A weight as CSR (2-D storage shape [out, rest]) when that is smaller, else as it is."""
    m = w.reshape(w.shape[0], -1)
    return host_csr(m) if csr_nbytes(m.shape, np.count_nonzero(m), half) < dense_nbytes(m.shape, half) else w


def export(module: nn.Module, path, *, input_shape=None, name: str | None = None, normalisation=None,
           class_names=None, metadata: dict | None = None, half: bool = False) -> dict:
    """Write ``module`` as a proxcl model file (atomically); returns its spec.  ``input_shape``
    and ``name`` as for ``to_spec``; ``normalisation`` ({"mean", "std"} of the raw 0..255 pixels,
    as ``Dataset.normalisation``) and ``class_names`` let ``proxcl predict`` take raw images;
    ``metadata`` is stored as given; ``half`` stores float16 values."""
    spec, tensors, origins = to_spec(module, input_shape, name)
    stored, nnz, weights = {}, 0, 0
    for tname, a in tensors.items():
        if tname.endswith(".weight"):
            nnz += int(np.count_nonzero(a))
            weights += a.size
            stored[tname] = _smaller_form(a, half)
        else:
            stored[tname] = a
    meta = dict(metadata or {})
    meta.update({"source": "pytorch", "torch_layers": origins, "nnz": nnz, "weights": weights})
    if normalisation is not None:
        mean, std = check_normalisation(normalisation)
        meta["normalisation"] = {"mean": mean, "std": std}
    if class_names is not None:
        meta["class_names"] = [str(c) for c in class_names]
    write_model_file(path, spec, stored, metadata=meta, half=half)
    return spec


# ---- spec -> module -------------------------------------------------------------------------------

def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


def module_from_spec(spec) -> nn.Sequential:
    """The float32 nn.Sequential of a spec (built-in name, dict, JSON text or file): layers with
    params named as in the spec (so ``conv1.weight``), the others ``<type><index>``; PyTorch's init."""
    spec = normalize_spec(spec)
    used = {l["name"] for l in spec["layers"] if "name" in l}
    x = torch.zeros(1, *spec["input_shape"], dtype=torch.float32)     # proxcl computes in float32
    layers = OrderedDict()
    for i, l in enumerate(spec["layers"]):
        t = l["type"]
        if t == "linear":
            m = nn.Linear(x.shape[1], l["out"], bias=l["bias"], dtype=torch.float32)
        elif t == "conv2d":
            m = nn.Conv2d(x.shape[1], l["out"], _tuple(l["kernel"]), _tuple(l["stride"]), _tuple(l["padding"]),
                          bias=l["bias"], dtype=torch.float32)
        elif t == "maxpool2d":
            m = nn.MaxPool2d(_tuple(l["kernel"]), _tuple(l["stride"]), _tuple(l["padding"]))
        elif t == "relu":
            m = nn.ReLU()
        elif t == "flatten":
            m = nn.Flatten()
        else:
            m = nn.Dropout(l["p"])
        layers[l.get("name") or layer_name(f"{t}{i}", used)] = m
        with torch.no_grad():
            x = m(x)
    return nn.Sequential(layers)


def load(path, *, with_metadata: bool = False):
    """A model file as an nn.Sequential in evaluation mode (CSR weights made dense); with
    ``with_metadata``, (module, metadata)."""
    module, _, metadata = read(path)
    return (module, metadata) if with_metadata else module


def read(path) -> tuple[nn.Sequential, dict, dict]:
    """(module in evaluation mode, spec, metadata) of a model file."""
    spec, tensors, metadata = read_model_file(path)
    try:
        module = module_from_spec(spec)
    except InputError as e:
        raise ModelFileError(f"{path}: its model cannot be built: {e}") from None
    shapes = {k: v.shape for k, v in module.state_dict().items()}
    if set(shapes) != set(tensors):
        raise ModelFileError(f"{path}: tensors {sorted(tensors)} do not match its spec's {sorted(shapes)}")
    state = {}
    for name, t in tensors.items():
        a = t.to_dense() if isinstance(t, HostCSR) else np.asarray(t)
        if a.size != int(np.prod(shapes[name])):
            raise ModelFileError(f"{path}: {name} has {a.size} values, its layer {int(np.prod(shapes[name]))}")
        state[name] = torch.from_numpy(np.ascontiguousarray(a, np.float32)).reshape(shapes[name])
    module.load_state_dict(state)
    module.eval()
    return module, spec, metadata


def clean_state_dict(state) -> dict:
    """A saved state_dict made loadable into module_from_spec's module: a DistributedDataParallel
    ``module.`` prefix dropped, torch.nn.utils.prune's ``X_orig`` and ``X_mask`` multiplied into X."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InputError("expected a state_dict: a dict of parameter names to tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out = {}
    for k, v in state.items():
        if k.endswith("_orig") and k[:-5] + "_mask" in state:
            out[k[:-5]] = v * state[k[:-5] + "_mask"]
        elif not (k.endswith("_mask") and k[:-5] + "_orig" in state):
            out[k] = v
    return out
