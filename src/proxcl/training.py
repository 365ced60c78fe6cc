"""Compressed learning: sparse phase with a proximal optimizer (layers switch to CSR once sparse
enough), then debiasing on the frozen support; and the baselines dense training and magnitude
pruning with retraining, in the same loop.

``train(config) -> TrainResult``.  Each epoch writes one JSON line to the log, an atomic checkpoint
(model values and support, optimizer state, position) from which ``resume`` continues bit-for-bit,
and a progress bar shows loss, accuracy and density.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .fileio import atomic_write, check_writable
from .ops import HostCSR

METHODS = ("proximal", "dense", "magnitude")
PROX_OPTIMIZERS = ("prox-sgd", "prox-adam", "rda")
CHECKPOINT_VERSION = 1


class TrainingError(Exception):
    """A run that cannot go on (diverged, bad configuration, unusable checkpoint): one line."""


@dataclass
class TrainConfig:
    model: str = "lenet300"
    data: str = "fashion-mnist"
    method: str = "proximal"           # proximal | dense | magnitude
    optimizer: str = "prox-adam"       # prox-sgd | prox-adam | rda (proximal); sgd | adam (dense)
    l1: float = 3e-4
    l1_factors: dict = field(default_factory=dict)
    l1_ramp_epochs: int = 0
    epochs: int = 20
    debias_epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"      # constant | step | cosine
    momentum: float = 0.9
    gamma: float = 1.0                 # l1-RDA's constant
    debias_optimizer: str = "adam"
    debias_lr: float = 1e-4
    switch_density: float = 0.5        # a layer turns CSR when its density falls to this (0: never)
    target_density: float = 0.05       # magnitude pruning: fraction of weights kept
    prune_scope: str = "layer"         # magnitude pruning per layer or global
    val_split: float = 0.0
    seed: int = 0
    device: str | None = None
    out: str | None = None             # model file
    log: str | None = None             # JSON-lines log
    checkpoint: str | None = None      # default: OUT + ".ckpt"
    half: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.method not in METHODS:
            raise TrainingError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method == "proximal" and self.optimizer not in PROX_OPTIMIZERS:
            raise TrainingError(f"method proximal needs a proximal optimizer ({', '.join(PROX_OPTIMIZERS)}), "
                                f"got {self.optimizer!r}")
        for name in ("epochs", "debias_epochs", "batch_size", "l1_ramp_epochs"):
            if getattr(self, name) < 0 or (name == "batch_size" and self.batch_size < 1):
                raise TrainingError(f"{name.replace('_', '-')} must be {'positive' if name == 'batch_size' else '>= 0'}")
        if self.method != "proximal":
            # the dense phases take the optimizer's plain form; RDA has none
            plain = {"prox-sgd": "sgd", "prox-adam": "adam", "sgd": "sgd", "adam": "adam"}
            if self.optimizer not in plain:
                raise TrainingError(f"method {self.method} trains dense with sgd or adam, not {self.optimizer!r}")
            self.optimizer = plain[self.optimizer]
        for name, what in (("lr", "the learning rate (--lr)"), ("debias_lr", "the debiasing learning rate "
                           "(--debias-lr)"), ("gamma", "RDA's gamma (--gamma)")):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise TrainingError(f"{what} must be a positive number, got {v!r}")
        if not (math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise TrainingError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.seed < 0:
            raise TrainingError(f"seed must be >= 0, got {self.seed}")
        if self.l1 < 0 or not math.isfinite(self.l1):
            raise TrainingError("l1 must be >= 0")
        for name, v in (self.l1_factors or {}).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise TrainingError(f"l1 factor of {name} must be >= 0, got {v!r}")
        if not 0.0 <= self.switch_density <= 1.0:
            raise TrainingError("switch-density must be in [0, 1]")
        if not 0.0 < self.target_density <= 1.0:
            raise TrainingError("target-density must be in (0, 1]")
        if self.prune_scope not in ("layer", "global"):
            raise TrainingError("prune-scope must be layer or global")
        paths = {}
        for what, path in (("--out", self.out), ("--log", self.log), ("--checkpoint", self.checkpoint_path)):
            if path:
                real = os.path.realpath(path)
                if real in paths:
                    raise TrainingError(f"{paths[real]} and {what} name the same file: {path}")
                paths[real] = what

    @property
    def checkpoint_path(self) -> str | None:
        return self.checkpoint or (self.out + ".ckpt" if self.out else None)


@dataclass
class TrainResult:
    model: object
    history: list
    test_accuracy: float
    nnz: int
    weights: int
    seconds: float

    @property
    def density(self) -> float:
        return self.nnz / self.weights if self.weights else 0.0


# ---- phases -------------------------------------------------------------------------------------

def _phases(cfg: TrainConfig) -> list[tuple[str, int]]:
    """(phase name, epochs) in order.  sparse/dense/debias/retrain; 'prune' is a step between."""
    if cfg.method == "proximal":
        return [("sparse", cfg.epochs), ("debias", cfg.debias_epochs)]
    if cfg.method == "dense":
        return [("dense", cfg.epochs)]
    return [("dense", cfg.epochs), ("retrain", cfg.debias_epochs)]


def _make_phase_optimizer(cfg: TrainConfig, phase: str, device):
    from .optim import make_optimizer
    if phase == "sparse":
        return make_optimizer(cfg.optimizer, lr=cfg.lr, l1=cfg.l1, l1_factors=cfg.l1_factors or None,
                              momentum=cfg.momentum, gamma=cfg.gamma, device=device)
    if phase == "dense":
        name = cfg.optimizer if cfg.optimizer in ("sgd", "adam") else "adam"
        return make_optimizer(name, lr=cfg.lr, momentum=cfg.momentum, device=device)
    return make_optimizer(cfg.debias_optimizer, lr=cfg.debias_lr, momentum=cfg.momentum, device=device)


def _phase_lr(cfg: TrainConfig, phase: str):
    from .schedules import make_lr_schedule
    if phase in ("sparse", "dense"):
        return make_lr_schedule(cfg.lr_schedule, cfg.lr, cfg.epochs)
    return make_lr_schedule(cfg.lr_schedule, cfg.debias_lr, cfg.debias_epochs)


def magnitude_prune(model, density: float, scope: str = "layer") -> None:
    """Zero all but the largest-magnitude ``density`` fraction of the penalised weights: of every
    layer (scope "layer", as in Han et al. 2015) or of all of them together (scope "global")."""
    state = model.state_dict()
    names = [p.name for p in model.params if p.penalised]
    groups = [[n] for n in names] if scope == "layer" else [names]
    for group in groups:
        flat = np.concatenate([np.abs(state[n]).ravel() for n in group])
        keep = max(1, int(round(density * flat.size)))
        if keep >= flat.size:
            continue
        # rank by magnitude, ties broken by position, so exactly `keep` entries survive
        order = np.argsort(-flat, kind="stable")
        mask = np.zeros(flat.size, bool)
        mask[order[:keep]] = True
        offset = 0
        for n in group:
            w = state[n]
            m = mask[offset:offset + w.size].reshape(w.shape)
            state[n] = np.where(m, w, 0.0).astype(np.float32)
            offset += w.size
    model.load_state_dict(state)


# ---- evaluation ---------------------------------------------------------------------------------

def _check_fits(model, dataset) -> None:
    """The data set's images and labels must fit the model: one clear error otherwise."""
    if dataset.num_classes > model.num_classes:
        raise TrainingError(f"{dataset.name} has {dataset.num_classes} classes, the model "
                            f"predicts {model.num_classes}")
    if tuple(dataset.input_shape) != tuple(model.input_shape) and \
            int(np.prod(dataset.input_shape)) != int(np.prod(model.input_shape)):
        raise TrainingError(f"{dataset.name} has images of shape {list(dataset.input_shape)}, the model "
                            f"takes {list(model.input_shape)}")


