"""The model spec: the architecture of a feed-forward classifier as JSON data, its built-in
specs and its checks (no device needed).

A spec is a built-in name (``lenet300``, ``lenet5``, ``convnet-small``), a dict, a JSON string
or the path of a JSON file::

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

from .checks import whole
from .errors import InputError

__all__ = ["BUILTIN_SPECS", "normalize_spec"]


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
    return whole(what, v, lo)


def _norm_pair(v, what: str, lo: int):
    vals = list(v) if isinstance(v, (list, tuple)) else [v, v]
    if len(vals) != 2:
        raise InputError(f"{what} must be an integer or a pair, got {v!r}")
    a, b = (_int(x, what, lo) for x in vals)
    return a if a == b else [a, b]


def _load_spec(name_or_spec) -> dict:
    if isinstance(name_or_spec, dict):
        return copy.deepcopy(name_or_spec)
    if not isinstance(name_or_spec, str):
        raise InputError(f"a model is a built-in name, a spec dict, JSON text or a JSON file, "
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
            raise InputError(f"model spec is not valid JSON: {e}") from None
    elif os.path.isfile(s):
        try:
            with open(s, encoding="utf-8") as f:
                spec = json.load(f)
        except UnicodeDecodeError:
            from .sniff import looks_like
            with open(s, "rb") as f:
                what = looks_like(f.read(4096), s) or "binary data"
            raise InputError(f"model spec file {s}: not a JSON spec: it looks like {what}") from None
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"model spec file {s}: {e}") from None
    else:
        raise InputError(f"unknown model {s!r}: use one of {', '.join(BUILTIN_SPECS)}, "
                         "a JSON spec or a JSON file")
    if not isinstance(spec, dict):
        raise InputError("a model spec must be a JSON object")
    return spec


def normalize_spec(name_or_spec) -> dict:
    """The full spec (every field explicit, param layers named, shapes checked) of a built-in
    name, spec dict, JSON text or JSON file.  Raises ValueError with a one-line message."""
    spec = _load_spec(name_or_spec)
    unknown = set(spec) - {"name", "input_shape", "num_classes", "layers"}
    if unknown:
        raise InputError(f"model spec: unknown keys {sorted(unknown)}")
    shape = spec.get("input_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) not in (1, 3):
        raise InputError("model spec: input_shape must be [features] or [C, H, W]")
    shape = [_int(v, "input_shape entries") for v in shape]
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise InputError("model spec: layers must be a non-empty list")
    names, counts = set(), {"linear": 0, "conv2d": 0}
    out_layers = [_norm_layer(i, l, names, counts) for i, l in enumerate(layers)]
    full = {}
    if "name" in spec:
        full["name"] = str(spec["name"])
    full["input_shape"] = shape
    full["layers"] = out_layers
    # Check the geometry (and find the output size) without a device.
    out_shape = _shapes(full)[-1]
    if len(out_shape) != 1:
        raise InputError(f"model spec: the last layer's output must be flat, got shape {list(out_shape)} "
                         "(add a flatten and a linear layer)")
    k = out_shape[0]
    if "num_classes" in spec and spec["num_classes"] != k:
        raise InputError(f"model spec: num_classes is {spec['num_classes']} but the last layer gives {k}")
    if k < 2:
        raise InputError("model spec: a classifier needs at least 2 outputs")
    full["num_classes"] = k
    return {key: full[key] for key in ("name", "input_shape", "num_classes", "layers") if key in full}


def _norm_layer(i: int, l, names: set, counts: dict) -> dict:
    """Layer i of a spec with every field explicit (param layers named uniquely)."""
    if not isinstance(l, dict) or "type" not in l:
        raise InputError(f"model spec: layer {i} needs a type, one of {', '.join(_FIELDS)}")
    if not isinstance(l["type"], str) or l["type"] not in _FIELDS:
        raise InputError(f"model spec: layer {i} has unknown type {l['type']!r}; use one of {', '.join(_FIELDS)}")
    t = l["type"]
    extra = set(l) - _FIELDS[t]
    if extra:
        raise InputError(f"model spec: layer {i} ({t}) has unknown fields {sorted(extra)}")
    n = {"type": t}
    if t in ("linear", "conv2d"):
        n.update(_norm_param_layer(i, l, t, names, counts))
    elif t == "maxpool2d":
        if "kernel" not in l:
            raise InputError(f"model spec: maxpool2d layer {i} needs a kernel size")
        n["kernel"] = _norm_pair(l["kernel"], f"maxpool2d layer {i} kernel", 1)
        n["stride"] = _norm_pair(l.get("stride", l["kernel"]), f"maxpool2d layer {i} stride", 1)
        n["padding"] = _norm_pair(l.get("padding", 0), f"maxpool2d layer {i} padding", 0)
    elif t == "dropout":
        p = l.get("p", 0.5)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise InputError(f"model spec: dropout layer {i} p must be in [0, 1), got {p!r}")
        n["p"] = float(p)
    return n


def _norm_param_layer(i: int, l: dict, t: str, names: set, counts: dict) -> dict:
    counts[t] += 1
    name = l.get("name") or f"{'fc' if t == 'linear' else 'conv'}{counts[t]}"
    if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name in names:
        raise InputError(f"model spec: layer {i} name {name!r} must be unique letters, digits, _")
    names.add(name)
    n = {"name": name, "out": _int(l.get("out"), f"layer {name} out")}
    if t == "conv2d":
        if "kernel" not in l:
            raise InputError(f"model spec: conv2d layer {name} needs a kernel size")
        n["kernel"] = _norm_pair(l["kernel"], f"layer {name} kernel", 1)
        n["stride"] = _norm_pair(l.get("stride", 1), f"layer {name} stride", 1)
        n["padding"] = _norm_pair(l.get("padding", 0), f"layer {name} padding", 0)
    b = l.get("bias", True)
    if not isinstance(b, bool):
        raise InputError(f"model spec: layer {name} bias must be true or false")
    n["bias"] = b
    return n


def _shapes(spec) -> list[tuple]:
    """Per-sample shapes: input, then after each layer (no device needed)."""
    shapes = [tuple(spec["input_shape"])]
    for i, l in enumerate(spec["layers"]):
        s, t = shapes[-1], l["type"]
        if t == "linear":
            if len(s) != 1:
                raise InputError(f"model spec: linear layer {l['name']} needs a flat input, got shape "
                                 f"{list(s)} (add a flatten layer)")
            s = (l["out"],)
        elif t in ("conv2d", "maxpool2d"):
            if len(s) != 3:
                raise InputError(f"model spec: {t} layer {i} needs a [C, H, W] input, got shape {list(s)}")
            kh, kw = _pairs(l["kernel"])
            sh, sw = _pairs(l["stride"])
            ph, pw = _pairs(l["padding"])
            ho, wo = (s[1] + 2 * ph - kh) // sh + 1, (s[2] + 2 * pw - kw) // sw + 1
            if ho < 1 or wo < 1 or s[1] + 2 * ph < kh or s[2] + 2 * pw < kw:
                raise InputError(f"model spec: {t} layer {i}: a {kh}x{kw} window does not fit a "
                                 f"{s[1]}x{s[2]} input")
            if t == "maxpool2d" and (2 * ph > kh or 2 * pw > kw):
                raise InputError(f"model spec: maxpool2d layer {i}: padding must be at most half the kernel")
            s = (l["out"] if t == "conv2d" else s[0], ho, wo)
        elif t == "flatten":
            s = (int(np.prod(s)),)
        shapes.append(s)
    return shapes


def weight_shapes(spec) -> dict[str, tuple[int, ...]]:
    """{weight name: PyTorch shape} of a normalised spec's linear and conv2d layers, in order."""
    out = {}
    for l, s in zip(spec["layers"], _shapes(spec)):
        if l["type"] == "linear":
            out[f"{l['name']}.weight"] = (l["out"], s[0])
        elif l["type"] == "conv2d":
            out[f"{l['name']}.weight"] = (l["out"], s[0]) + _pairs(l["kernel"])
    return out


def _pairs(v):
    return (v, v) if isinstance(v, int) else tuple(v)
