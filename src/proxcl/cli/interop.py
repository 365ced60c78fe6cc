"""proxcl export / proxcl import: a saved PyTorch state_dict plus a model spec <-> a model file
(needs PyTorch: pip install 'proxcl[torch]')."""

from __future__ import annotations

SPEC_HELP = ("the architecture as a proxcl model spec: a built-in name (lenet300, lenet5, convnet-small), "
             "JSON text or a JSON file, as `proxcl train --model` takes it; the state_dict's keys are its "
             "parameter names (conv1.weight, fc1.bias, ...)")


def add_parser(sub) -> None:
    e = sub.add_parser("export", help="write a PyTorch state_dict as a proxcl model file",
                       description="Write the weights of a saved PyTorch state_dict (torch.save(model."
                                   "state_dict(), path)) as a proxcl model file, taking the zeros as they "
                                   "are (torch.nn.utils.prune's weight_orig and weight_mask are multiplied; "
                                   "a DistributedDataParallel 'module.' prefix is dropped) and storing a "
                                   "weight as CSR where that is smaller than dense.")
    e.add_argument("state", metavar="STATE", help="state_dict file written by torch.save")
    e.add_argument("--spec", required=True, help=SPEC_HELP)
    e.add_argument("--out", required=True, help="model file to write")
    norm = e.add_mutually_exclusive_group()
    norm.add_argument("--data", help="store this data set's input normalisation and class names (e.g. "
                                     "fashion-mnist), which `proxcl predict` needs for raw images")
    norm.add_argument("--normalisation", metavar="MEAN,STD",
                      help="store this input normalisation of the raw 0..255 pixels")
    e.add_argument("--half", action="store_true", help="store values as float16")
    e.set_defaults(func=run_export)

    i = sub.add_parser("import", help="write a proxcl model file as a PyTorch state_dict and spec",
                       description="Write the weights of a model file as a PyTorch state_dict "
                                   "(torch.save; CSR weights made dense) and, with --spec-out, its model "
                                   "spec as JSON; proxcl.torch.module_from_spec(spec) builds the module "
                                   "that takes the state_dict.")
    i.add_argument("model", metavar="MODEL", help="model file")
    i.add_argument("--out", required=True, help="state_dict file to write")
    i.add_argument("--spec-out", help="JSON file to write the model spec to")
    i.set_defaults(func=run_import)


def _torch_files():
    from ..errors import InputError
    try:
        from ..torch import files
    except ImportError:
        raise InputError("this command needs PyTorch: pip install 'proxcl[torch]'") from None
    return files


def _normalisation(text: str) -> dict:
    from ..errors import InputError
    try:
        mean, std = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--normalisation takes MEAN,STD, got {text!r}") from None
    return {"mean": mean, "std": std}


def run_export(args) -> int:
    from ..fileio import check_writable
    check_writable(args.out, "--out")
    files = _torch_files()
    kw = {"half": args.half}
    if args.data:
        from ..data import load_dataset
        ds = load_dataset(args.data)
        kw.update(normalisation=ds.normalisation, class_names=ds.class_names)
    elif args.normalisation:
        kw["normalisation"] = _normalisation(args.normalisation)
    state = files.read_state_dict(args.state)
    files.export_state_dict(state, args.spec, args.out, **kw)
    print(f"wrote {args.out}")
    return 0


def run_import(args) -> int:
    import os

    from ..fileio import check_writable
    from . import CLIError
    check_writable(args.out, "--out")
    check_writable(args.spec_out, "--spec-out")
    if args.spec_out is not None and os.path.realpath(args.out) == os.path.realpath(args.spec_out):
        raise CLIError(f"--out and --spec-out name the same file: {args.spec_out}")
    files = _torch_files()
    files.import_model_file(args.model, args.out, args.spec_out)
    print(f"wrote {args.out}" + (f" and {args.spec_out}" if args.spec_out else ""))
    return 0
