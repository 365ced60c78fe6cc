"""Timing helpers shared by the benchmarks.

Three clocks, never mixed in one number:

* **device time** of OpenCL work: the sum of (end - start) of the profiling events of every
  kernel that one call launched (:func:`time_opencl`; the device queue must profile);
* **wall time**: a host clock around one call and a wait for its completion, after warm-up
  (:func:`time_opencl`, :func:`time_host`);
* **CUDA time** of torch work on a GPU: CUDA events around one call (:func:`time_cuda`).

Every helper returns medians over repetitions; the number of repetitions adapts to a time
budget, so that slow peers (single-threaded scipy on large products) do not dominate a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyopencl as cl

__all__ = ["Timing", "record_events", "time_opencl", "time_pipelined", "time_host", "time_cuda",
           "copy_bandwidth", "write_json_atomic", "machine_info"]


@dataclass
class Timing:
    """Median times in milliseconds (None where not measured) and the repetition count."""
    wall_ms: float | None = None
    device_ms: float | None = None
    repeats: int = 0
    samples: dict = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples")
        return d


@contextlib.contextmanager
def record_events(dev):
    """Collect the events of every kernel that ``dev.launch`` enqueues inside the block."""
    events: list[cl.Event] = []
    with dev.record_launches() as launches:
        try:
            yield events
        finally:
            events.extend(ev for _, ev in launches)


def _event_ms(events) -> float:
    return sum((e.profile.end - e.profile.start) for e in events) * 1e-6


def _repeats(first_s: float, repeat: int, budget_s: float, min_repeat: int = 3) -> int:
    """How many timed repetitions fit the budget, given one call's duration."""
    if first_s <= 0:
        return repeat
    return int(max(min_repeat, min(repeat, budget_s / first_s)))


# Pause before each measurement: worker threads of the library measured just before (OpenBLAS,
# OpenMP in torch, PoCL) keep spinning for a while after their last call and would take cores
# from the next one.  On 2 cores that changed ratios by up to 1.5x.
SETTLE_S = 0.1


def time_opencl(dev, fn, *, repeat: int = 50, warmup: int = 3, budget_s: float = 0.5) -> Timing:
    """Time ``fn()``, which launches OpenCL work on ``dev`` through ``dev.launch``.

    Wall: host clock around ``fn(); dev.finish()``.  Device: the summed profiling time of the
    kernels one call launched (only when ``dev`` was made with ``profile=True``), in a second
    pass, so that recording the events adds nothing to the wall time."""
    time.sleep(SETTLE_S)
    for _ in range(warmup):
        fn()
    dev.finish()
    t0 = time.perf_counter()
    fn()
    dev.finish()
    n = _repeats(time.perf_counter() - t0, repeat, budget_s)
    walls, devs = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        dev.finish()
        walls.append((time.perf_counter() - t0) * 1e3)
    if dev.profile:
        for _ in range(n):
            with record_events(dev) as evs:
                fn()
                dev.finish()
            if evs:
                devs.append(_event_ms(evs))
    return Timing(wall_ms=statistics.median(walls),
                  device_ms=statistics.median(devs) if devs else None, repeats=n,
                  samples={"wall_ms": walls, "device_ms": devs})


def time_pipelined(dev, fn, *, calls: int = 20, repeat: int = 5, sync=None,
                   budget_s: float | None = None) -> float:
    """Wall milliseconds per call when ``calls`` calls are enqueued back to back and waited
    for once (how a training loop sees a kernel: no host round trip per launch); median over
    ``repeat`` batches after a warm-up call.  ``sync`` waits for the calls (default
    ``dev.finish``; torch's synchronize for a CUDA peer, with ``dev`` None).  With ``budget_s``,
    one more call is timed and the batches get fewer calls (down to one) when they would take
    longer than that in all."""
    sync = sync or dev.finish
    fn()
    sync()
    if budget_s is not None:
        t0 = time.perf_counter()
        fn()
        sync()
        calls = max(1, min(calls, int(budget_s / max(time.perf_counter() - t0, 1e-9) / repeat)))
    per_call = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        per_call.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(per_call)


def time_host(fn, *, repeat: int = 50, warmup: int = 2, budget_s: float = 0.5) -> Timing:
    """Wall time of a synchronous host call (numpy, scipy, torch on the CPU)."""
    time.sleep(SETTLE_S)
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    n = _repeats(time.perf_counter() - t0, repeat, budget_s)
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        walls.append((time.perf_counter() - t0) * 1e3)
    return Timing(wall_ms=statistics.median(walls), repeats=n, samples={"wall_ms": walls})


def time_cuda(fn, *, repeat: int = 50, warmup: int = 3, budget_s: float = 0.5) -> Timing:
    """Time a torch CUDA call: CUDA events around it (device time), and a host clock around
    the call plus ``torch.cuda.synchronize()`` (wall time)."""
    import torch
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    n = _repeats(time.perf_counter() - t0, repeat, budget_s)
    walls, devs = [], []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
        devs.append(start.elapsed_time(end))
    return Timing(wall_ms=statistics.median(walls), device_ms=statistics.median(devs), repeats=n,
                  samples={"wall_ms": walls, "device_ms": devs})


def copy_bandwidth(dev, nbytes: int = 1 << 27, repeat: int = 10) -> float:
    """Measured device memory bandwidth in GB/s: a buffer-to-buffer copy of ``nbytes``
    (read + write counted), median over repetitions; profiling events when the queue
    profiles, else the wall clock."""
    nbytes = int(min(nbytes, dev.cl_device.max_mem_alloc_size // 2)) // 4 * 4
    src_a, dst_a = (dev.full((nbytes // 4,), 1.0) for _ in range(2))
    src, dst = src_a.base_data, dst_a.base_data
    cl.enqueue_copy(dev.queue, dst, src).wait()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ev = cl.enqueue_copy(dev.queue, dst, src)
        ev.wait()
        wall = time.perf_counter() - t0
        times.append((ev.profile.end - ev.profile.start) * 1e-9 if dev.profile else wall)
    del src, dst, src_a, dst_a
    dev.memory.trim()    # the two large buffers go back to the driver
    return 2 * nbytes / statistics.median(times) / 1e9


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to ``path`` atomically (a temporary file beside it, then a rename)."""
    from ..fileio import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def finish(result: dict, json_path: str | None) -> None:
    """The closing lines of a benchmark: time and load average, and the JSON file if asked."""
    print(f"({result['elapsed_s']:.0f} s; load average before {result['host'].get('loadavg')}, "
          f"after {result['host_after'].get('loadavg')})")
    if json_path:
        write_json_atomic(json_path, result)
        print(f"wrote {json_path}")


def machine_info() -> dict:
    """Host facts worth keeping next to timings: CPU count and the load average."""
    info = {"cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    return info
