"""proxcl info: what a model file holds, layer by layer, and what the compression bought."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show the layers, nonzeros and bytes of a model file",
                       description="Validate a model file and show, per tensor, its kind (dense or csr), "
                                   "shape, nonzeros, density and the bytes it takes in the file; then "
                                   "totals: parameters, nonzeros, density, the parameter compression "
                                   "ratio, the file size, the size of the same model as dense float32, "
                                   "and the bytes compression ratio; then the device memory that "
                                   "inference needs at batch 1 and 256 (weights plus the largest live "
                                   "activations and the input batch), measured on the OpenCL device "
                                   "of --device.")
    p.add_argument("model", metavar="MODEL", help="model file written by proxcl train or proxcl.save")
    p.add_argument("--device", default=None,
                   help="OpenCL device that measures the inference memory (default $PROXCL_DEVICE or the "
                        "first GPU); without any, the table says so")
    p.add_argument("--json", action="store_true",
                   help='print JSON: {"layers": [{"name", "kind", "shape", "nnz", "density", "bytes"}], '
                        '"total": {"params", "nnz", "density", "params_ratio", "file_bytes", '
                        '"dense_bytes", "bytes_ratio"}, "inference_memory": {"device", "1": '
                        '{"weights", "activations", "input", "total"}, "256": {...}} or {"error"}}; '
                        'exit status 2 when the model the file describes cannot be built')
    p.set_defaults(func=run)


def _bytes(n: int) -> str:
    from ..memory import format_bytes
    return format_bytes(n)


def format_report(report: dict) -> str:
    """The table that `proxcl info` prints for a file_report() dict."""
    rows = [("layer", "kind", "shape", "nnz", "density", "bytes")]
    for layer in report["layers"]:
        rows.append((layer["name"], layer["kind"], "x".join(map(str, layer["shape"])) or "scalar",
                     f"{layer['nnz']:,}", f"{layer['density'] * 100:.2f} %", f"{layer['bytes']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    align = ["<", "<", "<", ">", ">", ">"]
    lines = ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    t = report["total"]
    ratio = f"{t['params_ratio']:.1f}x" if t["params_ratio"] is not None else "inf (no nonzeros)"
    lines += ["",
              f"parameters   {t['params']:,}",
              f"nonzeros     {t['nnz']:,} ({t['density'] * 100:.2f} %, biases included), {ratio} fewer than dense",
              f"file         {t['file_bytes']:,} bytes ({_bytes(t['file_bytes'])}, header included)",
              f"dense fp32   {t['dense_bytes']:,} bytes ({_bytes(t['dense_bytes'])})",
              f"compression  {_ratio(t['bytes_ratio'])} than dense float32"]
    mem = report.get("inference_memory")
    if mem is not None:
        lines.append("")
        if "error" in mem:
            lines.append(f"inference    device memory not measured: {mem['error']}")
        for batch in INFERENCE_BATCHES:
            m = mem.get(str(batch))
            if m:
                lines.append(f"inference    batch {batch:>3}: {_bytes(m['total'])} of device memory "
                             f"(weights {_bytes(m['weights'])}, activations {_bytes(m['activations'])}, "
                             f"input {_bytes(m['input'])})")
    return "\n".join(lines)


def _ratio(r: float) -> str:
    """dense bytes / file bytes as a reader says it: '28.0x smaller', or '1.5x larger' below 1."""
    return f"{r:.1f}x smaller" if r >= 1 else f"{1 / r:.1f}x larger"


INFERENCE_BATCHES = (1, 256)


def inference_memory(path, device: str | None = None) -> dict:
    """The device memory inference needs at batch 1 and 256 (Model.inference_memory), measured
    on a fresh device that holds only this model; {"error": why} without an OpenCL device or
    when the file's model cannot be built."""
    from ..modelfile import ModelFileError, load
    from ..runtime import Device, DeviceError
    try:
        dev = Device(device)
    except DeviceError as e:
        if device is not None:      # a device asked for by name that is not there
            raise
        return {"error": str(e).strip().splitlines()[0]}
    try:
        model = load(path, device=dev)
    except ModelFileError as e:
        return {"error": str(e).strip().splitlines()[0], "unbuildable": True}
    out = {"device": f"{dev.platform_name} | {dev.name}"}
    for batch in INFERENCE_BATCHES:
        out[str(batch)] = model.inference_memory(batch)
    return out


def run(args) -> int:
    from ..modelfile import file_report
    report = file_report(args.model)
    report["inference_memory"] = mem = inference_memory(args.model, args.device)
    unbuildable = mem.pop("unbuildable", False)    # a file that reads, describing no buildable model
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    if unbuildable:
        print(f"proxcl: error: {mem['error']}", file=sys.stderr)
        return 2
    return 0
