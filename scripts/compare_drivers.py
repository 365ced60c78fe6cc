"""A short LeNet-5 training on two or more OpenCL devices, compared: the same seed, data and
schedule, so the devices differ only in rounding (docs/PORTABILITY.md).

    python scripts/compare_drivers.py [--train N] [--test N] [--epochs E] [--batch-size B] SPEC SPEC ...

Each device trains in a process of its own (its spec as $PROXCL_DEVICE): LeNet-5 with the
defaults of `proxcl train` (reweighted-l1 Prox-SGD, batch B = 128, so conv1's weight gradient has
an inner dimension of 576 B = 73,728), E sparse epochs and one of debiasing on the first N
training images, evaluated on the first N test images.  At B = 1024 that inner dimension (589,824)
passes llvmpipe's loop cap unless the kernels split it.  The first spec is the reference.  Exits 1 unless every
other device is within the tolerances:

* each epoch's mean training loss within 1 % (relative);
* each epoch's training and test accuracy within 1 percentage point;
* the final weights within 2 % (relative L2 distance over all parameters).

Rounding differences grow over the steps (and an entry near the l1 threshold may be cut on one
device and not the other), so the runs agree to these tolerances, not bit for bit.  A wrong
kernel (such as one that stops its loops early) is far outside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

LOSS_REL, ACC_ABS, WEIGHTS_REL = 0.01, 0.01, 0.02


def run_one(args) -> None:
    """Child: train on $PROXCL_DEVICE, write the history and the weights."""
    from proxcl import TrainConfig, train
    from proxcl.data import load_dataset

    full = load_dataset("fashion-mnist")
    ds = load_dataset("fashion-mnist")
    for split, n in (("train", args.train), ("test", args.test)):
        ds.images[split], ds.labels[split] = full.images[split][:n], full.labels[split][:n]
    cfg = TrainConfig(model="lenet5", epochs=args.epochs, debias_epochs=1, batch_size=args.batch_size,
                      seed=0, progress=False)
    res = train(cfg, dataset=ds)
    keep = ("phase", "epoch", "loss", "train_accuracy", "test_accuracy", "nnz")
    hist = [{k: r[k] for k in keep} for r in res.history]
    np.savez(args.child + ".npz", **res.model.state_dict())
    with open(args.child + ".json", "w") as f:
        json.dump({"device": repr(res.model.device), "history": hist}, f)


def compare(ref: dict, other: dict, w_ref, w_other) -> list[str]:
    """The tolerances ``other`` misses against ``ref``."""
    bad = []
    for a, b in zip(ref["history"], other["history"]):
        at = f"{a['phase']} epoch {a['epoch']}"
        if abs(b["loss"] - a["loss"]) > LOSS_REL * abs(a["loss"]):
            bad.append(f"{at}: loss {b['loss']:.5f} vs {a['loss']:.5f}")
        for key in ("train_accuracy", "test_accuracy"):
            if abs(b[key] - a[key]) > ACC_ABS:
                bad.append(f"{at}: {key} {b[key]:.4f} vs {a[key]:.4f}")
    num = sum(float(np.sum((w_other[k].astype(np.float64) - w_ref[k]) ** 2)) for k in w_ref.files)
    den = sum(float(np.sum(w_ref[k].astype(np.float64) ** 2)) for k in w_ref.files)
    dist = (num / den) ** 0.5
    if not dist <= WEIGHTS_REL:
        bad.append(f"weights differ by {dist:.4f} (relative L2)")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("specs", nargs="+", help="device specs; the first is the reference")
    p.add_argument("--train", type=int, default=4096, help="training images (default 4096)")
    p.add_argument("--test", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--epochs", type=int, default=1, help="sparse epochs (default 1)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_one(args)
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate(args.specs):
            out = os.path.join(tmp, str(i))
            env = dict(os.environ, PROXCL_DEVICE=spec)
            cmd = [sys.executable, __file__, spec, "--train", str(args.train), "--test", str(args.test),
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--child", out]
            subprocess.run(cmd, env=env, check=True)
            with open(out + ".json") as f:
                results.append((spec, json.load(f), np.load(out + ".npz")))
        spec0, ref, w_ref = results[0]
        failed = False
        for spec, res, w in results:
            print(f"{spec}: {res['device']}")
            for r in res["history"]:
                print(f"  {r['phase']:>7} {r['epoch']}: loss {r['loss']:.5f}  train {r['train_accuracy']:.4f}"
                      f"  test {r['test_accuracy']:.4f}  nnz {r['nnz']}")
            if spec != spec0:
                bad = compare(ref, res, w_ref, w)
                print(f"  against {spec0}: " + ("within the tolerances" if not bad else "; ".join(bad)))
                failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
