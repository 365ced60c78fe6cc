"""``nn.Module`` -> proxcl model spec: ``to_spec`` traces the module's forward (``torch.fx``),
which must be a chain of Linear, Conv2d, MaxPool2d, ReLU, Flatten and Dropout (as modules or in
their functional forms, ``x.view(x.size(0), -1)`` included), and takes the weights as they are: a
zero is whatever is exactly zero, from any pruning method (``torch.nn.utils.prune``'s
``weight_orig * weight_mask`` and ``torch.ao.pruning``'s parametrizations included).  Anything
else is one error naming the first unsupported layer and where it is.
"""

from __future__ import annotations

import operator
import re
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from proxcl.errors import InputError
from proxcl.spec import normalize_spec

__all__ = ["SUPPORTED", "to_spec", "effective", "first_line", "layer_name"]

SUPPORTED = ("Linear", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Dropout")
_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)
_POOL_FUNCTIONS = (F.max_pool2d, torch.max_pool2d)
_FLATTEN_FUNCTIONS = (torch.flatten, torch.reshape)
_DROPOUT_FUNCTIONS = (F.dropout,)
_SHAPE_METHODS = ("size", "dim")
_NOOP_METHODS = ("contiguous",)


# ---- weights as they are --------------------------------------------------------------------------

def effective(module: nn.Module, name: str) -> torch.Tensor | None:
    """The value a layer computes with: ``NAME_orig * NAME_mask`` under torch.nn.utils.prune (the
    attribute itself is refreshed only by the next forward), else the attribute (a parametrized
    one, as torch.ao.pruning makes, computes its masked value when read)."""
    orig, mask = getattr(module, f"{name}_orig", None), getattr(module, f"{name}_mask", None)
    if isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor):
        return (orig * mask).detach()
    value = getattr(module, name, None)
    return value.detach() if isinstance(value, torch.Tensor) else None