def evaluate(model, dataset, split: str = "test", batch_size: int = 512) -> dict:
    """Accuracy, mean loss, count and per-class accuracy of a model on a split."""
    _check_fits(model, dataset)
    num_classes = model.num_classes
    correct_per_class = np.zeros(num_classes, np.int64)
    count_per_class = np.zeros(num_classes, np.int64)
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in dataset.batches(split, batch_size, shuffle=False):
        logits = model.forward(x)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss_sum += float(-logp[np.arange(len(y)), y].sum())
        pred = logits.argmax(axis=1)
        correct += int((pred == y).sum())
        n += len(y)
        np.add.at(count_per_class, y, 1)
        np.add.at(correct_per_class, y[pred == y], 1)
    if n == 0:
        raise TrainingError(f"the {split} split is empty")
    per_class = [float(c / t) if t else None for c, t in zip(correct_per_class, count_per_class)]
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": n, "per_class": per_class}


def _weight_counts(model) -> tuple[int, int, list[dict]]:
    stats = model.weight_stats()
    weights = [s for s in stats if s["penalised"]]
    return sum(s["nnz"] for s in weights), sum(s["size"] for s in weights), stats


# ---- checkpoints --------------------------------------------------------------------------------

def _save_checkpoint(path: str, cfg: TrainConfig, model, opt, position: dict, history: list) -> None:
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
    meta = {"version": CHECKPOINT_VERSION, "config": dataclasses.asdict(cfg), "spec": model.spec,
            "kinds": kinds, "opt_scalars": scalars, "position": position, "history": history}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_checkpoint(path: str) -> tuple[dict, dict, dict]:
    """(meta, model sparse state, optimizer state dict)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (OSError, ValueError, KeyError) as e:
        raise TrainingError(f"cannot read checkpoint {path}: {e}") from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"checkpoint {path} has version {meta.get('version')}, expected {CHECKPOINT_VERSION}")
    state = {}
    for name, info in meta["kinds"].items():
        if info["kind"] == "csr":
            state[name] = HostCSR(arrays[f"m/{name}/indptr"], arrays[f"m/{name}/indices"],
                                  arrays[f"m/{name}/data"], tuple(info["shape"]))
        else:
            state[name] = arrays[f"m/{name}"]
    opt_state = {k[2:]: v for k, v in arrays.items() if k.startswith("o/")}
    opt_state.update(meta["opt_scalars"])
    return meta, state, opt_state


# ---- the loop -----------------------------------------------------------------------------------

def train(cfg: TrainConfig, *, resume: str | None = None, dataset=None, device=None,
          on_epoch_end=None) -> TrainResult:
    """Run every phase of ``cfg``; ``resume`` continues from a checkpoint written by an earlier run
    of the same configuration.  ``on_epoch_end(record)`` is called after each epoch's checkpoint."""
    from . import models
    from .data import load_dataset
    from .runtime import Device

    cfg.validate()
    for what, path in (("--out", cfg.out), ("--log", cfg.log), ("--checkpoint", cfg.checkpoint_path)):
        check_writable(path, what)
    t_start = time.perf_counter()
    dev = device or Device(cfg.device)
    ds = dataset or load_dataset(cfg.data, val_split=cfg.val_split, seed=cfg.seed)
    model = models.build(cfg.model, device=dev, seed=cfg.seed)
    _check_fits(model, ds)

    history: list[dict] = []
    start = {"phase": 0, "epoch": 0}
    opt_state = None
    if resume:
        meta, state, opt_state = _load_checkpoint(resume)
        saved = dict(meta["config"])
        mine = dataclasses.asdict(cfg)
        for key in ("model", "data", "method", "optimizer", "l1", "epochs", "debias_epochs", "batch_size",
                    "lr", "seed", "lr_schedule", "switch_density", "target_density", "prune_scope", "gamma", "momentum",
                    "debias_lr", "debias_optimizer", "l1_ramp_epochs", "val_split", "l1_factors"):
            if saved.get(key) != mine.get(key):
                raise TrainingError(f"checkpoint {resume} was written with {key}={saved.get(key)!r}, "
                                    f"this run has {key}={mine.get(key)!r}")
        model.load_sparse_state(state)
        start = meta["position"]
        history = meta["history"]

    if cfg.log and resume:
        # the log is the checkpoint's history: an epoch logged after the last checkpoint is dropped
        atomic_write(cfg.log, lambda f: f.write("".join(json.dumps(r) + "\n" for r in history).encode()))
    log = open(cfg.log, "a" if resume else "w") if cfg.log else None
    try:
        phases = _phases(cfg)
        for phase_idx, (phase, n_epochs) in enumerate(phases):
            if phase_idx < start["phase"] or n_epochs == 0:
                continue
            first_epoch = start["epoch"] if phase_idx == start["phase"] else 0
            if first_epoch == 0 and (opt_state is None or phase_idx != start["phase"]):
                _enter_phase(cfg, phase, model, history, ds)
            opt = _make_phase_optimizer(cfg, phase, dev)
            if opt_state is not None and phase_idx == start["phase"]:
                opt.load_state_dict(opt_state)
            lr_sched = _phase_lr(cfg, phase)
            for epoch in range(first_epoch, n_epochs):
                record = _run_epoch(cfg, phase, epoch, n_epochs, model, opt, lr_sched, ds)
                record["seconds_total"] = round(time.perf_counter() - t_start, 3)
                history.append(record)
                if log:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                ckpt = cfg.checkpoint_path
                if ckpt:
                    nxt = {"phase": phase_idx, "epoch": epoch + 1}
                    _save_checkpoint(ckpt, cfg, model, opt, nxt, history)
                if on_epoch_end:
                    on_epoch_end(record)
            opt_state = None
    finally:
        if log:
            log.close()

    final = evaluate(model, ds, "test")
    nnz, weights, _ = _weight_counts(model)
    result = TrainResult(model, history, final["accuracy"], nnz, weights, time.perf_counter() - t_start)
    if cfg.out:
        from .modelfile import save
        save(model, cfg.out, half=cfg.half, metadata=_file_metadata(cfg, result, dev, ds))
    return result


