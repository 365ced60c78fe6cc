"""Compressed learning: sparse phase with a proximal optimizer (layers switch to CSR once sparse
enough), then debiasing on the frozen support; and the baselines dense training, one-shot
magnitude pruning with retraining and gradual magnitude pruning (GMP), in the same loop.

``train(config) -> TrainResult``.  Each epoch writes one JSON line to the log, an atomic checkpoint
(model values and support, optimizer state, masks, position) from which ``resume`` continues
bit-for-bit; ``progress`` shows a bar with loss, accuracy and density, ``verbose`` one line per
epoch (both off by default: the command line turns them on).  Ctrl-C raises
:class:`TrainingInterrupted`, which names the last checkpoint to resume from.

With ``target_density`` the proximal phase finds lambda itself: a controller
(:class:`proxcl.schedules.DensityController`) measures the share of nonzero weights every
``DENSITY_CHECK_STEPS`` steps and scales lambda so that it follows a cubic path from dense to the
target over the first ``density_ramp`` of the sparse epochs and then stays there; the last sparse
epoch ends with a magnitude cut of whatever is left above the target, so the count is exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import checkpoints
from .checks import number, whole
from .errors import InputError
from .fileio import atomic_write, check_writable
from .ops.optim import apply_mask
from .pruning import magnitude_prune, nonzero_count, prune
from .schedules import (LR_SCHEDULES, CubicSparsity, DensityController, Warmup, make_l1_schedule,
                        make_lr_schedule)

__all__ = ["METHODS", "PROX_OPTIMIZERS", "PENALTIES", "OPTION_SCOPES", "TrainConfig", "TrainResult",
           "TrainingError", "TrainingInterrupted", "train", "evaluate", "magnitude_prune"]

METHODS = ("proximal", "dense", "magnitude", "gmp")
PROX_OPTIMIZERS = ("prox-sgd", "prox-adam", "rda")
PLAIN_OPTIMIZERS = ("sgd", "adam")
PENALTIES = ("l1", "reweighted")
REGROW = ("random", "gradient")
# the plain form of a proximal optimizer: what checkpoints written before the baselines refused
# proximal optimizers ran in a baseline's dense phase
_PLAIN = {"prox-sgd": "sgd", "prox-adam": "adam", "sgd": "sgd", "adam": "adam"}
# settings a resumed run may change; every other one must match the checkpoint's
RESUME_MAY_CHANGE = ("out", "log", "checkpoint", "progress", "verbose", "device", "half")
DENSITY_CHECK_STEPS = 10
_PHASES = {"proximal": ("sparse", "debias"), "dense": ("dense",), "magnitude": ("dense", "retrain"),
           "gmp": ("prune", "retrain")}
_STREAM = {"sparse": 0, "dense": 0, "prune": 0, "debias": 1, "retrain": 1}


class TrainingError(Exception):
    """A run that cannot go on (diverged, bad configuration, unusable checkpoint): one line."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during the epochs.  ``checkpoint``: the checkpoint a resumed run continues from (the
    last one this run wrote, else the one it resumed from), or None when there is none."""

    def __init__(self, checkpoint: str | None):
        super().__init__(checkpoint)
        self.checkpoint = checkpoint


@contextlib.contextmanager
def _as_training_error():
    """The shared checks' InputError, said as this module's TrainingError."""
    try:
        yield
    except InputError as e:
        raise TrainingError(str(e)) from None


@dataclass
class TrainConfig:
    model: str = "lenet300"
    data: str = "fashion-mnist"
    method: str = "proximal"           # proximal | dense | magnitude | gmp
    optimizer: str | None = None       # prox-sgd | prox-adam | rda (proximal); sgd | adam otherwise;
                                       # None: prox-sgd for proximal, sgd for the baselines
    penalty: str = "reweighted"        # l1 | reweighted (l1 with thresholds c / (|w| + eps c))
    reweight_eps: float = 0.03
    l1: float = 1e-3                   # lambda; with target_density the controller's start
    l1_factors: dict = field(default_factory=dict)
    l1_ramp_epochs: int = 0
    target_density: float | None = None  # proximal: lambda found for it; magnitude/gmp: kept share
    density_ramp: float = 0.75         # proximal with a target: share of the sparse epochs to reach it
    init_density: float | None = None  # proximal: weights start as random CSR supports of this density
    regrow: str | None = None          # proximal on CSR: random | gradient new entries at sparse epoch ends
    regrow_fraction: float = 0.1       # entries regrown per layer, as a share of its nonzeros
    epochs: int = 20
    debias_epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    lr_schedule: str | None = None     # constant | step | cosine | hold-cosine; None: constant (proximal), cosine
    lr_hold: float | None = None       # hold-cosine: share of the epochs at constant lr; None: the
                                       # density ramp (proximal with a target), else 0.5
    lr_warmup: float = 1.0             # epochs of linear warm-up at the start of the first phase
    momentum: float = 0.9
    gamma: float = 1.0                 # l1-RDA's constant
    debias_optimizer: str = "sgd"
    debias_lr: float = 0.005
    debias_lr_schedule: str = "cosine"
    switch_density: float = 0.5        # a layer turns CSR when its density falls to this (0: never)
    prune_scope: str = "global"        # magnitude and gmp: per layer or over all layers
    prune_start: float = 0.0           # gmp: share of --epochs before the first pruning step
    prune_end: float = 0.5             # gmp: share of --epochs at which the final sparsity is reached
    prune_frequency: int = 4           # gmp: pruning steps per epoch
    val_split: float = 0.0
    seed: int = 0
    device: str | None = None
    out: str | None = None             # model file
    log: str | None = None             # JSON-lines log
    checkpoint: str | None = None      # default: OUT + ".ckpt"
    half: bool = False
    progress: bool = False             # a progress bar per epoch (on stderr)
    verbose: bool = False              # one line per epoch (on stdout)

    def validate(self) -> None:
        """Raise TrainingError (one line) for an invalid or contradictory configuration: every
        check of a configuration is here, run before anything is loaded."""
        self._check_method()
        self._check_numbers()
        self._check_phases()
        self._check_sparsity()
        self._check_scopes()
        self._check_paths()

    @property
    def first_optimizer(self) -> str:
        """The optimizer of the first phase: the proximal one, or the baseline's plain one."""
        return self.optimizer or ("prox-sgd" if self.method == "proximal" else "sgd")

    def _check_method(self) -> None:
        if self.method not in METHODS:
            raise TrainingError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.method == "proximal" and self.first_optimizer not in PROX_OPTIMIZERS:
            raise TrainingError(f"method proximal needs a proximal optimizer ({', '.join(PROX_OPTIMIZERS)}), "
                                f"got {self.optimizer!r}")
        if self.method != "proximal" and self.first_optimizer not in PLAIN_OPTIMIZERS:
            raise TrainingError(f"method {self.method} trains dense with sgd or adam, not {self.optimizer!r}")
        for name, value, allowed in (("penalty", self.penalty, PENALTIES),
                                     ("debias-optimizer", self.debias_optimizer, PLAIN_OPTIMIZERS),
                                     ("lr-schedule", self.lr_schedule or "constant", LR_SCHEDULES),
                                     ("debias-lr-schedule", self.debias_lr_schedule, LR_SCHEDULES),
                                     ("prune-scope", self.prune_scope, ("layer", "global"))):
            if value not in allowed:
                raise TrainingError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    def _check_numbers(self) -> None:
        with _as_training_error():
            for name in ("epochs", "debias_epochs", "l1_ramp_epochs", "seed"):
                whole(name.replace("_", "-"), getattr(self, name), 0)
            whole("batch-size", self.batch_size, 1)
            for name, what in (("lr", "the learning rate (--lr)"), ("debias_lr", "the debiasing learning rate "
                               "(--debias-lr)"), ("gamma", "RDA's gamma (--gamma)"),
                               ("reweight_eps", "the reweighting eps (--reweight-eps)")):
                number(what, getattr(self, name), 0.0, lo_open=True)
            number("lr-warmup", self.lr_warmup, 0.0)
            number("momentum", self.momentum, 0.0, 1.0, hi_open=True)
            number("l1", self.l1, 0.0)
            for name, v in (self.l1_factors or {}).items():
                number(f"l1 factor of {name}", v, 0.0)

    def _check_phases(self) -> None:
        """A run that would train nothing, or skip the phase its method is about, is refused."""
        if self.epochs == 0:
            why = {"proximal": "there would be no sparse phase (and nothing to debias)",
                   "dense": "the model would not be trained",
                   "magnitude": "magnitude pruning cuts a trained model",
                   "gmp": "gmp prunes during those epochs"}[self.method]
            raise TrainingError(f"--epochs must be at least 1: {why}")

    def _check_scopes(self) -> None:
        """An option given (set to other than its default) for a run that does not use it is an
        error, not silently ignored: see OPTION_SCOPES."""
        defaults = _defaults()
        for scope in _SCOPES:
            if getattr(self, scope.field) != defaults[scope.field] and not scope.applies(self):
                raise TrainingError(f"{scope.option} applies only to {scope.where}; this run is "
                                    f"--method {self.method} with {self.first_optimizer}")

    def _check_sparsity(self) -> None:
        with _as_training_error():
            number("switch-density", self.switch_density, 0.0, 1.0)
            if self.target_density is not None:
                number("target-density", self.target_density, 0.0, 1.0, lo_open=True)
            number("density-ramp", self.density_ramp, 0.0, 1.0, lo_open=True)
            if self.lr_hold is not None:
                number("lr-hold", self.lr_hold, 0.0, 1.0, hi_open=True)
            number("prune-end", self.prune_end, 0.0, 1.0, lo_open=True)
            number("prune-start", self.prune_start, 0.0, self.prune_end, hi_open=True)
            whole("prune-frequency", self.prune_frequency, 1)
        self._check_init()
        if self.method == "proximal" and self.target_density is not None and self.l1 <= 0:
            raise TrainingError("--target-density adapts lambda from --l1, which must be > 0")

    def _check_init(self) -> None:
        with _as_training_error():
            if self.init_density is not None:
                number("init-density", self.init_density, 0.0, 1.0, lo_open=True)
            number("regrow-fraction", self.regrow_fraction, 0.0, 1.0, lo_open=True)
        if self.regrow not in (None, *REGROW):
            raise TrainingError(f"regrow must be one of {', '.join(REGROW)}, got {self.regrow!r}")
        if self.init_density is not None and self.target_density is not None \
                and self.target_density > self.init_density:
            raise TrainingError(f"--target-density ({self.target_density:g}) is above --init-density "
                                f"({self.init_density:g}): a support only shrinks towards the target")

    def _check_paths(self) -> None:
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

    @property
    def kept_density(self) -> float | None:
        """The share of weights a run ends with by construction: the target (magnitude and gmp
        default to 0.05), or None for plain l1 and dense training."""
        if self.method in ("magnitude", "gmp"):
            return self.target_density if self.target_density is not None else 0.05
        return self.target_density if self.method == "proximal" else None

    @property
    def hold_share(self) -> float:
        """hold-cosine: the share of the first phase's epochs at constant lr before the decay."""
        if self.lr_hold is not None:
            return self.lr_hold
        return self.density_ramp if self.method == "proximal" and self.target_density is not None else 0.5

    @property
    def train_lr_schedule(self) -> str:
        """The learning-rate schedule of the first phase: constant for proximal learning (the
        threshold lr * lambda must not fade), cosine for the dense baselines."""
        return self.lr_schedule or ("constant" if self.method == "proximal" else "cosine")


