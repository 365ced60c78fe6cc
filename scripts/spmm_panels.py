"""An experiment for the L2-bound SpMM cases (issue 11): csr_spmm with its rows kept in step.

csr_spmm re-reads a row of X from the L2 for every entry of W (4096x16384 x 2048 at 2 %: 11 GB
per product).  Rows of one work-group that share a column could take the second read from the
L1, but they drift apart: a row is at its p-th entry, whose column spreads as sqrt(p) around the
others'.  Here every row of a work-group stops at the end of each panel of PANEL columns of W
and waits at a barrier for the group's other rows, so that the group's reads of X stay within
one panel of X's rows (PANEL * LX * VEC * 4 bytes: 128 KB for 256 rows of 128 columns).  The
price: the barrier, a column test per entry, and the work-items idling while the group's
fullest row of the panel finishes.

Device time of each (LX, LY, VEC, PANEL) setting against proxcl's csr_spmm on the five bar cases,
with every result checked against csr_spmm's.  Column slices of work-groups as spmm_swizzle=1.

    python scripts/spmm_panels.py [DEVICE-SPEC] [--check]

--check: two small products instead (a correctness run, for a CPU device).
"""
import itertools, sys
import numpy as np
import pyopencl as cl
import proxcl
from proxcl.bench.timing import time_opencl
from proxcl.sparse_init import random_support

SOURCE = r"""
#define floatV float4
__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void spmm_panels(const int m, const int n, const int k,
                 __global const int *restrict Ap, __global const int *restrict Aj,
                 __global const float *restrict Ax, __global const float *restrict X,
                 __global float *restrict Y)
{
    /* launch-order group L: column slice s, row group rg (all row groups of a slice first) */
    const int g1 = get_num_groups(1);
    const int L = get_group_id(1) * get_num_groups(0) + get_group_id(0);
    const int s = L / g1, rg = L - s * g1;
    const int c0 = (s * LX + get_local_id(0)) * 4;
    const int i = rg * LY + get_local_id(1);
    const int live = i < m;                     /* n is a whole number of column slices */
    int p = live ? Ap[i] : 0;
    const int end = live ? Ap[i + 1] : 0;
    floatV acc = (floatV)(0.0f);
    for (int k1 = PANEL; ; k1 += PANEL) {       /* every work-item meets every barrier */
        for (; p < end; ++p) {
            const int j = Aj[p];
            if (j >= k1) break;
            acc += (floatV)(Ax[p]) * *(__global const floatV *)(X + (size_t)j * n + c0);
        }
        if (k1 >= k) break;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (live) *(__global floatV *)(Y + (size_t)i * n + c0) = acc;
}
"""

args = [a for a in sys.argv[1:] if a != "--check"]
dev = proxcl.Device(args[0] if args else None, profile=True)
print(dev, dev.tuning.spmm_local, dev.tuning.spmm_wide_vec, dev.tuning.spmm_swizzle)
max_wg = dev.cl_device.max_work_group_size
rng = np.random.default_rng(0)
CASES = [((4096, 4096), 1024, 0.01), ((4096, 4096), 1024, 0.05), ((16384, 4096), 256, 0.01),
         ((4096, 16384), 2048, 0.02), ((8192, 8192), 64, 0.01)]
if "--check" in sys.argv:
    CASES = [((300, 700), 256, 0.05), ((513, 2000), 64, 0.02)]
SETTINGS = [(lx, ly, panel) for (lx, ly), panel in itertools.product(
    [(32, 8), (32, 16), (32, 32), (16, 16), (16, 32), (16, 64), (8, 64)], [256, 1024, 4096])
    if lx * ly <= max_wg]
programs = {}
for (m, k), n, d in CASES:
    ip, ind = random_support(rng, (m, k), int(round(d * m * k)))
    vals = rng.standard_normal(ind.size).astype(np.float32)
    w = proxcl.CSRMatrix.from_arrays(ip, ind, vals, (m, k), dev)
    x = dev.to_device(rng.standard_normal((k, n)).astype(np.float32))
    y = dev.empty((m, n))
    w.matmul(x, out=y)
    ref = y.get()
    base = time_opencl(dev, lambda: w.matmul(x, out=y), repeat=10, budget_s=0.2).device_ms
    ap, aj = dev.to_device(ip, np.int32), dev.to_device(ind, np.int32)
    ax = dev.to_device(vals)
    res = []
    for lx, ly, panel in SETTINGS:
        if n % (lx * 4):
            continue
        key = (lx, ly, panel)
        if key not in programs:
            programs[key] = cl.Program(dev.context, SOURCE).build(
                options=f"-DLX={lx} -DLY={ly} -DPANEL={panel} -cl-std=CL1.2 -cl-mad-enable").spmm_panels
        kern = programs[key]
        z = dev.empty((m, n))

        def run():
            dev.launch(kern, (n // 4, m), (lx, ly), m, n, k, ap, aj, ax, x, z)
        run()
        err = float(np.max(np.abs(z.get() - ref)) / (np.max(np.abs(ref)) or 1.0))
        t = time_opencl(dev, run, repeat=10, budget_s=0.2).device_ms
        res.append((t, key, err))
    res.sort()
    print(f"{m}x{k} x {n} at {d * 100:g} %: csr_spmm {base:.4f} ms; panels " +
          "; ".join(f"{t:.4f} ({lx}, {ly}) P{panel}{'' if err < 1e-5 else f' WRONG {err:.1e}'}"
                    for t, (lx, ly, panel), err in res[:5]) +
          f" ({sum(r[2] >= 1e-5 for r in res)} of {len(res)} settings wrong)", flush=True)
