"""proxcl report: PNG figures of a training run and of a model's sparsity."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write PNG figures of a training run",
                       description="Write loss, accuracy and density per epoch, nonzeros per layer and a "
                                   "spy plot of each weight matrix as PNG files into --out.")
    p.add_argument("model", help="model file written by proxcl train")
    p.add_argument("--log", required=True, help="the JSON-lines log of that run (proxcl train --log)")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..modelfile import read_model_file
    from ..report import read_log, write_report
    _, tensors, _ = read_model_file(args.model)
    records = read_log(args.log)
    for path in write_report(tensors, records, args.out):
        print(path)
    return 0
