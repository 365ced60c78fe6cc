"""proxcl train: sparse learning from scratch, CSR switch, debiasing; dense and magnitude baselines."""

from __future__ import annotations

import argparse
import json
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


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `proxcl train` (also used by `proxcl demo`)."""
    from ..training import TrainConfig
    d = TrainConfig()
    g = p.add_argument_group("what to train")
    g.add_argument("--model", default=d.model,
                   help="lenet300, lenet5, convnet-small, or a JSON spec file (default %(default)s)")
    g.add_argument("--data", default=d.data,
                   help="fashion-mnist, mnist, fashion-mnist:DIR, mnist:DIR or synthetic (default %(default)s)")
    g.add_argument("--val-split", type=float, default=d.val_split, help="fraction of the training set held out")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=["proximal", "dense", "magnitude"], default=d.method,
                   help="proximal l1 learning + debiasing (default), dense training (lambda = 0), or "
                        "magnitude pruning with retraining (Han et al. 2015)")
    g.add_argument("--optimizer", choices=["prox-sgd", "prox-adam", "rda", "sgd", "adam"], default=d.optimizer,
                   help="sparse phase optimizer (default %(default)s); sgd/adam for --method dense")
    g.add_argument("--l1", type=float, default=d.l1, metavar="LAMBDA", help="l1 strength (default %(default)s)")
    g.add_argument("--l1-factor", type=_factor, action="append", default=[], metavar="LAYER=F",
                   help="per-layer multiplier of lambda (repeatable)")
    g.add_argument("--l1-ramp", type=int, default=d.l1_ramp_epochs, metavar="EPOCHS",
                   help="raise lambda linearly from 0 over this many epochs")
    g.add_argument("--epochs", type=int, default=d.epochs, help="sparse (or dense) epochs (default %(default)s)")
    g.add_argument("--debias-epochs", type=int, default=d.debias_epochs,
                   help="epochs on the frozen support without l1; retraining epochs for magnitude "
                        "(default %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate (default %(default)s)")
    g.add_argument("--lr-schedule", choices=["constant", "step", "cosine"], default=d.lr_schedule)
    g.add_argument("--momentum", type=float, default=d.momentum, help="prox-sgd/sgd momentum")
    g.add_argument("--gamma", type=float, default=d.gamma, help="l1-RDA's constant gamma (default %(default)s)")
    g.add_argument("--debias-optimizer", choices=["sgd", "adam"], default=d.debias_optimizer)
    g.add_argument("--debias-lr", type=float, default=d.debias_lr, help="(default %(default)s)")
    g.add_argument("--switch-density", type=_switch_density, default=d.switch_density, metavar="R",
                   help="a layer turns CSR when its density falls to R; 'never' or 'start' "
                        "(default %(default)s)")
    g.add_argument("--target-density", type=float, default=d.target_density,
                   help="magnitude pruning: fraction of weights kept (default %(default)s)")
    g.add_argument("--prune-scope", choices=["layer", "global"], default=d.prune_scope,
                   help="magnitude pruning per layer or over all layers (default %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="OpenCL device: cpu, gpu, pocl, nvidia, P:D "
                                                  "(default $PROXCL_DEVICE or the first GPU)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--out", default="model.proxcl", help="model file to write (default %(default)s)")
    g.add_argument("--half", action="store_true", help="store values as float16")
    g.add_argument("--log", default=None, help="JSON-lines log, one line per epoch")
    g.add_argument("--checkpoint", default=None, help="checkpoint written each epoch (default OUT.ckpt)")
    g.add_argument("--resume", default=None, metavar="CKPT", help="continue from a checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")


def config_from_args(args):
    from ..training import TrainConfig
    return TrainConfig(
        model=args.model, data=args.data, method=args.method, optimizer=args.optimizer, l1=args.l1,
        l1_factors=dict(args.l1_factor), l1_ramp_epochs=args.l1_ramp, epochs=args.epochs,
        debias_epochs=args.debias_epochs, batch_size=args.batch_size, lr=args.lr,
        lr_schedule=args.lr_schedule, momentum=args.momentum, gamma=args.gamma,
        debias_optimizer=args.debias_optimizer, debias_lr=args.debias_lr,
        switch_density=args.switch_density, target_density=args.target_density,
        prune_scope=args.prune_scope, val_split=args.val_split, seed=args.seed, device=args.device,
        out=args.out, log=args.log, checkpoint=args.checkpoint, half=args.half,
        progress=not args.no_progress)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a sparse model from scratch",
        description="Sparse learning with a proximal l1 optimizer (each layer turns CSR when its density "
                    "reaches --switch-density; forward, backward and the proximal step then run on CSR), "
                    "then debiasing on the frozen support. --method dense and --method magnitude train "
                    "the baselines with the same loop. Writes the model file, a checkpoint each epoch, "
                    "and optionally a JSON-lines log.")
    add_training_arguments(p)
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training import train
    cfg = config_from_args(args)
    res = train(cfg, resume=args.resume)
    summary = {"out": cfg.out, "test_accuracy": res.test_accuracy, "nnz": res.nnz, "weights": res.weights,
               "density": res.density, "seconds": round(res.seconds, 1)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"test accuracy {res.test_accuracy * 100:.2f} %, {res.nnz} of {res.weights} weights nonzero "
              f"({res.density * 100:.2f} %), {res.seconds:.0f} s; model written to {cfg.out}",
              file=sys.stdout)
    return 0
