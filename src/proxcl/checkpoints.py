"""Training checkpoints: one ``.npz`` file, written atomically after every epoch, holding the
model's values and supports, the optimizer's state, the pruning masks, the position in the run
and the history, so that ``train(..., resume=path)`` continues bit for bit.

Layout: ``m/<param>`` (dense) or ``m/<param>/{indptr,indices,data}`` (CSR), ``o/<key>`` (optimizer
arrays), ``k/<param>`` (0/1 masks of gradual magnitude pruning), and ``__meta__``: the JSON of
version, config, spec, parameter kinds, optimizer scalars, position and history.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .fileio import atomic_write
from .ops import HostCSR
from .sniff import looks_like

VERSION = 2


class CheckpointError(Exception):
    """A checkpoint that cannot be read or used: one line."""


@dataclass
class Checkpoint:
    meta: dict        # version, config, spec, kinds, opt_scalars, position, history
    model: dict       # what Model.load_sparse_state takes
    optimizer: dict   # what Optimizer.load_state_dict takes
    masks: dict       # {param name: float32 0/1 array}


def save(path: str, *, config: dict, model, opt, masks: dict, position: dict, history: list) -> None:
    arrays: dict[str, np.ndarray] = {}
    kinds = {}
    for name, v in model.sparse_state().items():
        if isinstance(v, HostCSR):
            kinds[name] = {"kind": "csr", "shape": list(v.shape)}
            arrays[f"m/{name}/indptr"] = np.asarray(v.indptr)
            arrays[f"m/{name}/indices"] = np.asarray(v.indices)
            arrays[f"m/{name}/data"] = np.asarray(v.data)
        else:
            kinds[name] = {"kind": "dense"}
            arrays[f"m/{name}"] = np.asarray(v)
    scalars = {}
    for k, v in opt.state_dict().items():
        if isinstance(v, np.ndarray):
            arrays[f"o/{k}"] = v
        else:
            scalars[k] = v
    for name, m in masks.items():
        arrays[f"k/{name}"] = m.get()
    meta = {"version": VERSION, "config": config, "spec": model.spec, "kinds": kinds,
            "opt_scalars": scalars, "position": position, "history": history}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _unreadable(path: str, e: Exception) -> CheckpointError:
    """Why a checkpoint could not be read, in words about the file rather than numpy's."""
    if os.path.isdir(path):
        return CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    if isinstance(e, FileNotFoundError):
        return CheckpointError(f"checkpoint {path}: no such file")
    try:
        with open(path, "rb") as f:
            what = looks_like(f.read(4096), path)
    except OSError as err:
        return CheckpointError(f"cannot read checkpoint {path} ({err.strerror or err})")
    if what and what != "a proxcl training checkpoint":
        return CheckpointError(f"{path}: not a proxcl checkpoint: it looks like {what}")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CheckpointError(f"cannot read checkpoint {path}: {first}")


def load(path: str) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError, zipfile.BadZipFile) as e:
        raise _unreadable(path, e) from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        got = meta.get("version") if isinstance(meta, dict) else None
        raise CheckpointError(f"checkpoint {path} has version {got}, expected {VERSION}")
    try:
        state = {}
        for name, info in meta["kinds"].items():
            if info["kind"] == "csr":
                state[name] = HostCSR(arrays[f"m/{name}/indptr"], arrays[f"m/{name}/indices"],
                                      arrays[f"m/{name}/data"], tuple(info["shape"]))
            else:
                state[name] = arrays[f"m/{name}"]
        opt_state = {k[2:]: v for k, v in arrays.items() if k.startswith("o/")}
        opt_state.update(meta["opt_scalars"])
        masks = {k[2:]: v for k, v in arrays.items() if k.startswith("k/")}
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {e}") from None
    missing = [k for k in ("config", "position", "history") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing[0]!r}")
    return Checkpoint(meta, state, opt_state, masks)
