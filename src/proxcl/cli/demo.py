"""proxcl demo: the whole idea in one command on Fashion-MNIST with LeNet-300-100.

Trains the dense reference (for as many epochs as the compressed run, sparse phase and debiasing
together) and the compressed model (reweighted-l1 Prox-SGD down to a target density, CSR switch,
debiasing), writes the model file, its log and the report, and prints what was reached."""

from __future__ import annotations

import os

from .train import add_output_arguments, data_help

# The demo's settings: proxcl train's defaults, sized to finish in a few minutes on 2 CPU cores
# with PoCL (docs/RESULTS.md).
DEMO = {"model": "lenet300", "target_density": 0.02, "epochs": 20, "debias_epochs": 10}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a compressed LeNet-300-100 on Fashion-MNIST and report",
                       description="Train dense LeNet-300-100 (the reference, for as many epochs as "
                                   "the compressed run in all) and a compressed one (reweighted-l1 "
                                   "Prox-SGD down to --target-density, CSR switch, debiasing) on "
                                   "Fashion-MNIST; write the model file, the log and the "
                                   "report PNGs; print the info table and both accuracies.")
    p.add_argument("--out-dir", default="runs/demo",
                   help="where the files go; created if missing (default %(default)s)")
    p.add_argument("--data", default="fashion-mnist", help=data_help())
    p.add_argument("--device", default=None, help="OpenCL device (default $PROXCL_DEVICE or the first GPU)")
    p.add_argument("--epochs", type=int, default=DEMO["epochs"], help="(default %(default)s)")
    p.add_argument("--debias-epochs", type=int, default=DEMO["debias_epochs"], help="(default %(default)s)")
    p.add_argument("--target-density", type=float, default=DEMO["target_density"],
                   help="share of the weights left nonzero (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    add_output_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_dataset
    from ..fileio import check_writable_dir
    from ..modelfile import file_report, read_model_file
    from ..report import read_log, write_report
    from ..runtime import Device
    from ..training import TrainConfig, train
    from .info import format_report
    from .train import output_settings

    common = dict(model=DEMO["model"], data=args.data, seed=args.seed, **output_settings(args))
    sparse_cfg = TrainConfig(target_density=args.target_density, epochs=args.epochs,
                             debias_epochs=args.debias_epochs, out=os.path.join(args.out_dir, "model.proxcl"),
                             log=os.path.join(args.out_dir, "train.jsonl"), **common)
    sparse_cfg.validate()
    check_writable_dir(args.out_dir, "--out-dir")
    ds = load_dataset(args.data, seed=args.seed)      # a bad --data or --device: an error before any output
    dev = Device(args.device)
    print(f"device: {dev.platform_name} | {dev.name}")
    print(f"data: {ds.name}, {ds.size('train')} training and {ds.size('test')} test images")
    total = args.epochs + args.debias_epochs
    out, log = sparse_cfg.out, sparse_cfg.log

    print(f"\n[1/2] dense reference: {DEMO['model']}, SGD with momentum, cosine schedule, {total} epochs")
    dense_log = os.path.join(args.out_dir, "dense.jsonl")
    dense = train(TrainConfig(method="dense", epochs=total, log=dense_log, **common), dataset=ds, device=dev)

    print(f"\n[2/2] compressed: reweighted-l1 Prox-SGD down to {args.target_density * 100:g} % of the "
          f"weights, {args.epochs} sparse + {args.debias_epochs} debiasing epochs")
    sparse = train(sparse_cfg, dataset=ds, device=dev)
    before = [r for r in sparse.history if r["phase"] == "sparse"]

    report_dir = os.path.join(args.out_dir, "report")
    _, tensors, _ = read_model_file(out)
    pngs = write_report(tensors, read_log(log), report_dir, reference=dense.history)

    print("\n" + format_report(file_report(out)))
    print(f"\ndense reference     test accuracy {dense.test_accuracy * 100:.2f} %  (100 % nonzero weights)")
    if before:
        print(f"sparse, before debiasing        {before[-1]['test_accuracy'] * 100:.2f} %")
    print(f"compressed          test accuracy {sparse.test_accuracy * 100:.2f} %  "
          f"({sparse.density * 100:.2f} % nonzero weights: {sparse.nnz:,} of {sparse.weights:,})")
    print(f"difference          {100 * (sparse.test_accuracy - dense.test_accuracy):+.2f} points")
    print(f"\nmodel file  {out}\nlog         {log} (dense reference: {dense_log})\n"
          f"report      {report_dir}/ ({len(pngs)} PNG files)")
    print(f"time        {dense.seconds + sparse.seconds:.0f} s of training")
    return 0
