"""What a kernel enqueue costs the host, and whether the event pyopencl makes for every launch is
the cost: pyopencl's enqueue against clEnqueueNDRangeKernel called through ctypes with and without
an event, then `W @ X` (50 calls back to back) and training steps (batch 128, alternated) with
Device.launch's enqueue with and without an event (the tuning's launch_events).

    python scripts/enqueue_cost.py [DEVICE-SPEC]

The ctypes calls go to the OpenCL library pyopencl loaded (its bundled ICD loader).  With CUDA,
torch's CSR product (cuSPARSE) is timed beside `W @ X`.
"""
import ctypes, sys, time
import numpy as np
import pyopencl as cl
import proxcl
from proxcl import runtime

dev = proxcl.Device(sys.argv[1] if len(sys.argv) > 1 else None)
print(dev)
prg = cl.Program(dev.context, "__kernel void k(__global float *a, int n) { int i = get_global_id(0); if (i < n) a[i] += 1.0f; }").build()
k = prg.k
buf = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE, 4 * 4096)
k.set_args(buf, np.int32(4096))
q = dev.queue
enq = runtime._cl_enqueue_nd_range_kernel()
if enq is None:
    sys.exit("enqueue_cost: the OpenCL library pyopencl loaded was not found (/proc/self/maps)")
rel = ctypes.CDLL(runtime._opencl_library()).clReleaseEvent; rel.argtypes = [ctypes.c_void_p]
qp, kp = q.int_ptr, k.int_ptr
g = (ctypes.c_size_t * 1)(4096); l = (ctypes.c_size_t * 1)(64)
ev = ctypes.c_void_p()
evp = ctypes.byref(ev)

def py():
    cl.enqueue_nd_range_kernel(q, k, (4096,), (64,))
def ct():
    enq(qp, kp, 1, None, g, l, 0, None, None)
def ct_ev():
    enq(qp, kp, 1, None, g, l, 0, None, evp)
    rel(ev)
def launch():
    dev.launch(k, (4096,), (64,), buf, 4096)
for name, fn in (("pyopencl enqueue", py), ("ctypes, no event", ct), ("ctypes, event", ct_ev),
                 ("Device.launch", launch), ("pyopencl enqueue", py), ("ctypes, no event", ct)):
    best = 1e9
    for _ in range(5):
        q.finish()
        t = time.perf_counter()
        for _ in range(2000):
            fn()
        dt = time.perf_counter() - t
        q.finish()
        best = min(best, dt / 2000 * 1e6)
    print(f"{name:20s} {best:6.2f} us per enqueue (best of 5 x 2000, host time only)", flush=True)

# W @ X through the public API, 50 calls back to back, with pyopencl's enqueue (an event per launch)
# and with Device.launch's enqueue without an event (the tuning's launch_events off)
import dataclasses
from proxcl.bench.timing import time_pipelined
from proxcl.sparse_init import random_support
base = dev.tuning
def events(on: bool) -> None:
    dev.tuning = dataclasses.replace(base, launch_events=on)
rng = np.random.default_rng(0)
try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError:
    cuda = False
for (m, kk), n, d in (((8192, 8192), 64, 0.01), ((8192, 8192), 64, 0.005), ((500, 800), 256, 0.05), ((4096, 4096), 1024, 0.01)):
    ip, ind = random_support(rng, (m, kk), int(round(d * m * kk)))
    vals = rng.standard_normal(ind.size).astype(np.float32)
    w = proxcl.CSRMatrix.from_arrays(ip, ind, vals, (m, kk), dev)
    xh = rng.standard_normal((kk, n)).astype(np.float32)
    x = dev.to_device(xh)
    ref = (w @ x).get()
    row = []
    for rnd in range(2):
        for label in ("event", "no event"):
            events(label == "event")
            if rnd == 0 and label == "no event":
                assert np.array_equal((w @ x).get(), ref)
            row.append((label, time_pipelined(dev, lambda: w @ x, calls=50, repeat=7)))
    dev.tuning = base
    peer = ""
    if cuda:
        tw = torch.sparse_csr_tensor(torch.tensor(ip, dtype=torch.int64), torch.tensor(ind, dtype=torch.int64),
                                     torch.tensor(vals), (m, kk), device="cuda")
        tx = torch.tensor(xh, device="cuda")
        peer = f" | cuSPARSE {time_pipelined(None, lambda: tw @ tx, calls=50, repeat=7, sync=torch.cuda.synchronize):.4f}"
    print(f"W @ X {m}x{kk} x {n} at {d*100:g} %: " + ", ".join(f"{a} {b:.4f}" for a, b in row) + f" ms per call{peer}", flush=True)
from profile_step import step_model, step_wall_ms
for name, sparse in (("lenet300", False), ("lenet5", True), ("lenet5", False)):
    try:
        mdl, xb, yb = step_model(name, sparse, dev, rng)
        res = {"event": [], "no event": []}
        for r in range(6):
            for label in (("event", "no event") if r % 2 == 0 else ("no event", "event")):
                events(label == "event")
                res[label].append(step_wall_ms(dev, mdl, xb, yb, 30))
        dev.tuning = base
        print(f"step {name} {'CSR 5 %' if sparse else 'dense'} b128: " +
              ", ".join(f"{k} {np.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]" for k, v in res.items()) + " ms", flush=True)
    except Exception as e:
        dev.tuning = base
        print(f"step {name}: {type(e).__name__}: {e}")
