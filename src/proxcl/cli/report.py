"""proxcl report: PNG figures of a training run and of a model's sparsity."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write PNG figures of a training run",
                       description="Write loss, accuracy and density per epoch, nonzeros per layer and a "
                                   "spy plot of each weight matrix as PNG files into --out. Warns when "
                                   "the log does not end with the model's nonzero counts (a log of "
                                   "another run).")
    p.add_argument("model", help="model file written by proxcl train")
    p.add_argument("--log", required=True, help="the JSON-lines log of that run (proxcl train --log)")
    p.add_argument("--out", required=True, help="folder for the PNG files (created if missing)")
    p.add_argument("--reference", default=None, metavar="LOG",
                   help="the log of a dense reference run, drawn in the loss and accuracy figures "
                        "(proxcl demo writes one)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..fileio import check_writable_dir
    from ..modelfile import read_model_file
    from ..report import log_mismatch, read_log, write_report
    _, tensors, _ = read_model_file(args.model)
    records = read_log(args.log)
    reference = read_log(args.reference) if args.reference else None
    check_writable_dir(args.out, "--out")
    why = log_mismatch(tensors, records)
    if why:
        print(f"proxcl: warning: {args.log} does not look like the log of {args.model}: {why}", file=sys.stderr)
    for path in write_report(tensors, records, args.out, reference):
        print(path)
    return 0