@dataclass(frozen=True)
class _Scope:
    """An option that only some runs use: ``applies(config)`` says whether this one does."""
    option: str
    field: str
    where: str
    applies: object


def _proximal(c: TrainConfig) -> bool:
    return c.method == "proximal"


def _not_rda(c: TrainConfig) -> bool:
    return c.first_optimizer != "rda"


def _not_dense(c: TrainConfig) -> bool:
    return c.method != "dense"


def _gmp(c: TrainConfig) -> bool:
    return c.method == "gmp"


def _target_density(c: TrainConfig) -> bool:
    """l1-RDA recomputes every weight from its averaged gradient, so a change of lambda moves the
    density at once: the controller overshoots (LeNet-300-100, target 1 %: 56 % -> 0.44 % in one
    epoch, and a CSR support never grows back).  The target is for the other methods."""
    return c.method != "dense" and c.first_optimizer != "rda"


_SCOPES = (
    _Scope("--penalty", "penalty", "--method proximal", _proximal),
    _Scope("--reweight-eps", "reweight_eps", "--method proximal with --penalty reweighted",
           lambda c: _proximal(c) and c.penalty == "reweighted"),
    _Scope("--l1", "l1", "--method proximal", _proximal),
    _Scope("--l1-factor", "l1_factors", "--method proximal", _proximal),
    _Scope("--l1-ramp", "l1_ramp_epochs", "--method proximal without --target-density (lambda is adapted)",
           lambda c: _proximal(c) and c.target_density is None),
    _Scope("--density-ramp", "density_ramp", "--method proximal with --target-density",
           lambda c: _proximal(c) and c.target_density is not None),
    _Scope("--gamma", "gamma", "--optimizer rda", lambda c: c.first_optimizer == "rda"),
    _Scope("--lr", "lr", "every optimizer but rda (whose steps are sqrt(t)/gamma)", _not_rda),
    _Scope("--lr-schedule", "lr_schedule", "every optimizer but rda", _not_rda),
    _Scope("--lr-warmup", "lr_warmup", "every optimizer but rda", _not_rda),
    _Scope("--lr-hold", "lr_hold", "--lr-schedule hold-cosine",
           lambda c: _not_rda(c) and c.train_lr_schedule == "hold-cosine"),
    _Scope("--momentum", "momentum", "sgd and prox-sgd, also as --debias-optimizer",
           lambda c: c.first_optimizer in ("sgd", "prox-sgd") or (_not_dense(c) and c.debias_optimizer == "sgd")),
    _Scope("--target-density", "target_density",
           "--method proximal with prox-sgd or prox-adam (rda: use --l1), magnitude or gmp", _target_density),
    _Scope("--switch-density", "switch_density", "--method proximal or gmp", lambda c: c.method in ("proximal", "gmp")),
    _Scope("--debias-epochs", "debias_epochs", "--method proximal, magnitude or gmp", _not_dense),
    _Scope("--debias-optimizer", "debias_optimizer", "--method proximal, magnitude or gmp", _not_dense),
    _Scope("--debias-lr", "debias_lr", "--method proximal, magnitude or gmp", _not_dense),
    _Scope("--debias-lr-schedule", "debias_lr_schedule", "--method proximal, magnitude or gmp", _not_dense),
    _Scope("--prune-scope", "prune_scope", "--method magnitude or gmp", lambda c: c.method in ("magnitude", "gmp")),
    _Scope("--prune-start", "prune_start", "--method gmp", _gmp),
    _Scope("--prune-end", "prune_end", "--method gmp", _gmp),
    _Scope("--prune-frequency", "prune_frequency", "--method gmp", _gmp),
    _Scope("--init-density", "init_density", "--method proximal", _proximal),
    _Scope("--regrow", "regrow", "--method proximal", _proximal),
    _Scope("--regrow-fraction", "regrow_fraction", "--method proximal with --regrow",
           lambda c: _proximal(c) and c.regrow is not None),
)
# option -> the runs it applies to, for --help
OPTION_SCOPES = {s.option: s.where for s in _SCOPES}


