"""proxcl eval: accuracy, loss and per-class accuracy of a model file on a data set's test split."""

from __future__ import annotations

import json
import sys

from .train import data_help


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model file on a test set",
                       description="Accuracy, mean loss and per-class accuracy on the test split. "
                                   "Warns when the model file records training on another data set.")
    p.add_argument("model", help="model file written by proxcl train")
    p.add_argument("--data", default="fashion-mnist", help=data_help())
    p.add_argument("--device", default=None, help="OpenCL device (default $PROXCL_DEVICE or the first GPU)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--json", action="store_true", help='print {"accuracy", "loss", "n", "per_class"}')
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_dataset, same_source
    from ..modelfile import load
    from ..runtime import Device
    from ..training import evaluate
    model, meta = load(args.model, device=Device(args.device), with_metadata=True)
    ds = load_dataset(args.data, normalisation=meta.get("normalisation"))
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    trained_on = config.get("data")
    if isinstance(trained_on, str) and not same_source(trained_on, args.data):
        print(f"proxcl: warning: {args.model} was trained on {trained_on}, evaluating it on {ds.name}", file=sys.stderr)
    res = evaluate(model, ds, "test", batch_size=args.batch_size)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"accuracy {res['accuracy'] * 100:.2f} %   loss {res['loss']:.4f}   n {res['n']}")
    names = getattr(ds, "class_names", None) or [str(i) for i in range(len(res["per_class"]))]
    for name, acc in zip(names, res["per_class"]):
        print(f"  {name:<14} {'-' if acc is None else f'{acc * 100:6.2f} %'}")
    return 0