def first_line(e: BaseException) -> str:
    """An exception's message in one line (its type when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


# ---- module -> spec -------------------------------------------------------------------------------

def _trace(module: nn.Module):
    import torch.fx as fx
    if isinstance(module, (nn.Linear, nn.Conv2d)):      # a bare layer: trace it as a one-layer chain
        module = nn.Sequential(OrderedDict([("fc" if isinstance(module, nn.Linear) else "conv", module)]))
    try:
        return fx.symbolic_trace(module)
    except Exception as e:      # noqa: BLE001 - any tracing failure is the module's form
        raise InputError(f"cannot export: tracing the module's forward failed ({first_line(e)}); build it as a "
                         f"chain of {', '.join(SUPPORTED)}") from None


def _unsupported(what: str) -> InputError:
    return InputError(f"cannot export: {what} is not supported (proxcl runs a chain of "
                      f"{', '.join(SUPPORTED)})")


def _pair(v) -> list[int] | int:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return v[0] if v[0] == v[1] else [int(v[0]), int(v[1])]


def _conv_layer(mod: nn.Conv2d, where: str) -> dict:
    if mod.groups != 1 or _pair(mod.dilation) != 1 or mod.padding_mode != "zeros":
        raise _unsupported(f"Conv2d at '{where}' with groups, dilation or {mod.padding_mode} padding")
    padding = mod.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif all(k % 2 for k in mod.kernel_size):          # "same" with stride 1 and odd kernels
            padding = tuple(k // 2 for k in mod.kernel_size)
        else:
            raise _unsupported(f"Conv2d at '{where}' with padding='same' and an even kernel")
    return {"type": "conv2d", "out": mod.out_channels, "kernel": _pair(mod.kernel_size),
            "stride": _pair(mod.stride), "padding": _pair(padding), "bias": mod.bias is not None}


def _pool_layer(kernel, stride, padding, dilation, ceil_mode, return_indices, where: str) -> dict:
    if _pair(dilation) != 1 or ceil_mode or return_indices:
        raise _unsupported(f"MaxPool2d at '{where}' with dilation, ceil_mode or return_indices")
    stride = kernel if stride is None or stride == [] or stride == () else stride
    return {"type": "maxpool2d", "kernel": _pair(kernel), "stride": _pair(stride), "padding": _pair(padding)}


class _Chain:
    """Walks a traced graph in order: every tensor operation must take the previous one's output
    and nothing else; shape queries (x.size(0)) are allowed as arguments of a reshape."""

    def __init__(self, gm, example: torch.Tensor):
        from torch.fx.passes.shape_prop import ShapeProp
        self.gm = gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise InputError(f"cannot export: forward must take one input tensor, it takes {len(placeholders)}")
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example)
        except Exception as e:      # noqa: BLE001 - a module that cannot run on that shape
            raise InputError(f"cannot export: the module does not run on inputs of shape {list(example.shape[1:])} "
                             f"({first_line(e.__cause__ or e)})") from None    # ShapeProp wraps the layer's error
        self.cur = placeholders[0]
        self.shape_queries: set = set()
        self.attrs: set = set()
        self.layers: list[tuple] = []    # (spec layer, weight, bias (None: none), where)

    @staticmethod
    def shape(node) -> tuple:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    def _is_query(self, n) -> bool:
        if n.op == "call_method" and n.target in _SHAPE_METHODS:
            return True
        if n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",):
            return True
        return (n.op == "call_function" and n.target is operator.getitem
                and isinstance(n.args[0], torch.fx.Node) and n.args[0] in self.shape_queries)

    def walk(self) -> list:
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                continue
            if n.op == "output":
                if n.args[0] is not self.cur:
                    raise _unsupported("a forward that returns something other than its last layer's output")
                return self.layers
            if self._is_query(n):
                self.shape_queries.add(n)
                continue
            if n.op == "get_attr":          # a parameter that a functional layer uses
                self.attrs.add(n)
                continue
            data = [a for a in n.all_input_nodes if a not in self.shape_queries and a not in self.attrs]
            if data != [self.cur]:
                raise _unsupported(f"{self._describe(n)} on more than the previous layer's output (a branch "
                                   f"or skip connection)")
            layer = self._layer(n)
            if layer is not None:
                self.layers.append(layer)
            self.cur = n
        raise _unsupported("a forward without an output")       # pragma: no cover - fx always has one

    def _describe(self, n) -> str:
        if n.op == "call_module":
            return f"{type(self.gm.get_submodule(n.target)).__name__} at '{n.target}'"
        if n.op == "call_function":
            return f"the function {getattr(n.target, '__name__', n.target)} at '{n.name}'"
        if n.op == "call_method":
            return f"the tensor method .{n.target}() at '{n.name}'"
        return f"the {n.op} {n.target!r}"

    def _flatten(self, n, what: str):
        before, after = self.shape(self.cur), self.shape(n)
        if len(before) >= 2 and after == (before[0], int(np.prod(before[1:]))):
            return {"type": "flatten"}, None, None, n.name
        raise _unsupported(f"{what} from {list(before[1:])} to {list(after[1:])} per sample (only "
                           f"flattening each sample is)")

    def _kwargs(self, n) -> dict:
        norm = n.normalized_arguments(self.gm, normalize_to_only_use_kwargs=True)
        if norm is None:
            raise _unsupported(f"{self._describe(n)} with these arguments")
        return dict(norm.kwargs)

    def _tensor(self, node) -> torch.Tensor | None:
        """The value of a get_attr argument (None for a missing bias), pruning masks applied."""
        if node is None:
            return None
        if not (isinstance(node, torch.fx.Node) and node in self.attrs):
            raise _unsupported(f"a layer whose weights are computed in forward (at '{self.cur.name}')")
        owner, _, attr = node.target.rpartition(".")
        return effective(self.gm.get_submodule(owner) if owner else self.gm, attr)

    def _layer(self, n):
        if n.op == "call_module":
            return self._module_layer(n, self.gm.get_submodule(n.target))
        if n.op == "call_function":
            if n.target in _RELU_FUNCTIONS:
                return {"type": "relu"}, None, None, n.name
            if n.target in _POOL_FUNCTIONS:
                k = self._kwargs(n)
                return _pool_layer(k["kernel_size"], k.get("stride"), k.get("padding", 0), k.get("dilation", 1),
                                   k.get("ceil_mode", False), k.get("return_indices", False), n.name), \
                    None, None, n.name
            if n.target in _FLATTEN_FUNCTIONS:
                return self._flatten(n, self._describe(n))
            if n.target in _DROPOUT_FUNCTIONS:
                return {"type": "dropout", "p": float(self._kwargs(n).get("p", 0.5))}, None, None, n.name
            if n.target is F.linear:
                return self._functional(n, "linear")
            if n.target is F.conv2d:
                return self._functional(n, "conv2d")
        if n.op == "call_method":
            if n.target in ("relu", "relu_"):
                return {"type": "relu"}, None, None, n.name
            if n.target in ("view", "reshape", "flatten"):
                return self._flatten(n, self._describe(n))
            if n.target in _NOOP_METHODS:
                return None
        raise _unsupported(self._describe(n))

    def _functional(self, n, kind: str):
        """F.linear / F.conv2d on parameters of the module (a layer class of the user's own)."""
        k = self._kwargs(n)
        w, b = self._tensor(k["weight"]), self._tensor(k.get("bias"))
        where = k["weight"].target.rpartition(".")[0] or k["weight"].target
        if kind == "linear":
            return {"type": "linear", "out": int(w.shape[0]), "bias": b is not None}, w, b, where
        if k.get("groups", 1) != 1 or _pair(k.get("dilation", 1)) != 1 or isinstance(k.get("padding", 0), str):
            raise _unsupported(f"conv2d at '{where}' with groups, dilation or a named padding")
        return {"type": "conv2d", "out": int(w.shape[0]), "kernel": _pair(tuple(w.shape[2:])),
                "stride": _pair(k.get("stride", 1)), "padding": _pair(k.get("padding", 0)),
                "bias": b is not None}, w, b, where

    def _module_layer(self, n, mod: nn.Module):
        where = n.target
        from torch.nn.utils import parametrize
        kind = type(mod).__bases__[0] if parametrize.is_parametrized(mod) else type(mod)
        if kind is nn.Linear:
            b = effective(mod, "bias")
            return {"type": "linear", "out": mod.out_features, "bias": b is not None}, \
                effective(mod, "weight"), b, where
        if kind is nn.Conv2d:
            b = effective(mod, "bias")
            return _conv_layer(mod, where), effective(mod, "weight"), b, where
        if kind is nn.MaxPool2d:
            return _pool_layer(mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                               mod.return_indices, where), None, None, where
        if kind is nn.ReLU:
            return {"type": "relu"}, None, None, where
        if kind is nn.Flatten:
            return self._flatten(n, f"Flatten at '{where}'")
        if kind is nn.Dropout:
            return {"type": "dropout", "p": float(mod.p)}, None, None, where
        raise _unsupported(self._describe(n))


def _input_shape(gm) -> list[int]:
    """The input shape when the first layer tells it: a Linear's in_features."""
    for n in gm.graph.nodes:
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            if isinstance(mod, nn.Linear):
                return [mod.in_features]
            if isinstance(mod, nn.Conv2d):
                break
        if n.op == "call_function" and n.target in (F.linear, F.conv2d):
            w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
            if n.target is F.linear and isinstance(w, torch.fx.Node) and w.op == "get_attr":
                return [int(gm.get_parameter(w.target).shape[1])]
            break
    raise InputError("cannot export: give input_shape (the [C, H, W] of one sample): a module that "
                     "does not start with a Linear layer does not tell it")


def layer_name(where: str, used: set) -> str:
    """A spec layer name for a module path (letters, digits, _), unique among ``used``."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", where) or "layer"
    name, k = base, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def to_spec(module: nn.Module, input_shape=None, name: str | None = None) -> tuple[dict, dict, dict]:
    """(spec, {tensor name: float32 array in the PyTorch shape}, {layer name: module path}) of a
    module; ``input_shape`` is one sample's shape ([C, H, W] or [features]); ``name`` the spec's
    name (default: the module's class name)."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    if not isinstance(module, nn.Module):
        raise InputError(f"export takes an nn.Module, got {type(module).__name__}")
    gm = _trace(module)
    shape = [int(s) for s in (input_shape if input_shape is not None else _input_shape(gm))]
    first = next(module.parameters(), None)
    example = torch.zeros(2, *shape, device=first.device if first is not None else "cpu",
                          dtype=first.dtype if first is not None and first.is_floating_point() else torch.float32)
    modes = {m: m.training for m in module.modules()}
    gm.eval()
    try:
        chain = _Chain(gm, example).walk()
    finally:
        for m, training in modes.items():
            m.training = training
    layers, tensors, origins, used, seen = [], {}, {}, set(), set()
    for layer, weight, bias, where in chain:
        layer = dict(layer)
        if weight is not None:
            if where in seen:
                raise _unsupported(f"using the weights of '{where}' twice (shared weights)")
            seen.add(where)
            lname = layer["name"] = layer_name(where, used)
            origins[lname] = where
            tensors[f"{lname}.weight"] = _numpy(weight)
            if bias is not None:
                tensors[f"{lname}.bias"] = _numpy(bias)
        layers.append(layer)
    spec = normalize_spec({"name": name or type(module).__name__, "input_shape": shape, "layers": layers})
    return spec, tensors, origins