def _defaults() -> dict:
    return {f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)}


@dataclass
class TrainResult:
    model: object
    history: list
    test_accuracy: float
    nnz: int
    weights: int
    seconds: float
    memory: dict = field(default_factory=dict)   # proxcl.memory snapshot at the end: peaks of the run

    @property
    def density(self) -> float:
        return self.nnz / self.weights if self.weights else 0.0


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
    """Accuracy, mean loss, count and per-class accuracy of a model on a split (the loss is the
    training loss's kernel, the same softmax cross-entropy)."""
    _check_fits(model, dataset)
    num_classes = model.num_classes
    correct_per_class = np.zeros(num_classes, np.int64)
    count_per_class = np.zeros(num_classes, np.int64)
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in dataset.batches(split, batch_size, shuffle=False):
        loss, _, pred = model.eval_batch(*model.stage_batch(x, y), predictions=True)
        loss_sum += loss
        correct += int((pred == y).sum())
        n += len(y)
        np.add.at(count_per_class, y, 1)
        np.add.at(correct_per_class, y[pred == y], 1)
    if n == 0:
        raise TrainingError(f"the {split} split is empty")
    per_class = [float(c / t) if t else None for c, t in zip(correct_per_class, count_per_class)]
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": n, "per_class": per_class}


# ---- the run ------------------------------------------------------------------------------------

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
    dev.memory.reset_peak()      # the run's peaks: from the model's weights on
    model = models.build(cfg.model, device=dev, seed=cfg.seed, init_density=cfg.init_density,
                         switch_density=cfg.switch_density)
    _check_fits(model, ds)

    run = _Run(cfg, model, ds, dev, t_start, on_epoch_end)
    if resume:
        run.restore(resume)
    try:
        run.run_phases()
    except KeyboardInterrupt:
        raise TrainingInterrupted(run.last_checkpoint or resume) from None
    final = evaluate(model, ds, "test", batch_size=cfg.batch_size)
    nnz, weights = nonzero_count(model)
    result = TrainResult(model, run.history, final["accuracy"], nnz, weights, time.perf_counter() - t_start,
                         dev.memory.snapshot())
    if cfg.out:
        from .modelfile import save
        save(model, cfg.out, half=cfg.half, metadata=_file_metadata(cfg, result, dev, ds))
    return result


