"""Data-parallel training with proxcl's proximal optimizers under ``torchrun``.

    torchrun --nproc_per_node N -m proxcl.torch.ddp --model lenet5 --epochs 20 --out m.proxcl

One process per GPU (NCCL) or per CPU share (gloo); ``--backend auto`` takes NCCL when CUDA is
there.  Every step, each process computes the gradient of its shard of the global batch,
DistributedDataParallel averages the gradients (the all-reduce, in ``backward``), and then every
process makes the same proximal step (``optimizer.step()``) on the same averaged gradient, so the
weights stay identical on every rank without being sent.  The run is the one ``proxcl train``
makes: a sparse phase (Prox-SGD, Prox-Adam or l1-RDA, plain or reweighted l1, lambda or a target
density, supports frozen at ``--switch-density``), then debiasing on the frozen support; rank 0
evaluates, writes the model file (``proxcl.torch.export``) and a JSON summary.

``--batch-size`` is the global batch: each shuffled batch (the same order as ``proxcl train``:
``proxcl.data.epoch_order``) is split into equal shards, one per process, and each process scales
its summed loss by world size / global batch, so the averaged gradient is the gradient of the
batch's mean loss whatever the number of processes.  The same command with N processes or one
gives the same weights up to float rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from proxcl.data import DataError, epoch_order, load_dataset
from proxcl.errors import InputError
from proxcl.fileio import atomic_write, check_writable
from proxcl.schedules import LR_SCHEDULES, CosineLR, Warmup, make_lr_schedule
from proxcl.spec import normalize_spec
from proxcl.training import TrainingError
from proxcl.torch.convert import export, module_from_spec
from proxcl.torch.debias import freeze_support
from proxcl.torch.optim import RDA, ProxAdam, ProxSGD

DEBIAS_STREAM = 100_000     # the debiasing epochs' shuffles, as proxcl train numbers them


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m proxcl.torch.ddp",
                                description="Sparse training with proxcl's proximal optimizers on "
                                            "several processes (DistributedDataParallel), then "
                                            "debiasing; rank 0 writes the model file.")
    p.add_argument("--model", default="lenet5", help="model spec (built-in name, JSON or file)")
    p.add_argument("--data", default="fashion-mnist", help="data set spec, as proxcl train takes it")
    p.add_argument("--optimizer", default="prox-sgd", choices=("prox-sgd", "prox-adam", "rda"))
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--gamma", type=float, default=1.0, help="l1-RDA's constant")
    p.add_argument("--l1", type=float, default=1e-3, help="lambda; with --target-density its start")
    p.add_argument("--l1-factor", action="append", default=[], metavar="NAME=F",
                   help="per-layer lambda factor (repeatable)")
    p.add_argument("--penalty", default="reweighted", choices=("l1", "reweighted"))
    p.add_argument("--reweight-eps", type=float, default=0.03)
    p.add_argument("--target-density", type=float, default=None)
    p.add_argument("--density-ramp", type=float, default=0.75,
                   help="share of the sparse epochs over which the target is reached")
    p.add_argument("--switch-density", type=float, default=0.5,
                   help="a weight's support is frozen once its density falls to this (0: never)")
    p.add_argument("--epochs", type=int, default=20, help="sparse epochs")
    p.add_argument("--debias-epochs", type=int, default=10)
    p.add_argument("--debias-optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--debias-lr", type=float, default=0.005)
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="the sparse phase's learning rate (debiasing: cosine)")
    p.add_argument("--lr-hold", type=float, default=None,
                   help="hold-cosine: share of the epochs at constant lr (default: the density ramp "
                        "with a target, else half)")
    p.add_argument("--lr-warmup", type=float, default=1.0, help="epochs of linear warm-up")
    p.add_argument("--batch-size", type=int, default=128, help="the global batch, over all processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"))
    p.add_argument("--out", help="model file (written by rank 0)")
    p.add_argument("--json", help="summary JSON (written by rank 0)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p.parse_args(argv)


class World:
    """This process's place: rank, world size, device, and the process group when there are several."""

    def __init__(self, backend: str):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and backend != "gloo"
        if cuda:
            torch.cuda.set_device(local)
            torch.backends.cuda.matmul.allow_tf32 = False      # float32 as on the CPU
            torch.backends.cudnn.allow_tf32 = False
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        self.backend = ("nccl" if cuda else "gloo") if backend == "auto" else backend
        if self.size > 1:
            dist.init_process_group(self.backend, device_id=self.device if cuda else None)

    @property
    def name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.size > 1:
            dist.all_reduce(t)
        return t.tolist()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        if self.size > 1:
            dist.barrier()
            dist.destroy_process_group()


