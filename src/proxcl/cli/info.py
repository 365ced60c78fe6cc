"""proxcl info: what a model file holds, layer by layer, and what the compression bought."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show the layers, nonzeros and bytes of a model file",
                       description="Validate a model file and show, per tensor, its kind (dense or csr), "
                                   "shape, nonzeros, density and the bytes it takes in the file; then "
                                   "totals: parameters, nonzeros, density, the parameter compression "
                                   "ratio, the file size, the size of the same model as dense float32, "
                                   "and the bytes compression ratio.")
    p.add_argument("model", metavar="MODEL", help="model file written by proxcl train or proxcl.save")
    p.add_argument("--json", action="store_true",
                   help='print JSON: {"layers": [{"name", "kind", "shape", "nnz", "density", "bytes"}], '
                        '"total": {"params", "nnz", "density", "params_ratio", "file_bytes", '
                        '"dense_bytes", "bytes_ratio"}}')
    p.set_defaults(func=run)


def _bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


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
              f"nonzeros     {t['nnz']:,} ({t['density'] * 100:.2f} %), {ratio} fewer than dense",
              f"file         {t['file_bytes']:,} bytes ({_bytes(t['file_bytes'])}, header included)",
              f"dense fp32   {t['dense_bytes']:,} bytes ({_bytes(t['dense_bytes'])})",
              f"compression  {_ratio(t['bytes_ratio'])} than dense float32"]
    return "\n".join(lines)


def _ratio(r: float) -> str:
    """dense bytes / file bytes as a reader says it: '28.0x smaller', or '1.5x larger' below 1."""
    return f"{r:.1f}x smaller" if r >= 1 else f"{1 / r:.1f}x larger"


def run(args) -> int:
    from ..modelfile import file_report
    report = file_report(args.model)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