def _run_optimizer(config: dict) -> str | None:
    """The first phase's optimizer of a saved or current configuration (None: the method's default;
    a proximal name in a baseline: its plain form, as older checkpoints have it)."""
    name = config.get("optimizer")
    if config.get("method") == "proximal":
        return name or "prox-sgd"
    return _PLAIN.get(name or "sgd", name)


def _check_same_config(saved: dict, cfg: TrainConfig, path: str) -> None:
    mine = dataclasses.asdict(cfg)
    saved = dict(saved, optimizer=_run_optimizer(saved))
    mine["optimizer"] = _run_optimizer(mine)
    for key in sorted(set(saved) | set(mine)):
        if key not in RESUME_MAY_CHANGE and saved.get(key) != mine.get(key):
            opt = _option_of(key)
            raise TrainingError(f"checkpoint {path} was written with {opt} {saved.get(key)!r}, "
                                f"this run has {opt} {mine.get(key)!r}")


def _option_of(field: str) -> str:
    """The command-line option of a TrainConfig field: the scopes' name for it, else the field
    with dashes."""
    named = {s.field: s.option for s in _SCOPES}
    return named.get(field, "--" + field.replace("_", "-"))


class _Run:
    """The state of one run between epochs: model, history, masks, where to start."""

    def __init__(self, cfg: TrainConfig, model, ds, dev, t_start: float, on_epoch_end):
        self.cfg, self.model, self.ds, self.dev = cfg, model, ds, dev
        self.t_start, self.on_epoch_end = t_start, on_epoch_end
        self.history: list[dict] = []
        self.start = {"phase": 0, "epoch": 0}
        self.saved_opt: dict | None = None
        self.masks: dict = {}      # {param name: 0/1 device mask} of dense weights (gmp, controller)
        self.controller: DensityController | None = None
        self.density: float | None = None   # the controller's last measurement
        self.last_checkpoint: str | None = None   # written by this run

    def restore(self, path: str) -> None:
        try:
            ck = checkpoints.load(path)
        except checkpoints.CheckpointError as e:
            raise TrainingError(str(e)) from None
        _check_same_config(ck.meta["config"], self.cfg, path)
        self.model.load_sparse_state(ck.model)
        self.masks = {n: self.dev.to_device(np.asarray(m, np.float32), category="optimizer")
                      for n, m in ck.masks.items()}
        self.start = ck.meta["position"]
        self.history = ck.meta["history"]
        self.saved_opt = ck.optimizer

    def run_phases(self) -> None:
        cfg = self.cfg
        if cfg.log and self.saved_opt is not None:
            # the log is the checkpoint's history: an epoch logged after the last checkpoint is dropped
            atomic_write(cfg.log, lambda f: f.write("".join(json.dumps(r) + "\n" for r in self.history).encode()))
        if cfg.log:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.log)), exist_ok=True)
        log = open(cfg.log, "a" if self.saved_opt is not None else "w") if cfg.log else None
        try:
            for idx, phase in enumerate(_PHASES[cfg.method]):
                n_epochs = cfg.epochs if idx == 0 else cfg.debias_epochs
                if idx < self.start["phase"] or n_epochs == 0:
                    continue
                resuming = self.saved_opt is not None and idx == self.start["phase"]
                if not resuming:
                    self._enter(phase)
                opt = self._optimizer(phase)
                if resuming:
                    opt.load_state_dict(self.saved_opt)
                self.saved_opt = None
                self.controller = self._controller(phase)
                if resuming and self.controller is not None:
                    self.controller.load_state(self.start["controller"])
                lr_sched = self._lr_schedule(phase)
                for epoch in range(self.start["epoch"] if resuming else 0, n_epochs):
                    record = self._epoch(phase, epoch, n_epochs, opt, lr_sched)
                    self._record(record, log, idx, epoch, opt)
        finally:
            if log:
                log.close()

    def _record(self, record: dict, log, idx: int, epoch: int, opt) -> None:
        record["seconds_total"] = round(time.perf_counter() - self.t_start, 3)
        self.history.append(record)
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if self.cfg.checkpoint_path:
            position = {"phase": idx, "epoch": epoch + 1}
            if self.controller is not None:
                position["controller"] = self.controller.state()
            checkpoints.save(self.cfg.checkpoint_path, config=dataclasses.asdict(self.cfg), model=self.model,
                             opt=opt, masks=self.masks, position=position, history=self.history)
            self.last_checkpoint = self.cfg.checkpoint_path
        if self.on_epoch_end:
            self.on_epoch_end(record)

    # ---- what each phase uses -------------------------------------------------------------------
    def _enter(self, phase: str) -> None:
        """CSR from the start if asked; masks for gmp; freeze the support for debiasing and
        retraining (every penalised weight becomes CSR, so no entry can come back), after the
        one-shot cut of magnitude pruning."""
        cfg, model = self.cfg, self.model
        if phase in ("sparse", "prune") and cfg.switch_density >= 1.0:
            model.to_sparse(None)
        if phase == "prune":
            self.masks = {p.name: self.dev.full((p.stored,), 1.0, category="optimizer") for p in model.params
                          if p.penalised and not p.is_sparse}
        elif phase in ("debias", "retrain"):
            if cfg.method == "magnitude":
                magnitude_prune(model, cfg.kept_density, cfg.prune_scope)
            self.masks = {}
            model.to_sparse(None)

    def _optimizer(self, phase: str):
        from .optim import make_optimizer
        cfg, dev = self.cfg, self.dev
        if phase == "sparse":
            return make_optimizer(cfg.first_optimizer, lr=cfg.lr, l1=cfg.l1, l1_factors=cfg.l1_factors or None,
                                  momentum=cfg.momentum, gamma=cfg.gamma, device=dev,
                                  reweight_eps=cfg.reweight_eps if cfg.penalty == "reweighted" else None)
        if phase in ("dense", "prune"):
            return make_optimizer(cfg.first_optimizer, lr=cfg.lr, momentum=cfg.momentum, device=dev)
        return make_optimizer(cfg.debias_optimizer, lr=cfg.debias_lr, momentum=cfg.momentum, device=dev)

    def _lr_schedule(self, phase: str):
        cfg = self.cfg
        if phase in ("sparse", "dense", "prune"):
            kw = {}
            if cfg.train_lr_schedule == "hold-cosine":
                kw["hold"] = cfg.hold_share * cfg.epochs
            return Warmup(make_lr_schedule(cfg.train_lr_schedule, cfg.lr, cfg.epochs, **kw), cfg.lr_warmup)
        return make_lr_schedule(cfg.debias_lr_schedule, cfg.debias_lr, cfg.debias_epochs)

    def _controller(self, phase: str) -> DensityController | None:
        cfg = self.cfg
        if phase != "sparse" or cfg.target_density is None:
            return None
        return DensityController(cfg.target_density, cfg.l1, cfg.density_ramp * cfg.epochs,
                                 start=cfg.init_density or 1.0)

    # ---- one epoch ------------------------------------------------------------------------------
    def _epoch(self, phase: str, epoch: int, n_epochs: int, opt, lr_sched) -> dict:
        from tqdm import tqdm

        cfg, model, ds = self.cfg, self.model, self.ds
        t0 = time.perf_counter()
        steps = ds.num_batches("train", cfg.batch_size)
        # shuffling and dropout depend only on (seed, phase, epoch): a resumed run sees the same batches
        stream = _STREAM[phase] * 100_000 + epoch
        model.set_seed(cfg.seed * 1_000_003 + stream)
        bar = tqdm(total=steps, desc=f"{phase} {epoch + 1}/{n_epochs}", leave=False, unit="batch",
                   disable=not cfg.progress, dynamic_ncols=True)
        sums = {"loss": 0.0, "correct": 0, "seen": 0, "lr": 0.0, "l1": 0.0}
        l1_sched = make_l1_schedule(cfg.l1, cfg.l1_ramp_epochs)
        try:
            batches = ds.batches("train", cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=stream)
            for step, (x, y) in enumerate(batches):
                if phase == "prune" and step % max(1, steps // cfg.prune_frequency) == 0:
                    self._gmp_prune(epoch + step / steps, opt)
                kw = {"lr": lr_sched.lr_at(epoch, step, steps)}
                if phase == "sparse":       # before the gradients: it may change the supports
                    kw["l1"] = self._l1_at(l1_sched, epoch, step, steps, opt)
                loss, ok = model.train_batch(*model.stage_batch(x, y))
                _check_finite(loss, cfg, phase, epoch, step)
                self._step(opt, kw)
                sums["loss"] += loss * len(y)
                sums["correct"] += ok
                sums["seen"] += len(y)
                sums.update(kw)
                if step % 20 == 0 or step == steps - 1:
                    bar.set_postfix(self._shown(sums), refresh=False)
                bar.update(1)
        finally:
            bar.close()
        self._end_of_epoch(phase, epoch, n_epochs, opt)
        _check_finite_values(self.model, cfg, phase, epoch)
        return self._epoch_record(phase, epoch, n_epochs, sums, t0)

    def _l1_at(self, l1_sched, epoch: int, step: int, steps: int, opt) -> float:
        """lambda for this step: the l1 schedule's, or the density controller's.  When the
        controller stops shrinking (the density reached its path), the zeros made so far are
        frozen at once: dropped from the CSR supports, masked in dense weights.  With lambda = 0
        their momentum would otherwise bring them back."""
        ctl = self.controller
        if ctl is None:
            return l1_sched.l1_at(epoch, step, steps)
        if step % DENSITY_CHECK_STEPS == 0:
            nnz, size = nonzero_count(self.model)
            self.density = nnz / size
            shrinking = ctl.l1 > 0
            if ctl.update(self.density, epoch + step / steps) == 0 and shrinking:
                self._sparsify(opt)
                self._freeze_dense_zeros()
        return ctl.l1

    def _freeze_dense_zeros(self) -> None:
        """Masks that keep today's zeros of the dense penalised weights at zero from now on."""
        for p in self.model.params:
            if p.penalised and not p.is_sparse:
                keep = (p.data.get() != 0).astype(np.float32)
                if p.name in self.masks:
                    keep *= self.masks[p.name].get()
                self.masks[p.name] = self.dev.to_device(keep, category="optimizer")

    def _step(self, opt, kw: dict) -> None:
        """The optimizer step; gmp's masks keep pruned dense weights and their gradients at zero."""
        for name, m in self.masks.items():
            apply_mask(self.dev, self.model.param(name).grad, m)
        opt.step(self.model.params, **kw)
        for name, m in self.masks.items():
            apply_mask(self.dev, self.model.param(name).data, m)

    def _shown(self, sums: dict) -> dict:
        shown = {"loss": f"{sums['loss'] / sums['seen']:.4f}", "acc": f"{sums['correct'] / sums['seen']:.3f}"}
        if self.density is not None:
            shown["density"] = f"{self.density:.4f}"
        return shown

    def _end_of_epoch(self, phase: str, epoch: int, n_epochs: int, opt) -> None:
        if phase == "sparse":
            if epoch == n_epochs - 1 and self.cfg.target_density is not None:
                # the last sparse epoch ends at the target count: cut what is left above it
                prune(self.model, self.cfg.target_density, "global")
            self._sparsify(opt)
            opt.refresh_reweighting(self.model.params)
            if self.cfg.regrow and epoch < n_epochs - 1:
                self._regrow(epoch, opt)
        elif phase == "prune":
            self._gmp_prune(float(epoch + 1), opt)
            self._sparsify(opt)

    def _sparsify(self, opt) -> None:
        """CSR weights drop their new zeros; dense weights whose density fell to the switch
        threshold become CSR (their masks, if any, become their supports).  The optimizer's
        per-coordinate state follows the support."""
        self._compact(opt)
        if self.cfg.switch_density > 0:
            for p in self.model.params:
                if p.penalised and not p.is_sparse and p.density <= self.cfg.switch_density:
                    for name, src in self.model.to_sparse(p.name).items():
                        opt.remap(name, src)
        self.masks = {n: m for n, m in self.masks.items() if not self.model.param(n).is_sparse}
        # the buffers of replaced supports (dense weights after a switch) go back to the driver
        self.dev.memory.trim()

    def _regrow(self, epoch: int, opt) -> None:
        """New zero entries in every CSR weight (proxcl.regrowth), chosen at random or by the
        gradient of one training batch (the first of a stream of its own, so a resumed run
        chooses the same)."""
        from .regrowth import regrow
        cfg, model = self.cfg, self.model
        rng = np.random.default_rng([cfg.seed, 7, epoch])
        if cfg.regrow == "gradient":
            x, y = next(iter(self.ds.batches("train", cfg.batch_size, shuffle=True, seed=cfg.seed,
                                             epoch=300_000 + epoch)))
            model.train_batch(*model.stage_batch(x, y))
        regrow(model, opt, cfg.regrow, cfg.regrow_fraction, rng)
        self.dev.memory.trim()

    def _gmp_prune(self, x: float, opt) -> None:
        """A pruning step of gradual magnitude pruning at ``x`` epochs: cut every group to the
        density of the cubic schedule (the target exactly once it is reached) and drop the cut
        entries of CSR weights at once, so they cannot come back."""
        cfg = self.cfg
        sched = CubicSparsity(1.0 - cfg.kept_density, cfg.prune_start * cfg.epochs, cfg.prune_end * cfg.epochs)
        density = cfg.kept_density if x >= sched.end else 1.0 - sched.at(x)
        if prune(self.model, density, cfg.prune_scope, self.masks):
            self._compact(opt)

    def _compact(self, opt) -> None:
        """CSR weights drop their zero entries; the optimizer's state follows the new supports."""
        for name, src in self.model.compact().items():
            opt.remap(name, src)

    def _epoch_record(self, phase: str, epoch: int, n_epochs: int, sums: dict, t0: float) -> dict:
        from tqdm import tqdm

        model, ds = self.model, self.ds
        stats = model.weight_stats()
        nnz = sum(s["nnz"] for s in stats if s["penalised"])
        weights = sum(s["size"] for s in stats if s["penalised"])
        # evaluation at the training batch size: a larger one would grow every activation buffer
        test = evaluate(model, ds, "test", batch_size=self.cfg.batch_size)
        if not math.isfinite(test["loss"]):       # finite weights whose products overflow
            raise TrainingError(f"the test loss became {test['loss']} after phase {phase}, epoch {epoch + 1}; "
                                f"try {_hint(self.cfg, phase)}")
        seen = max(sums["seen"], 1)
        record = {"phase": phase, "epoch": epoch + 1, "lr": sums["lr"], "l1": sums["l1"] if phase == "sparse" else 0.0,
                  "loss": sums["loss"] / seen, "train_accuracy": sums["correct"] / seen,
                  "test_accuracy": test["accuracy"], "test_loss": test["loss"],
                  "nnz": nnz, "weights": weights, "density": nnz / weights if weights else 0.0,
                  "layers": [{"name": s["name"], "kind": s["kind"], "nnz": s["nnz"], "density": s["density"]}
                             for s in stats if s["penalised"]],
                  "seconds": round(time.perf_counter() - t0, 3),
                  "memory": dict(self.dev.memory.snapshot(), activations_by_layer=model.activation_bytes())}
        if ds.has_split("val"):
            record["val_accuracy"] = evaluate(model, ds, "val", batch_size=self.cfg.batch_size)["accuracy"]
        if self.cfg.verbose:
            tqdm.write(f"{phase:>7} {epoch + 1:>3}/{n_epochs}  loss {record['loss']:.4f}  "
                       f"train {record['train_accuracy']:.4f}  test {record['test_accuracy']:.4f}  "
                       f"nonzero {record['density'] * 100:6.2f} %  {record['seconds']:.1f} s")
        return record


def _hint(cfg: TrainConfig, phase: str) -> str:
    if phase == "sparse" and cfg.first_optimizer == "rda":
        return "a larger --gamma (RDA's steps are sqrt(t)/gamma)"
    return "a smaller learning rate (--debias-lr)" if phase in ("debias", "retrain") else \
        "a smaller learning rate (--lr)"


def _check_finite(loss: float, cfg: TrainConfig, phase: str, epoch: int, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"loss became {loss} in phase {phase}, epoch {epoch + 1}, step {step + 1}; "
                            f"try {_hint(cfg, phase)}")


def _check_finite_values(model, cfg: TrainConfig, phase: str, epoch: int) -> None:
    """A parameter can turn NaN in an epoch's last steps, after the last loss that would show it."""
    for p in model.params:
        if p.data.size and not np.all(np.isfinite(p.data.get())):
            raise TrainingError(f"{p.name} became NaN or infinite in phase {phase}, epoch {epoch + 1}; "
                                f"try {_hint(cfg, phase)}")


# ---- the model file's record of the run ---------------------------------------------------------

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
    summary = {k: v for k, v in dataclasses.asdict(cfg).items()
               if k not in RESUME_MAY_CHANGE and (k in keep or v != defaults[k])}
    summary["optimizer"] = cfg.first_optimizer
    return summary
