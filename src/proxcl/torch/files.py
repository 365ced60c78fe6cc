"""Saved PyTorch state_dicts <-> proxcl model files (what ``proxcl export`` and ``proxcl import`` do).

A state_dict file is what ``torch.save(model.state_dict(), path)`` writes, read back with
``weights_only=True`` (no code runs).  The architecture comes from a proxcl model spec: a built-in
name (``lenet300``, ``lenet5``, ``convnet-small``), JSON text or a JSON file, as ``proxcl train
--model`` takes it; the state_dict's keys are the spec's parameter names (``conv1.weight``,
``fc1.bias``), the keys of ``module_from_spec(spec).state_dict()``.
"""

from __future__ import annotations

import json
import pickle
import re

import torch

from proxcl.errors import InputError
from proxcl.fileio import atomic_write, unreadable
from proxcl.sniff import looks_like
from proxcl.spec import normalize_spec
from proxcl.torch.convert import clean_state_dict, export, module_from_spec, read
from proxcl.torch.trace import first_line

__all__ = ["read_state_dict", "export_state_dict", "import_model_file"]


def read_state_dict(path) -> dict:
    """The tensors of a saved state_dict (also one saved inside {"state_dict": ...} or
    {"model": ...}), with DistributedDataParallel's prefix and pruning's masks resolved."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise InputError(unreadable(path, e, "state_dict file")) from None
    what = looks_like(head, path)
    if what != "a PyTorch zip archive (torch.save)":
        raise InputError(f"{path}: not a PyTorch state_dict file" + (f": it looks like {what}" if what else ""))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:     # torch's weights-only refusal, or a damaged pickle
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" ({named.group(1)})" if named else ""
        raise InputError(f"{path}: holds more than tensors{what}: a whole pickled module, or a damaged "
                         "file; save module.state_dict() instead") from None
    except Exception as e:      # noqa: BLE001 - torch raises many kinds for a file that is not one
        raise InputError(f"{path}: not a state_dict that loads without running code "
                         f"({first_line(e)[:200]})") from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)]
        obj = inner[0] if inner else obj
    try:
        return clean_state_dict(obj)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def export_state_dict(state: dict, spec, path, **kw) -> dict:
    """Load ``state`` into the module of ``spec`` and export it to ``path`` (keywords as
    :func:`proxcl.torch.export`); returns the spec."""
    spec = normalize_spec(spec)
    module = module_from_spec(spec)
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise InputError(f"the state_dict does not match the spec: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise InputError(f"the state_dict's {k} has shape {list(v.shape)}, the spec's {list(own[k].shape)}")
    module.load_state_dict(state)
    return export(module, path, input_shape=spec["input_shape"], name=spec.get("name"), **kw)


def import_model_file(path, state_out, spec_out=None) -> dict:
    """Write the state_dict (``torch.save``) and, with ``spec_out``, the spec (JSON) of a model
    file, each atomically; returns the spec."""
    module, spec, _ = read(path)
    atomic_write(state_out, lambda f: torch.save(module.state_dict(), f))
    if spec_out:
        atomic_write(spec_out, lambda f: f.write((json.dumps(spec, indent=2) + "\n").encode()))
    return spec