def _factors(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InputError(f"--l1-factor takes NAME=FACTOR, got {item!r}")
    return out


def _sparse_optimizer(args, model, steps_per_epoch: int):
    kw = {"l1": args.l1, "l1_factors": _factors(args.l1_factor) or None,
          "reweight_eps": args.reweight_eps if args.penalty == "reweighted" else None,
          "switch_density": args.switch_density}
    if args.target_density is not None:
        kw.update(target_density=args.target_density,
                  density_ramp=args.density_ramp * args.epochs * steps_per_epoch)
    params = list(model.named_parameters())
    if args.optimizer == "prox-sgd":
        return ProxSGD(params, lr=args.lr, momentum=args.momentum, **kw)
    if args.optimizer == "prox-adam":
        return ProxAdam(params, lr=args.lr, **kw)
    return RDA(params, gamma=args.gamma, **kw)


def _debias_optimizer(args, model):
    params = list(model.named_parameters())
    if args.debias_optimizer == "sgd":
        return ProxSGD(params, lr=args.debias_lr, momentum=args.momentum, switch_density=0)
    return ProxAdam(params, lr=args.debias_lr, switch_density=0)


class Trainer:
    """The run on one process: data on the device, the shard of every batch, both phases."""

    def __init__(self, args, world: World):
        self.args, self.world = args, world
        self.spec = normalize_spec(args.model)
        self.ds = load_dataset(args.data, seed=args.seed)
        dev = world.device
        self.x = torch.from_numpy(self.ds.images["train"]).to(dev)
        self.y = torch.from_numpy(self.ds.labels["train"].astype(np.int64)).to(dev)
        torch.manual_seed(args.seed)
        self.model = module_from_spec(self.spec).to(dev)
        self.net = self.model
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.net = DistributedDataParallel(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.n = len(self.y)
        self.steps = -(-self.n // args.batch_size)
        self.history: list[dict] = []
        self.train_seconds = 0.0

    def _shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's part of the global batch [start, stop): equal parts, the first ones one
        longer when it does not divide (np.array_split's split)."""
        q, r = divmod(stop - start, self.world.size)
        rank = self.world.rank
        lo = start + rank * q + min(rank, r)
        return lo, lo + q + (rank < r)

    def epoch(self, phase: str, epoch: int, opt, sched, stream: int) -> dict:
        args, world = self.args, self.world
        order = torch.from_numpy(epoch_order(self.n, args.seed, stream)).to(world.device)
        self.model.train()
        world.sync()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=world.device)
        correct = torch.zeros((), dtype=torch.int64, device=world.device)
        for step in range(self.steps):
            start, stop = step * args.batch_size, min(self.n, (step + 1) * args.batch_size)
            lo, hi = self._shard(start, stop)
            shard = order[lo:hi]
            for group in opt.param_groups:
                group["lr"] = sched.lr_at(epoch, step, self.steps)
            out = self.net(self.x[shard])
            loss = F.cross_entropy(out, self.y[shard], reduction="sum")
            opt.zero_grad(set_to_none=True)
            (loss * (world.size / (stop - start))).backward()
            opt.step()
            loss_sum += loss.detach()
            correct += (out.detach().argmax(1) == self.y[shard]).sum()
        if phase == "sparse":
            opt.end_epoch(final=epoch == args.epochs - 1)
        world.sync()
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        total_loss, total_correct = world.sum([float(loss_sum), float(correct)])
        if not math.isfinite(total_loss):
            raise TrainingError(f"the loss became {total_loss} in {phase} epoch {epoch + 1}; try a smaller "
                                f"{'--debias-lr' if phase == 'debias' else '--lr'}")
        nnz, weights = opt.nonzero_count()
        record = {"phase": phase, "epoch": epoch + 1, "loss": total_loss / self.n,
                  "train_accuracy": total_correct / self.n, "nnz": nnz, "density": nnz / weights,
                  "l1": opt.param_groups[0]["l1"], "seconds": round(seconds, 3)}
        self.history.append(record)
        if world.rank == 0 and not args.quiet:
            print(f"{phase:>7} {epoch + 1:>3}  loss {record['loss']:.4f}  train {record['train_accuracy']:.4f}  "
                  f"nonzero {record['density'] * 100:6.2f} %  {seconds:.1f} s", flush=True)
        return record

    def run(self) -> None:
        args = self.args
        opt = _sparse_optimizer(args, self.model, self.steps)
        kw = {}
        if args.lr_schedule == "hold-cosine":
            hold = args.lr_hold if args.lr_hold is not None else \
                args.density_ramp if args.target_density is not None else 0.5
            kw["hold"] = hold * args.epochs
        sched = Warmup(make_lr_schedule(args.lr_schedule, args.lr, max(1, args.epochs), **kw), args.lr_warmup)
        for epoch in range(args.epochs):
            self.epoch("sparse", epoch, opt, sched, epoch)
        self.sparse_accuracy = self.evaluate()
        if args.debias_epochs:
            opt = _debias_optimizer(args, self.model)
            frozen = freeze_support(self.model, opt)
            sched = CosineLR(args.debias_lr, args.debias_epochs)
            for epoch in range(args.debias_epochs):
                self.epoch("debias", epoch, opt, sched, DEBIAS_STREAM + epoch)
            frozen.remove()

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        x = torch.from_numpy(self.ds.images["test"])
        y = torch.from_numpy(self.ds.labels["test"].astype(np.int64))
        correct = 0
        for s in range(0, len(y), 1000):
            out = self.model(x[s:s + 1000].to(self.world.device))
            correct += int((out.argmax(1).cpu() == y[s:s + 1000]).sum())
        return correct / len(y)

    def rank_spread(self) -> float:
        """The largest difference of any weight between a rank and rank 0 (0.0: identical)."""
        if self.world.size == 1:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, 0)
        t = (flat - ref).abs().max().reshape(1)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def summary(self) -> dict:
        args, world = self.args, self.world
        nnz = sum(int(torch.count_nonzero(p)) for p in self.model.parameters() if p.dim() >= 2)
        weights = sum(p.numel() for p in self.model.parameters() if p.dim() >= 2)
        epochs = args.epochs + args.debias_epochs
        rate = self.n * epochs / self.train_seconds if self.train_seconds else None
        later = [r["seconds"] for r in self.history[1:]]
        steady = self.n * len(later) / sum(later) if later and sum(later) else None
        return {"world_size": world.size, "backend": world.backend if world.size > 1 else None,
                "device": world.name, "model": self.spec.get("name", "custom"), "data": args.data,
                "optimizer": args.optimizer, "penalty": args.penalty, "l1": args.l1,
                "target_density": args.target_density, "global_batch": args.batch_size,
                "epochs": args.epochs, "debias_epochs": args.debias_epochs, "seed": args.seed,
                "train_seconds": round(self.train_seconds, 3), "samples_per_second": rate,
                "samples_per_second_per_device": rate / world.size if rate else None,
                "steady_samples_per_second_per_device": steady / world.size if steady else None,
                "test_accuracy_sparse": self.sparse_accuracy, "test_accuracy": self.evaluate(),
                "nnz": nnz, "weights": weights, "density": nnz / weights,
                "history": self.history, "torch": torch.__version__}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.batch_size < 1 or args.epochs < 0 or args.debias_epochs < 0:
            raise InputError("--batch-size must be >= 1 and the epoch counts >= 0")
        for what, path in (("--out", args.out), ("--json", args.json)):
            check_writable(path, what)
        world = World(args.backend)
    except InputError as e:
        print(f"proxcl.torch.ddp: error: {e}", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(args, world)
        if args.batch_size < world.size:
            raise InputError(f"--batch-size {args.batch_size} is smaller than the {world.size} processes")
        trainer.run()
        spread = trainer.rank_spread()
        if world.rank == 0:
            result = trainer.summary()
            result["rank_max_difference"] = spread
            if args.out:
                export(trainer.model, args.out, input_shape=trainer.spec["input_shape"],
                       name=trainer.spec.get("name"), normalisation=trainer.ds.normalisation,
                       class_names=trainer.ds.class_names,
                       metadata={"test_accuracy": result["test_accuracy"], "trained_with": "proxcl.torch.ddp",
                                 "world_size": world.size, "config": vars(args)})
                result["out"] = args.out
            text = json.dumps(result, indent=2)
            if args.json:
                atomic_write(args.json, lambda f: f.write((text + "\n").encode()))
            if not args.quiet:
                print(f"test accuracy {result['test_accuracy'] * 100:.2f} %  nonzero {result['density'] * 100:.2f} %  "
                      f"{result['samples_per_second_per_device']:.0f} samples/s per process", flush=True)
    except (InputError, DataError, TrainingError, OSError) as e:
        print(f"proxcl.torch.ddp: error: {e}", file=sys.stderr)
        return 2
    finally:
        world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
