"""csr_spmm_tile (the GPU form that stages X in local memory for a block of rows) against csr_spmm
on large layers: the device time of W @ X and W.T @ D for each tile configuration, and whether
both forms give the same elements (they add the same entries in the same order).

    python scripts/spmm_tile.py [DEVICE-SPEC] [--quick] [--json FILE]

The tuning table leaves the tiled form off (``spmm_tile`` (0, 0, 0)) until it is measured on a
GPU; here each configuration runs with ``spmm_tile_reuse_pct`` 0, so that it runs wherever whole
column groups span the batch.  ``reuse`` is LY*RPI*density: the entries a block's rows take per
staged row of X, which ``spmm_tile_reuse_pct`` / 100 is the threshold of.  --quick: only the
large-layer bar cases of ``proxcl bench kernels --large`` with at least 128 columns.
"""
import dataclasses
import json
import sys

import numpy as np

import proxcl
from proxcl.bench.timing import time_opencl
from proxcl.sparse_init import random_support

# (LY, RPI, TK): rows per block LY * RPI, X rows per step TK (local memory TK * LX * VEC * 4 bytes)
CONFIGS = [(8, 16, 32), (8, 8, 32), (8, 16, 16), (8, 16, 64), (16, 8, 32), (4, 32, 32), (16, 16, 32)]
BAR = [((4096, 4096), 1024, 0.01), ((4096, 4096), 1024, 0.05), ((16384, 4096), 256, 0.01),
       ((4096, 16384), 2048, 0.02)]
CASES = BAR + [((4096, 16384), 2048, d) for d in (0.005, 0.01, 0.05, 0.1)] + \
    [((4096, 4096), 1024, d) for d in (0.005, 0.02, 0.1)]


def device_ms(dev, fn) -> float:
    return time_opencl(dev, fn, repeat=10, budget_s=0.3).device_ms


def kernels_of(dev, fn) -> set:
    with dev.record_launches() as launches:
        fn()
    return {name for name, _ in launches}


def main() -> int:
    args = sys.argv[1:]
    out_json = args[args.index("--json") + 1] if "--json" in args else None
    spec = next((a for i, a in enumerate(args) if not a.startswith("--")
                 and (i == 0 or args[i - 1] != "--json")), None)
    dev = proxcl.Device(spec, profile=True)
    base = dev.tuning
    print(f"device: {dev.platform_name} | {dev.name} ({dev.compute_units} compute units)")
    print("| W | n | dens | op | csr_spmm ms | best tile ms | LY, RPI, TK | reuse | speed-up |")
    print("|---|---:|---:|---|---:|---:|---|---:|---:|")
    rng = np.random.default_rng(0)
    rows = []
    for (m, k), n, dens in (BAR if "--quick" in args else CASES):
        indptr, indices = random_support(rng, (m, k), round(dens * m * k))
        data = rng.standard_normal(indices.size).astype(np.float32)
        w = proxcl.CSRMatrix.from_arrays(indptr, indices, data, (m, k), dev)
        xd = dev.to_device(rng.standard_normal((k, n)).astype(np.float32))
        dd = dev.to_device(rng.standard_normal((m, n)).astype(np.float32))
        y, z = dev.empty((m, n)), dev.empty((k, n))
        for op, call, res in (("W @ X", lambda: w.matmul(xd, out=y), y),
                              ("W.T @ D", lambda: w.matmul_t(dd, out=z), z)):
            dev.tuning = base
            assert "csr_spmm_tile" not in kernels_of(dev, call)
            ref_ms, ref = device_ms(dev, call), res.get()
            row = {"m": m, "k": k, "n": n, "density": dens, "op": op, "csr_spmm_ms": ref_ms, "tile": []}
            for cfg in CONFIGS:
                dev.tuning = dataclasses.replace(base, spmm_tile=cfg, spmm_tile_reuse_pct=0)
                if "csr_spmm_tile" not in kernels_of(dev, call):
                    continue          # the batch is no whole number of column groups, or too long a loop
                same = bool(np.array_equal(res.get(), ref))
                row["tile"].append({"config": cfg, "ms": device_ms(dev, call), "same": same})
            rows.append(row)
            if row["tile"]:
                best = min(row["tile"], key=lambda t: t["ms"])
                ly, rpi, _ = best["config"]
                reuse = ly * rpi * w.nnz / (m * k)
                print(f"| {m}x{k} | {n} | {dens * 100:g}% | {op} | {ref_ms:.3f} | {best['ms']:.3f} | "
                      f"{', '.join(map(str, best['config']))} | {reuse:.2f} | {ref_ms / best['ms']:.2f}x |",
                      flush=True)
                if not all(t["same"] for t in row["tile"]):
                    print("  the tiled form's elements differ from csr_spmm's", flush=True)
    dev.tuning = base
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"device": dev.name, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
