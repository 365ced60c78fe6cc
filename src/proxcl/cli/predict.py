"""proxcl predict: classify images with a model file."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify PNG, .npy or IDX images",
                       description="Print the predicted class and its probability for every image. "
                                   "Images are raw pixels (0..255) of the model's input size; they are "
                                   "normalised as in training (statistics stored in the model file).")
    p.add_argument("model", help="model file written by proxcl train")
    p.add_argument("files", nargs="+", help="PNG, .npy or IDX image files")
    p.add_argument("--device", default=None, help="OpenCL device (default $PROXCL_DEVICE or the first GPU)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=run)


def stored_inputs(path: str, meta: dict) -> tuple[dict, list | None]:
    """(normalisation, class names) from a model file's metadata, checked."""
    from ..data import check_normalisation
    from ..modelfile import ModelFileError
    norm = meta.get("normalisation")
    if not norm:
        raise ModelFileError(f"{path} stores no input normalisation (not written by proxcl train)")
    try:
        mean, std = check_normalisation(norm)
    except ValueError as e:
        raise ModelFileError(f"{path}: stored input {e}") from None
    names = meta.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        names = None
    return {"mean": mean, "std": std}, names


def run(args) -> int:
    from ..modelfile import load
    from ..predict import predict_files
    from ..runtime import Device
    model, meta = load(args.model, device=Device(args.device), with_metadata=True)
    warn = lambda line: print(f"proxcl: warning: {line}", file=sys.stderr)   # noqa: E731
    for r in predict_files(model, args.files, *stored_inputs(args.model, meta), warn=warn):
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['file']}[{r['index']}]: {r['label']} (class {r['class']}, p = {r['probability']:.3f})")
    return 0
