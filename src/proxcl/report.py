"""Training reports as PNG figures: loss, accuracy and density per epoch, nonzeros per layer, and a
spy plot of every weight matrix.  Needs matplotlib (the `report` extra)."""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import InputError
from .fileio import atomic_write, unreadable
from .ops import HostCSR


def read_log(path: str) -> list[dict]:
    """The records of a JSON-lines training log."""
    records = []
    try:
        with open(path) as f:
            for i, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise InputError(f"{path}:{i}: not a JSON line") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a training log (not text)") from None
    except OSError as e:
        raise InputError(unreadable(path, e, "training log")) from None
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


def _nnz(t) -> int:
    return t.nnz if isinstance(t, HostCSR) else int(np.count_nonzero(t))


def log_mismatch(tensors: dict, records: list[dict]) -> str | None:
    """Why a log does not look like the run that wrote these tensors (its last record's layers
    are not the model's weights, or end with other nonzero counts), or None.  A weight the file
    stores dense may count fewer nonzeros than the log (float16 underflow), never more."""
    for layer in records[-1].get("layers", []):
        name, logged = layer["name"], int(layer["nnz"])
        if name not in tensors:
            return f"the log's layer {name} is not in the model"
        t = tensors[name]
        nnz = _nnz(t)
        if nnz != logged and (isinstance(t, HostCSR) or not 0 <= logged - nnz <= np.size(t) // 100):
            return f"the log ends with {logged:,} nonzero weights in {name}, the model has {nnz:,}"
    return None


def write_report(tensors: dict, records: list[dict], out_dir: str, reference: list[dict] | None = None) -> list[str]:
    """Write the report's PNGs into out_dir; return their paths.  tensors: {name: ndarray | HostCSR}
    as read from a model file; records: the training log; reference: the log of a dense reference
    run, drawn in the loss and accuracy figures."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for fname, fig in figures(tensors, records, reference):
        path = os.path.join(out_dir, fname)
        try:
            _save(fig, path)
        finally:
            plt.close(fig)
        written.append(path)
    return written


# the name of a phase in the figures, by the phase before it (gmp's retraining is fine-tuning)
_PHASE_NAMES = {"debias": "debiasing", "retrain": "retraining", "prune": "pruning", "sparse": "sparse phase",
                "dense": "dense training"}


def _phase_starts(records: list[dict]) -> list[tuple[float, str]]:
    """(x between the epochs, 'debiasing starts') at every change of phase."""
    phases = [r["phase"] for r in records]
    out = []
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            name = "fine-tuning" if (phases[i - 1], phases[i]) == ("prune", "retrain") else \
                _PHASE_NAMES.get(phases[i], phases[i])
            out.append((i + 0.5, f"{name} starts"))
    return out


def figures(tensors: dict, records: list[dict], reference: list[dict] | None = None):
    """The report's figures as (file name, matplotlib figure), one at a time; the caller closes
    each.  What write_report saves."""
    plt = _pyplot()
    x = np.arange(1, len(records) + 1)
    starts = _phase_starts(records)

    def curves(name, keys, ylabel, scale=1.0, log=False, ref_key=None):
        fig, ax = _epoch_axes(plt, name, ylabel, starts, log)
        for key, label in keys:
            ys = [r.get(key) for r in records]
            if any(y is not None for y in ys):
                ax.plot(x, [np.nan if y is None else y * scale for y in ys], marker=".", label=label)
        ref = [r.get(ref_key) for r in reference or []] if ref_key else []
        if any(y is not None for y in ref):
            ax.plot(np.arange(1, len(ref) + 1), [np.nan if y is None else y * scale for y in ref],
                    color="black", ls="--", lw=1, label="dense reference (test)")
        ax.legend()
        return fig, ax

    yield "loss.png", curves("loss", [("loss", "train loss"), ("test_loss", "test loss")], "cross-entropy",
                             ref_key="test_loss")[0]
    yield "accuracy.png", curves("accuracy", [("train_accuracy", "train"), ("test_accuracy", "test"),
                                              ("val_accuracy", "val")], "accuracy (%)", scale=100,
                                 ref_key="test_accuracy")[0]
    fig, ax = curves("nonzero weights", [("density", "all weights")], "nonzero weights", scale=100, log=True)
    _percent_ticks(ax)
    yield "density.png", fig
    layer_names = [l["name"] for l in records[-1].get("layers", [])]
    if layer_names:
        yield "nonzeros_per_layer.png", _layer_nonzeros(plt, records, layer_names, x, starts)
    for name, t in tensors.items():
        if name.endswith("weight"):
            yield f"spy_{name.replace('.', '_')}.png", _spy(plt, name, t)


def _percent_ticks(ax) -> None:
    """A log axis of percentages labelled 1 %, 2 %, 5 %, 10 %, ... (no minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} %"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _epoch_axes(plt, title: str, ylabel: str, starts, log: bool):
    """A figure of a quantity over the epochs of all phases, each change of phase a dotted line
    named in the legend."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (b, label) in enumerate(starts):
        ax.axvline(b, color=f"C{7 + i % 3}", ls=":", lw=1.2, label=label)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (all phases)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return fig, ax


def _layer_nonzeros(plt, records, layer_names, x, starts):
    """Nonzeros per layer over the epochs."""
    fig, ax = _epoch_axes(plt, "nonzeros per layer", "nonzero weights", starts, True)
    for name in layer_names:
        ys = [next((l["nnz"] for l in r.get("layers", []) if l["name"] == name), np.nan) for r in records]
        ax.plot(x, ys, marker=".", label=name)
    ax.legend(fontsize=8)
    return fig


def _spy(plt, name: str, t):
    """Spy plot of a weight matrix (2-D storage: [out, in] or [O, C*kh*kw])."""
    dense = t.to_dense() if isinstance(t, HostCSR) else np.asarray(t).reshape(np.asarray(t).shape[0], -1)
    nz = dense != 0
    fig, ax = plt.subplots(figsize=(6, 6 * min(3.0, max(0.2, nz.shape[0] / max(nz.shape[1], 1)))))
    ax.imshow(nz, cmap="Greys", interpolation="nearest", aspect="auto")
    ax.set_title(f"{name}: {int(nz.sum()):,} of {nz.size:,} nonzero ({100 * nz.mean():.2f} %)")
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    return fig
