"""csr_spmm's launch settings on the five large-layer bar cases: device time of `W @ X` for each
local size, wider-vector width, column-slice width (spmm_local, spmm_wide_vec, spmm_swizzle of the
GPU form) and unrolling of the entry loop (UNROLL), the four fastest per case beside the tuning
table's own.

    python scripts/spmm_sweep.py [DEVICE-SPEC]
"""
import dataclasses, itertools, sys
import numpy as np
import proxcl
from proxcl.bench.timing import time_opencl
from proxcl.sparse_init import random_support
dev = proxcl.Device(sys.argv[1] if len(sys.argv) > 1 else None, profile=True)
base = dev.tuning
print(dev, base.spmm_local, base.spmm_wide_vec, base.spmm_swizzle)
rng = np.random.default_rng(0)
CASES = [((4096, 4096), 1024, 0.01), ((4096, 4096), 1024, 0.05), ((16384, 4096), 256, 0.01),
         ((4096, 16384), 2048, 0.02), ((8192, 8192), 64, 0.01)]
VARIANTS = [dict(spmm_local=l, spmm_wide_vec=v, spmm_swizzle=s, unroll=u)
            for l, v, s, u in itertools.product([(32, 8), (32, 4), (32, 16), (32, 32), (64, 4), (16, 16), (16, 32), (8, 32)],
                                               [4, 2], [1, 2, 4], [4])]
VARIANTS += [dict(spmm_local=l, spmm_wide_vec=v, spmm_swizzle=s, unroll=u)
             for l, v, s, u in itertools.product([(32, 8), (32, 16), (16, 32)], [4, 2], [1, 2], [2, 8])]
# csr_spmm's UNROLL (4 in the kernel file) through the kernel lookup
UNROLL = [4]
kernel = dev.kernel
def kernel_with_unroll(filename, name, **defines):
    if name == "csr_spmm":
        defines["UNROLL"] = UNROLL[0]
    return kernel(filename, name, **defines)
dev.kernel = kernel_with_unroll
for (m, k), n, d in CASES:
    ip, ind = random_support(rng, (m, k), int(round(d * m * k)))
    w = proxcl.CSRMatrix.from_arrays(ip, ind, rng.standard_normal(ind.size).astype(np.float32), (m, k), dev)
    x = dev.to_device(rng.standard_normal((k, n)).astype(np.float32)); y = dev.empty((m, n))
    dev.tuning = base
    w.matmul(x, out=y); ref = y.get()
    res = []
    for v in VARIANTS:
        dev.tuning = dataclasses.replace(base, **{k: a for k, a in v.items() if k != "unroll"})
        UNROLL[0] = v["unroll"]
        w.matmul(x, out=y)
        ok = np.allclose(y.get(), ref, rtol=1e-4, atol=1e-4)
        res.append((time_opencl(dev, lambda: w.matmul(x, out=y), repeat=10, budget_s=0.2).device_ms, v, ok))
    dev.tuning, UNROLL[0] = base, 4
    b = time_opencl(dev, lambda: w.matmul(x, out=y), repeat=10, budget_s=0.2).device_ms
    res.sort(key=lambda r: r[0])
    print(f"{m}x{k} x {n} at {d*100:g} %: current {b:.4f} ms; best " +
          "; ".join(f"{r[0]:.4f} {r[1]['spmm_local']} v{r[1]['spmm_wide_vec']} s{r[1]['spmm_swizzle']} u{r[1]['unroll']}{'' if r[2] else ' WRONG'}" for r in res[:4]), flush=True)