def _file_metadata(cfg: TrainConfig, result: TrainResult, dev, ds) -> dict:
    """What the model file records of its run (the per-epoch history stays in the log: the header
    is part of the file size that compression is judged by)."""
    return {"config": _config_summary(cfg), "test_accuracy": result.test_accuracy,
            "normalisation": ds.normalisation, "class_names": list(ds.class_names),
            "nnz": result.nnz, "weights": result.weights, "device": f"{dev.platform_name} | {dev.name}",
            "seconds": round(result.seconds, 3)}


def _config_summary(cfg: TrainConfig) -> dict:
    """The run's settings for the model file: what defines the run, plus every other setting that
    differs from the defaults (the full configuration is in the checkpoint)."""
    defaults = dataclasses.asdict(TrainConfig())
    keep = ("model", "data", "method", "optimizer", "l1", "epochs", "debias_epochs", "seed")
    skip = ("out", "log", "checkpoint", "progress", "device")
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in skip and (k in keep or v != defaults[k])}


def _enter_phase(cfg: TrainConfig, phase: str, model, history: list, ds) -> None:
    """What happens when a phase starts: CSR from the start if asked; freeze the support for
    debiasing (every penalised weight becomes CSR, so no entry can come back); prune by magnitude
    before retraining."""
    if phase == "sparse" and cfg.switch_density >= 1.0:
        model.to_sparse(None)           # CSR from the start
    elif phase == "debias":
        model.to_sparse(None)
    elif phase == "retrain":
        magnitude_prune(model, cfg.target_density, cfg.prune_scope)
        model.to_sparse(None)


