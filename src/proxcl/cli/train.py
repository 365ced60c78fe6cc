"""proxcl train: sparse learning from scratch, CSR switch, debiasing; dense and magnitude baselines."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys


def _switch_density(text: str) -> float:
    t = text.strip().lower()
    if t == "never":
        return 0.0
    if t in ("start", "always"):
        return 1.0
    try:
        v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a density, 'never' or 'start'") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError("a density is in [0, 1]")
    return v


def _factor(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LAYER=FACTOR, e.g. fc3=0.5") from None


def _schedule_default(d) -> str:
    return d.lr_schedule or "constant for proximal, cosine for the baselines"


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `proxcl train`; each option that only some runs use says which in its help
    (the same table that TrainConfig.validate checks)."""
    from ..training import TrainConfig
    d = TrainConfig()
    _add_what(p.add_argument_group("what to train"), d)
    _add_method(p.add_argument_group("method"), d)
    _add_proximal(p.add_argument_group("proximal l1 (--method proximal only)"), d)
    _add_schedule(p.add_argument_group("schedule"), d)
    _add_debias(p.add_argument_group("debiasing (proximal), retraining (magnitude), fine-tuning (gmp): "
                                     "not with --method dense"), d)
    _add_pruning(p.add_argument_group("pruning baselines (--method magnitude and gmp only)"), d)
    _add_run(p.add_argument_group("run"), d)
    _mark_scopes(p)


def _mark_scopes(p: argparse.ArgumentParser) -> None:
    from ..training import OPTION_SCOPES
    for action in p._actions:
        where = next((OPTION_SCOPES[o] for o in action.option_strings if o in OPTION_SCOPES), None)
        if where and action.help:
            action.help += f" [only {where}]"


def _add_what(g, d) -> None:
    g.add_argument("--model", default=d.model,
                   help="lenet300, lenet5, convnet-small, or a JSON spec file (default %(default)s)")
    g.add_argument("--data", default=d.data,
                   help=data_help())
    g.add_argument("--val-split", type=float, default=d.val_split,
                   help="fraction of the training set held out and not trained on; each epoch's accuracy on "
                        "it is logged as val_accuracy (--log) (default %(default)s: none)")


def _add_method(g, d) -> None:
    from ..training import METHODS, PLAIN_OPTIMIZERS, PROX_OPTIMIZERS
    g.add_argument("--method", choices=METHODS, default=d.method,
                   help="proximal l1 learning + debiasing (default); or the baselines: dense training "
                        "(lambda = 0), one-shot magnitude pruning with retraining (Han et al. 2015), "
                        "gradual magnitude pruning with fine-tuning (gmp: Zhu & Gupta 2017, as in "
                        "TF-MOT and torch.ao)")
    g.add_argument("--target-density", type=float, default=d.target_density, metavar="R",
                   help="the share of weights the model ends with. proximal: lambda is adapted while "
                        "training so that the density follows a cubic path down to R over the first "
                        "--density-ramp of the epochs and stays there; the last sparse epoch cuts "
                        "what is left above R by magnitude (without it, --l1 is used as it is). "
                        "magnitude, gmp: the share kept (default 0.05)")
    g.add_argument("--optimizer", choices=PROX_OPTIMIZERS + PLAIN_OPTIMIZERS, default=d.optimizer,
                   help="the first phase's optimizer: prox-sgd (default), prox-adam or rda for --method "
                        "proximal; sgd (default) or adam for the baselines")


