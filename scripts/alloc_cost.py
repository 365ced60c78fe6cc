"""What allocating a result costs: `W @ X` (a new result array per call, from the device's
caching pool) against `W.matmul(X, out=Y)` (one array reused), 50 calls enqueued back to back and
waited for once, per call; and the driver allocations the pools made during the timed calls.

    python scripts/alloc_cost.py [DEVICE-SPEC] [--large]

Without --large: the bar shape of docs/PERFORMANCE.md (500x800 at 5 %, X 800x256).  With --large
also the shapes of issue 11 (4096x4096 x 4096x1024 at 1 and 5 %, 16384x4096 x 4096x256 at 1 %,
4096x16384 x 16384x2048 at 2 %, 8192x8192 x 8192x64 at 1 %).
"""
import sys

import numpy as np

import proxcl
from proxcl.bench.timing import time_pipelined
from proxcl.sparse_init import random_support

SHAPES = [((500, 800), 256, 0.05)]
LARGE = [((4096, 4096), 1024, 0.01), ((4096, 4096), 1024, 0.05), ((16384, 4096), 256, 0.01),
         ((4096, 16384), 2048, 0.02), ((8192, 8192), 64, 0.01)]
CALLS = 50


def per_call_ms(dev, fn) -> float:
    return time_pipelined(dev, fn, calls=CALLS, repeat=7)


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    dev = proxcl.Device(args[0] if args else None)
    shapes = SHAPES + (LARGE if "--large" in sys.argv else [])
    rng = np.random.default_rng(0)
    print(f"{dev}; {CALLS} calls enqueued back to back, median of 7 runs, ms per call")
    print("| W x X, density | W @ X | out= | ratio | driver allocations during W @ X |")
    print("|---|---:|---:|---:|---:|")
    for (m, k), n, d in shapes:
        indptr, indices = random_support(rng, (m, k), int(round(d * m * k)))
        w = proxcl.CSRMatrix.from_arrays(indptr, indices, rng.standard_normal(indices.size).astype(np.float32),
                                         (m, k), dev)
        x = dev.to_device(rng.standard_normal((k, n)).astype(np.float32))
        y = dev.empty((m, n))
        fresh = per_call_ms(dev, lambda: w @ x)
        before = dev.memory.driver_allocations
        fresh = min(fresh, per_call_ms(dev, lambda: w @ x))
        allocs = dev.memory.driver_allocations - before
        reuse = per_call_ms(dev, lambda: w.matmul(x, out=y))
        print(f"| {m}x{k} x {k}x{n}, {d * 100:g} % | {fresh:.3f} | {reuse:.3f} | {fresh / reuse:.2f} | {allocs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
