"""Device time per kernel of one training step (OpenCL profiling events), for LeNet-5 dense and
at 5 % density in CSR, and LeNet-300-100 dense, at batch 128.

    python scripts/profile_step.py [DEVICE-SPEC]
"""
import collections
import sys
import time

import numpy as np

import proxcl
from proxcl import models


def step_model(name: str, sparse: bool, dev, rng, batch: int = 128):
    """A model of ``name`` on ``dev`` (with ``sparse``: 5 % of each weight kept at random, in CSR)
    and one prepared random batch: (model, x, y)."""
    m = models.build(name, device=dev)
    if sparse:
        st = m.state_dict()
        for k in st:
            if k.endswith("weight"):
                st[k] = np.where(rng.random(st[k].shape) < 0.05, st[k], 0).astype(np.float32)
        m.load_state_dict(st)
        m.to_sparse(None)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    xb, yb = m.prepare_batch(x, rng.integers(0, 10, batch))
    return m, xb, yb


def step_wall_ms(dev, m, xb, yb, steps: int, warmup: int = 3) -> float:
    """Wall milliseconds per training step over ``steps`` steps after ``warmup``, waited for once."""
    for _ in range(warmup):
        m.train_batch(xb, yb)
    dev.finish()
    t = time.perf_counter()
    for _ in range(steps):
        m.train_batch(xb, yb)
    dev.finish()
    return (time.perf_counter() - t) * 1e3 / steps


def main() -> int:
    dev = proxcl.Device(sys.argv[1] if len(sys.argv) > 1 else None, profile=True)
    print(dev)
    rng = np.random.default_rng(0)
    for name, sparse in (("lenet5", False), ("lenet5", True), ("lenet300", False)):
        m, xb, yb = step_model(name, sparse, dev, rng)
        wall = step_wall_ms(dev, m, xb, yb, 10) / 1e3
        with dev.record_launches() as events:
            for _ in range(10):
                m.train_batch(xb, yb)
            dev.finish()
        per = collections.defaultdict(lambda: [0.0, 0])
        for kname, e in events:
            p = per[kname]
            p[0] += (e.profile.end - e.profile.start) * 1e-6 / 10
            p[1] += 1
        total = sum(p[0] for p in per.values())
        print(f"== {name} {'CSR 5 %' if sparse else 'dense'} batch 128 training step: wall {wall * 1e3:.2f} ms, "
              f"kernels {total:.2f} ms, {len(events) // 10} launches")
        for k, (ms, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[:10]:
            print(f"   {k:<24} {ms:8.3f} ms  x{n // 10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