def _add_proximal(g, d) -> None:
    from ..training import PENALTIES
    g.add_argument("--penalty", choices=PENALTIES, default=d.penalty,
                   help="l1, or reweighted l1 (default %(default)s): each weight's threshold is "
                        "scaled by c / (|w| + eps c), c the layer's mean nonzero magnitude, so small "
                        "weights are removed and large ones barely shrunk")
    g.add_argument("--reweight-eps", type=float, default=d.reweight_eps, metavar="EPS",
                   help="eps of the reweighted penalty (default %(default)s)")
    g.add_argument("--l1", type=float, default=d.l1, metavar="LAMBDA",
                   help="l1 strength; with --target-density the value it starts from (default %(default)s)")
    g.add_argument("--l1-factor", type=_factor, action="append", default=[], metavar="LAYER=F",
                   help="per-layer multiplier of lambda (repeatable)")
    g.add_argument("--l1-ramp", type=int, default=d.l1_ramp_epochs, metavar="EPOCHS",
                   help="raise lambda linearly from 0 over this many epochs")
    g.add_argument("--density-ramp", type=float, default=d.density_ramp, metavar="F",
                   help="with --target-density: share of the sparse epochs over which the density "
                        "descends to the target (default %(default)s)")
    g.add_argument("--init-density", type=float, default=d.init_density, metavar="R",
                   help="proximal: start every weight as a random CSR support, R of all weights "
                        "spread over the layers Erdos-Renyi style (large layers sparser), and train "
                        "on CSR from the first step; the dense weights never exist on the device. "
                        "With --target-density the path descends from R")
    g.add_argument("--regrow", choices=("random", "gradient"), default=d.regrow,
                   help="proximal on CSR: at the end of every sparse epoch but the last, each layer gains "
                        "--regrow-fraction of its nonzeros as new zero entries, chosen at random or by the "
                        "largest gradient magnitudes (computed in blocks of rows, never a dense weight)")
    g.add_argument("--regrow-fraction", type=float, default=d.regrow_fraction, metavar="F",
                   help="with --regrow (default %(default)s)")


def _add_schedule(g, d) -> None:
    from ..schedules import LR_SCHEDULES
    g.add_argument("--epochs", type=int, default=d.epochs,
                   help="sparse (or dense) epochs, at least 1 (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate (default %(default)s)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help=f"hold-cosine: constant, then half a cosine to 0 from --lr-hold on "
                        f"(default {_schedule_default(d)})")
    g.add_argument("--lr-hold", type=float, default=d.lr_hold, metavar="F",
                   help="hold-cosine: share of the epochs at constant lr (default: --density-ramp with "
                        "--target-density, else 0.5)")
    g.add_argument("--lr-warmup", type=float, default=d.lr_warmup, metavar="EPOCHS",
                   help="linear learning-rate warm-up over the first EPOCHS of the sparse (or dense) "
                        "phase; at lr 0.05 without it LeNet-5 diverges on some seeds (default %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="prox-sgd/sgd momentum (default %(default)s)")
    g.add_argument("--gamma", type=float, default=d.gamma, help="l1-RDA's constant gamma (default %(default)s)")
    g.add_argument("--switch-density", type=_switch_density, default=d.switch_density, metavar="R",
                   help="a layer turns CSR when its density falls to R; 'never' or 'start' "
                        "(default %(default)s)")


def _add_debias(g, d) -> None:
    from ..schedules import LR_SCHEDULES
    from ..training import PLAIN_OPTIMIZERS
    g.add_argument("--debias-epochs", type=int, default=d.debias_epochs,
                   help="epochs on the frozen support without l1; retraining epochs for magnitude, "
                        "fine-tuning epochs for gmp (default %(default)s)")
    g.add_argument("--debias-optimizer", choices=PLAIN_OPTIMIZERS, default=d.debias_optimizer,
                   help="(default %(default)s)")
    g.add_argument("--debias-lr", type=float, default=d.debias_lr, help="(default %(default)s)")
    g.add_argument("--debias-lr-schedule", choices=LR_SCHEDULES, default=d.debias_lr_schedule,
                   help="(default %(default)s)")


def _add_pruning(g, d) -> None:
    g.add_argument("--prune-scope", choices=["layer", "global"], default=d.prune_scope,
                   help="magnitude and gmp: rank weights per layer or over all layers (default %(default)s)")
    g.add_argument("--prune-start", type=float, default=d.prune_start, metavar="F",
                   help="gmp: pruning starts after this share of --epochs (default %(default)s)")
    g.add_argument("--prune-end", type=float, default=d.prune_end, metavar="F",
                   help="gmp: the target is reached after this share of --epochs (default %(default)s)")
    g.add_argument("--prune-frequency", type=int, default=d.prune_frequency, metavar="N",
                   help="gmp: pruning steps per epoch (default %(default)s)")


def _add_run(g, d) -> None:
    g.add_argument("--device", default=None, help="OpenCL device: cpu, gpu, pocl, nvidia, P:D "
                                                  "(default $PROXCL_DEVICE or the first GPU)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--out", default="model.proxcl",
                   help="model file to write; a missing folder is created (default %(default)s)")
    g.add_argument("--half", action="store_true", help="store values as float16")
    g.add_argument("--log", default=None, help="JSON-lines log, one line per epoch (a missing folder is created)")
    g.add_argument("--checkpoint", default=None, help="checkpoint written each epoch (default OUT.ckpt)")
    g.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue from a checkpoint, with the same settings (Ctrl-C prints the command)")
    add_output_arguments(g)


def data_help() -> str:
    """--data's help, for every command that takes a data set."""
    from ..data import DATA_SPECS
    return f"{DATA_SPECS} (DIR: a folder of its IDX files; synthetic: a small generated set, for trials) " \
           "(default %(default)s)"


def add_output_arguments(g) -> None:
    """--progress, --no-progress, --quiet: what a run prints while it trains."""
    x = g.add_mutually_exclusive_group()
    x.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bars even when stderr is not a terminal (by default they are shown "
                        "only on a terminal)")
    x.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (the per-epoch lines stay)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="neither progress bars nor per-epoch lines (not with --progress)")