def _run_epoch(cfg: TrainConfig, phase: str, epoch: int, n_epochs: int, model, opt, lr_sched, ds) -> dict:
    from tqdm import tqdm

    from .schedules import make_l1_schedule

    t0 = time.perf_counter()
    steps = ds.num_batches("train", cfg.batch_size)
    # shuffling and dropout depend only on (seed, phase, epoch): a resumed run sees the same batches
    stream = {"sparse": 0, "dense": 0, "debias": 1, "retrain": 1}[phase] * 100_000 + epoch
    model.set_seed(cfg.seed * 1_000_003 + stream)
    bar = tqdm(total=steps, desc=f"{phase} {epoch + 1}/{n_epochs}", leave=False, unit="batch",
               disable=not cfg.progress, dynamic_ncols=True)
    loss_sum, correct, seen = 0.0, 0, 0
    l1 = 0.0
    lr = lr_sched.lr_at(epoch, 0, steps)
    l1_sched = make_l1_schedule(cfg.l1, cfg.l1_ramp_epochs)
    try:
        for step, (x, y) in enumerate(ds.batches("train", cfg.batch_size, shuffle=True, seed=cfg.seed,
                                                 epoch=stream)):
            xb, yb = model.prepare_batch(x, y)
            loss, ok = model.train_batch(xb, yb)
            if not math.isfinite(loss):
                hint = ("a larger --gamma (RDA's steps are sqrt(t)/gamma)"
                        if phase == "sparse" and cfg.optimizer == "rda" else "a smaller learning rate (--lr)")
                raise TrainingError(f"loss became {loss} in phase {phase}, epoch {epoch + 1}, step {step + 1}; "
                                    f"try {hint}")
            lr = lr_sched.lr_at(epoch, step, steps)
            kw = {"lr": lr}
            if phase == "sparse":
                l1 = l1_sched.l1_at(epoch, step, steps)
                kw["l1"] = l1
            opt.step(model.params, **kw)
            loss_sum += loss * len(y)
            correct += ok
            seen += len(y)
            if step % 20 == 0 or step == steps - 1:
                shown = {"loss": f"{loss_sum / seen:.4f}", "acc": f"{correct / seen:.3f}"}
                if phase == "sparse":
                    shown["density"] = f"{_density(model):.4f}"
                bar.set_postfix(shown, refresh=False)
            bar.update(1)
    finally:
        bar.close()

    if phase == "sparse":
        _sparsify(cfg, model, opt)
    nnz, weights, stats = _weight_counts(model)
    test = evaluate(model, ds, "test")
    record = {"phase": phase, "epoch": epoch + 1, "lr": lr, "l1": l1 if phase == "sparse" else 0.0,
              "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
              "test_accuracy": test["accuracy"], "test_loss": test["loss"],
              "nnz": nnz, "weights": weights, "density": nnz / weights if weights else 0.0,
              "layers": [{"name": s["name"], "kind": s["kind"], "nnz": s["nnz"], "density": s["density"]}
                         for s in stats if s["penalised"]],
              "seconds": round(time.perf_counter() - t0, 3)}
    if ds.has_split("val"):
        record["val_accuracy"] = evaluate(model, ds, "val")["accuracy"]
    if cfg.progress:
        tqdm.write(f"{phase:>7} {epoch + 1:>3}/{n_epochs}  loss {record['loss']:.4f}  "
                   f"train {record['train_accuracy']:.4f}  test {record['test_accuracy']:.4f}  "
                   f"nonzero {record['density'] * 100:6.2f} %  {record['seconds']:.1f} s")
    return record


def _density(model) -> float:
    nnz, weights, _ = _weight_counts(model)
    return nnz / weights if weights else 0.0


def _sparsify(cfg: TrainConfig, model, opt) -> None:
    """End of a sparse epoch: CSR weights drop their new zeros; dense weights whose density fell to
    the switch threshold become CSR.  The optimizer's per-coordinate state follows the support."""
    for name, src in model.compact().items():
        opt.remap(name, src)
    if cfg.switch_density <= 0:
        return
    for s in model.weight_stats():
        if s["penalised"] and s["kind"] == "dense" and s["density"] <= cfg.switch_density:
            for name, src in model.to_sparse(s["name"]).items():
                opt.remap(name, src)
