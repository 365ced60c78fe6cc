"""The host side of ``kernels/probe.cl``: measurements of the device that benchmarks use for
their floors (:func:`cache_bandwidth`)."""

from __future__ import annotations

from ..runtime import Device


def cache_bandwidth(dev: Device, repeat: int = 10) -> tuple[float, int]:
    """GB/s of re-reading a buffer that stays in the device's caches, and that buffer's size in
    bytes: the best over buffers of 64 KiB to 16 MiB (no larger than the global memory cache the
    device reports), vector widths, work-group and work sizes, and the fastest of the repeats
    (on a CPU a worker thread that wakes late halves a short kernel's rate), so that a floor
    made with it stays a lower bound."""
    cache = int(dev.cl_device.global_mem_cache_size or 0) or (1 << 24)
    sizes = [s for s in (1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24) if s <= max(cache, 1 << 16)]
    cpu = dev.tuning.kind == "cpu"
    forms = [(8, 16), (8, 64), (16, 16), (16, 64)] if cpu else [(4, 64), (4, 256)]   # (VEC, local)
    cus, rounds = int(dev.cl_device.max_compute_units), 256
    best = (0.0, 0)
    for vec, local in forms:
        kern = dev.kernel("probe.cl", "reread", VEC=vec, ROUNDS=rounds, CONTIG=int(cpu))
        for size in sizes:
            nv = size // (4 * vec)                      # >= 1024 vectors: a multiple of ROUNDS
            src = dev.full((nv * vec,), 1.0)
            for per_cu in (256, 1024, 4096):
                work = min(cus * per_cu, nv) // local * local
                out = dev.empty((work,))
                times = []
                for i in range(repeat + 2):
                    ev = dev.launch(kern, (work,), (local,), nv, src, out, event=True)
                    ev.wait()
                    if i >= 2:
                        times.append((ev.profile.end - ev.profile.start) * 1e-9)
                best = max(best, (4 * vec * rounds * work / min(times) / 1e9, size))
    return best
