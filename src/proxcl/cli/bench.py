"""proxcl bench: the kernel benchmark (``kernels``) and the model benchmark (``model``)."""

from __future__ import annotations

import argparse
import importlib

from . import CLIError
from ..errors import InputError


def _model_module():
    try:
        return importlib.import_module("proxcl.bench.model")
    except ModuleNotFoundError as e:
        if e.name == "proxcl.bench.model":
            return None
        raise


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark kernels or models against their peers",
                       description="Benchmarks that compare proxcl with its peers in one run.")
    bsub = p.add_subparsers(dest="bench", metavar="WHAT")

    from ..bench.kernels import legend
    k = bsub.add_parser("kernels", help="CSR product and dense GEMM against numpy, scipy, torch",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Y = W X for W of several shapes and densities and X of 64, 256 and "
                                    "1024 columns:\nproxcl's CSR SpMM and dense GEMM against numpy dense, "
                                    "scipy CSR, torch dense and CSR (CPU device)\nor torch CUDA dense and "
                                    "CSR (GPU device). Prints one markdown table, explained under it:\n\n"
                                    + legend() + "\n\nWith --large, a second benchmark with its own table and legend.")
    k.add_argument("--device", default=None, help="OpenCL device spec (default: $PROXCL_DEVICE)")
    k.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    k.add_argument("--repeat", type=int, default=None,
                   help="most timed repetitions per measurement (fewer when one is slow; default 30; "
                        "not with --large, whose repetitions follow a time budget)")
    k.add_argument("--quick", action="store_true", help="two shapes, one batch width, two densities "
                   "(with --large: only the five cases the large-layer bars of docs/PERFORMANCE.md are set on)")
    k.add_argument("--large", action="store_true",
                   help="a second benchmark instead: layers of 4096-16384 rows at 0.5-10 %% density and "
                        "batch 64-2048, with the transposed SpMM, SDDMM and dense GEMM as well, against torch "
                        "on the same device kind, and floors that name their bound (DRAM or cache); "
                        "minutes on a GPU, longer on a CPU")
    k.set_defaults(func=run_kernels)

    mod = _model_module()
    m = bsub.add_parser("model", help="train/inference speed of whole models",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Whole networks (LeNet-300-100, LeNet-5 by default), dense and CSR, "
                                    "against PyTorch: one\nmarkdown table, one row per model and weight "
                                    "form, explained under it:\n\n" + (mod.LEGEND if mod else ""))
    if mod is not None:
        mod.add_arguments(m)
    m.set_defaults(func=run_model)

    mem = bsub.add_parser("memory", help="device bytes of training per category, dense and CSR",
                          description="Training memory of lenet300 and lenet5, dense and CSR at 5, 2 and "
                                      "1 % density: the bytes per category (weights, gradients, "
                                      "optimizer state, activations and workspaces, data), the peaks, "
                                      "and the activations per layer.")
    from ..bench import memory
    memory.add_arguments(mem)
    mem.set_defaults(func=run_memory)
    p.set_defaults(func=lambda args: _no_what(p))


def _no_what(p) -> int:
    p.print_help()
    return 2


def run_kernels(args) -> int:
    from ..bench import kernels
    from ..bench.timing import finish
    from ..fileio import check_writable
    if args.large and args.repeat is not None:
        raise CLIError("--repeat does not apply with --large (its repetitions follow a time budget)")
    args.repeat = 30 if args.repeat is None else args.repeat
    if args.repeat < 1:
        raise InputError("--repeat must be at least 1")
    check_writable(args.json, "--json")
    if args.large:
        from ..bench import large
        result = large.run(args.device, quick=args.quick, log=lambda line: print(line, flush=True))
        finish(result, args.json)
        return 0
    result = kernels.run(args.device, repeat=args.repeat, quick=args.quick,
                         log=lambda line: print(line, flush=True))
    finish(result, args.json)
    return 0


def run_memory(args) -> int:
    from ..bench import memory
    from ..fileio import check_writable
    check_writable(args.json, "--json")
    return memory.run(args)


def run_model(args) -> int:
    mod = _model_module()
    if mod is None:
        raise CLIError("the model benchmark is not available in this installation (no proxcl.bench.model)")
    from ..fileio import check_writable
    check_writable(getattr(args, "json", None), "--json")
    return int(mod.run(args) or 0)
