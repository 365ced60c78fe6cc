"""What cutting the im2col buffer into batch chunks costs: one LeNet-5 training step at batch 128,
dense and CSR at 5 %, with the workspace's im2col limit off, at 8 MiB (the CPU form's default,
Tuning.cols_limit_mib: conv2's 16 MB of columns in two chunks) and at 4 MiB (four), interleaved,
with the im2col buffer's size.

    python scripts/im2col_chunks.py [DEVICE-SPEC] [ROUNDS]

On a CPU device the time is the process's CPU time per step (PoCL's threads are the process's,
so other processes on the machine change it less than they change the wall clock); on a GPU it
is the wall clock around 5 steps and a wait.
"""
import statistics
import sys
import time

import numpy as np

import proxcl
from proxcl.bench.model import sparsify_state
LIMITS = (None, 8 << 20, 4 << 20)


def main() -> int:
    dev = proxcl.Device(sys.argv[1] if len(sys.argv) > 1 else None)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    clock = time.process_time if dev.is_cpu else time.perf_counter
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    models = {}
    for density in (1.0, 0.05):
        m = proxcl.models.build("lenet5", device=dev)
        if density < 1:
            m.load_state_dict(sparsify_state(m, m.state_dict(), density, rng))
            m.to_sparse(None)
        models[density] = m
    times = {(d, lim): [] for d in models for lim in LIMITS}
    scratch = {}
    for _ in range(rounds):
        for d, m in models.items():
            for lim in LIMITS:
                m.workspace.cols_limit = lim
                m.workspace.release("scratch")
                xb, yb = m.stage_batch(x, y)
                for _ in range(2):
                    m.train_batch(xb, yb)
                dev.finish()
                t0 = clock()
                for _ in range(5):
                    m.train_batch(xb, yb)
                dev.finish()
                times[(d, lim)].append((clock() - t0) / 5 * 1e3)
                scratch[(d, lim)] = m.activation_bytes().get("scratch", 0)
    what = "CPU ms" if dev.is_cpu else "ms"
    print(f"{dev}; LeNet-5 training step at batch 128, median of {rounds} rounds of 5 steps ({what})")
    print("| weights | im2col limit | scratch bytes | step | vs no limit |")
    print("|---|---|---:|---:|---:|")
    for d in models:
        base = statistics.median(times[(d, None)])
        for lim in LIMITS:
            t = statistics.median(times[(d, lim)])
            form = "dense" if d >= 1 else f"CSR {d * 100:g} %"
            print(f"| {form} | {'none' if lim is None else f'{lim >> 20} MiB'} | {scratch[(d, lim)]:,} | "
                  f"{t:.2f} | {t / base - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
