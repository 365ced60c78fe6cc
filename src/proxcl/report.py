"""Training reports as PNG figures: loss, accuracy and density per epoch, nonzeros per layer, and a
spy plot of every weight matrix.  Needs matplotlib (the `report` extra)."""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import InputError
from .fileio import atomic_write
from .ops import HostCSR


def read_log(path: str) -> list[dict]:
    """The records of a JSON-lines training log."""
    records = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{path}:{i}: not a JSON line") from None
    if not records:
        raise InputError(f"{path}: the log has no records")
    for i, r in enumerate(records, 1):
        if not _is_record(r):
            raise InputError(f"{path}: record {i} is not a proxcl training log record "
                             f"(phase, epoch, loss, density as numbers; layers with name and nnz)")
    return records


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_record(r) -> bool:
    if not isinstance(r, dict) or not {"phase", "epoch", "loss", "density"} <= r.keys():
        return False
    if not isinstance(r["phase"], str) or not all(_number(r[k]) for k in ("epoch", "loss", "density")):
        return False
    for k in ("train_accuracy", "test_accuracy", "val_accuracy", "test_loss"):
        if k in r and r[k] is not None and not _number(r[k]):
            return False
    layers = r.get("layers", [])
    return isinstance(layers, list) and all(
        isinstance(l, dict) and isinstance(l.get("name"), str) and _number(l.get("nnz")) for l in layers)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("reports need matplotlib: pip install 'proxcl[report]'") from None
    return plt


def _save(fig, path: str) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def write_report(tensors: dict, records: list[dict], out_dir: str) -> list[str]:
    """Write the report's PNGs into out_dir; return their paths.  tensors: {name: ndarray | HostCSR}
    as read from a model file; records: the training log."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    x = np.arange(1, len(records) + 1)
    phases = [r["phase"] for r in records]
    bounds = [i + 0.5 for i in range(1, len(phases)) if phases[i] != phases[i - 1]]

    def curves(name, keys, ylabel, fname, scale=1.0, log=False):
        fig, ax = _epoch_axes(plt, name, ylabel, bounds, log)
        for key, label in keys:
            ys = [r.get(key) for r in records]
            if any(y is not None for y in ys):
                ax.plot(x, [np.nan if y is None else y * scale for y in ys], marker=".", label=label)
        ax.legend()
        return _finish(plt, fig, out_dir, fname)

    written = [
        curves("loss", [("loss", "train loss"), ("test_loss", "test loss")], "cross-entropy", "loss.png"),
        curves("accuracy", [("train_accuracy", "train"), ("test_accuracy", "test"), ("val_accuracy", "val")],
               "accuracy (%)", "accuracy.png", scale=100),
        curves("nonzero weights", [("density", "all weights")], "nonzero (%)", "density.png", scale=100,
               log=True)]
    layer_names = [l["name"] for l in records[-1].get("layers", [])]
    if layer_names:
        written.append(_layer_nonzeros(plt, records, layer_names, x, bounds, out_dir))
    written += [_spy(plt, name, t, out_dir) for name, t in tensors.items() if name.endswith("weight")]
    return written


def _epoch_axes(plt, title: str, ylabel: str, bounds, log: bool):
    """A figure of a quantity over the epochs of all phases, the phase changes dotted."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for b in bounds:
        ax.axvline(b, color="gray", ls=":", lw=1)
    ax.set_xlabel("epoch (all phases)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return fig, ax


def _finish(plt, fig, out_dir: str, fname: str) -> str:
    path = os.path.join(out_dir, fname)
    _save(fig, path)
    plt.close(fig)
    return path


def _layer_nonzeros(plt, records, layer_names, x, bounds, out_dir: str) -> str:
    """Nonzeros per layer over the epochs."""
    fig, ax = _epoch_axes(plt, "nonzeros per layer", "nonzero weights", bounds, True)
    for name in layer_names:
        ys = [next((l["nnz"] for l in r.get("layers", []) if l["name"] == name), np.nan) for r in records]
        ax.plot(x, ys, marker=".", label=name)
    ax.legend(fontsize=8)
    return _finish(plt, fig, out_dir, "nonzeros_per_layer.png")


def _spy(plt, name: str, t, out_dir: str) -> str:
    """Spy plot of a weight matrix (2-D storage: [out, in] or [O, C*kh*kw])."""
    dense = t.to_dense() if isinstance(t, HostCSR) else np.asarray(t).reshape(np.asarray(t).shape[0], -1)
    nz = dense != 0
    fig, ax = plt.subplots(figsize=(6, 6 * min(3.0, max(0.2, nz.shape[0] / max(nz.shape[1], 1)))))
    ax.imshow(nz, cmap="Greys", interpolation="nearest", aspect="auto")
    ax.set_title(f"{name}: {int(nz.sum())} of {nz.size} nonzero ({100 * nz.mean():.2f} %)")
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    return _finish(plt, fig, out_dir, f"spy_{name.replace('.', '_')}.png")