def output_settings(args) -> dict:
    """TrainConfig's progress and verbose from --progress/--no-progress/--quiet: bars on a terminal
    (stderr) only, per-epoch lines unless --quiet."""
    quiet = getattr(args, "quiet", False)
    progress = getattr(args, "progress", None)
    if quiet and progress:
        from . import CLIError
        raise CLIError("--quiet and --progress contradict each other: --quiet shows no progress bars")
    if progress is None:
        progress = sys.stderr.isatty()
    return {"progress": bool(progress) and not quiet, "verbose": not quiet}


# option name -> TrainConfig field, where they differ
_RENAMED = {"l1_factor": "l1_factors", "l1_ramp": "l1_ramp_epochs"}


def config_from_args(args):
    from ..training import TrainConfig
    fields = set(TrainConfig.__dataclass_fields__)
    kw = {}
    for k, v in vars(args).items():
        name = _RENAMED.get(k, k)
        if name in fields:
            kw[name] = v
    kw["l1_factors"] = dict(kw.get("l1_factors", []))
    kw.update(output_settings(args))
    return TrainConfig(**kw)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a sparse model from scratch",
        description="Sparse learning with a proximal (reweighted) l1 optimizer (each layer turns CSR when "
                    "its density reaches --switch-density; forward, backward and the proximal step then "
                    "run on CSR), then debiasing on the frozen support. --target-density R ends with "
                    "R of the weights nonzero (never more). --method dense, magnitude and gmp train the "
                    "baselines with the same loop. Writes the model file, a checkpoint each epoch, "
                    "and optionally a JSON-lines log.")
    add_training_arguments(p)
    p.add_argument("--json", action="store_true",
                   help="print the final summary as JSON, alone on stdout (per-epoch lines go to stderr)")
    p.set_defaults(func=run)


def resume_command(argv: list[str], checkpoint: str) -> str:
    """The command line that continues an interrupted run: the same arguments (``argv`` from the
    subcommand on), any --resume replaced by ``checkpoint``."""
    kept, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if len(name) > 4 and "--resume".startswith(name):     # --resume or an abbreviation of it
            skip = "=" not in tok
            continue
        kept.append(tok)
    return shlex.join(["proxcl", *kept, "--resume", checkpoint])


def run(args) -> int:
    from ..training import TrainingInterrupted, train
    cfg = config_from_args(args)
    try:
        # with --json, stdout holds the summary alone: the per-epoch lines go to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            res = train(cfg, resume=args.resume)
    except TrainingInterrupted as e:
        if e.checkpoint:
            print(f"proxcl: interrupted; continue with: {resume_command(args.argv, e.checkpoint)}",
                  file=sys.stderr)
        else:
            print("proxcl: interrupted before the first checkpoint; nothing to resume", file=sys.stderr)
        return 130
    peak = res.memory["peak"]
    summary = {"out": cfg.out, "test_accuracy": res.test_accuracy, "nnz": res.nnz, "weights": res.weights,
               "density": res.density, "seconds": round(res.seconds, 1), "peak_bytes": peak["total"],
               "peak_state_bytes": peak["state"]}
    if args.json:
        print(json.dumps(summary))
    else:
        from ..memory import format_bytes
        print(f"test accuracy {res.test_accuracy * 100:.2f} %, {res.nnz} of {res.weights} weights nonzero "
              f"({res.density * 100:.2f} %), {res.seconds:.0f} s, peak device memory "
              f"{format_bytes(peak['total'])} (weights, gradients and optimizer state "
              f"{format_bytes(peak['state'])}); model written to {cfg.out}", file=sys.stdout)
    return 0
