"""Device memory: every buffer proxcl makes comes from here, from a caching pool per category,
and is counted.

Categories (``CATEGORIES``):

* ``weights``      parameter values: dense storage, or a CSR weight's values, column indices,
                   row pointers and the structures derived from its support (row of every entry,
                   transposed structure, the direct convolution's taps);
* ``gradients``    the gradient of every parameter;
* ``optimizer``    per-value optimizer state (momentum, Adam moments, RDA sums and anchor) and
                   the 0/1 masks of pruning;
* ``activations``  activations and workspaces: layer outputs, im2col buffers, their gradients,
                   the loss buffers, kernel temporaries and product results;
* ``data``         input batches and labels on the device.

Each category has its own :class:`pyopencl.tools.MemoryPool`: a freed buffer goes back to its
pool and the next request of a size in the same bin gets it without asking the driver, so after
the first training step or inference call nothing is allocated from the driver any more.

Two numbers per category:

* **live** bytes: the sizes of the buffers that exist now (as requested, pool rounding not
  included).  This is what the program holds; every figure called "bytes" or "peak" in proxcl's
  logs and tables is live bytes.
* **pool** bytes: what the pool holds from the driver: live buffers rounded up to the pool's
  bins, plus freed buffers kept for reuse.  :meth:`Memory.trim` gives the kept ones back (the
  training loop does so whenever supports change); this is the process's device footprint.

Peaks are tracked at every allocation (a peak can only be reached right after one): per
category, of the total, and of the training state (weights + gradients + optimizer).
"""

from __future__ import annotations

import contextlib

import pyopencl.tools as cl_tools

__all__ = ["CATEGORIES", "STATE", "Memory", "category_of", "format_bytes"]

CATEGORIES = ("weights", "gradients", "optimizer", "activations", "data")
STATE = ("weights", "gradients", "optimizer")
assert CATEGORIES[:len(STATE)] == STATE      # the allocation hook sums the state as a prefix


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    n = float(n)
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


class _Allocator:
    """The allocator of one category: a callable ``(nbytes) -> buffer`` that pyopencl arrays
    keep (``Array.allocator``), so a copy of an array stays in its category."""

    __slots__ = ("memory", "category", "index", "pool")

    def __init__(self, memory: "Memory", category: str, pool):
        self.memory = memory
        self.category = category
        self.index = CATEGORIES.index(category)
        self.pool = pool

    def __call__(self, nbytes: int):
        return self.memory._allocate(self, nbytes)

    def __repr__(self) -> str:
        return f"<proxcl allocator {self.category}>"


def category_of(array, default: str = "activations") -> str:
    """The category of a device array made by proxcl (``default`` for any other array)."""
    alloc = getattr(array, "allocator", None)
    return alloc.category if isinstance(alloc, _Allocator) else default


class Memory:
    """The pools and counters of one device (``Device.memory``).

    ``requests``: buffers handed out; ``driver_allocations``: those for which a pool had to
    ask the driver (a request that a kept buffer served does not count)."""

    def __init__(self, queue):
        self._pools = {c: cl_tools.MemoryPool(cl_tools.ImmediateAllocator(queue)) for c in CATEGORIES}
        self._pool_list = list(self._pools.values())
        self._allocators = {c: _Allocator(self, c, p) for c, p in self._pools.items()}
        self.requests = 0
        self.driver_allocations = 0
        self._on_release: list = []
        self._peaks: list[dict] = [self._fresh_peak()]   # the device's, then any measure() blocks

    def allocator(self, category: str) -> _Allocator:
        try:
            return self._allocators[category]
        except KeyError:
            raise ValueError(f"unknown memory category {category!r} (one of {', '.join(CATEGORIES)})") from None

    # ---- allocation ----------------------------------------------------------------------
    def _allocate(self, alloc: _Allocator, nbytes: int):
        """One buffer from the category's pool, counted.  The pool either hands out a kept
        buffer (one fewer held, its footprint unchanged) or asks the driver (held unchanged,
        the footprint grown by the request's bin size); anything else means it gave kept
        buffers back to the driver on the way (pyopencl's pool does so, largest first, when
        the driver is out of memory, then asks again), so their handles may name new buffers
        now and the device's launch cache is told."""
        pool = alloc.pool
        held, managed = pool.held_blocks, pool.managed_bytes
        try:
            buf = pool.allocate(nbytes)
        except BaseException:
            if pool.managed_bytes < managed:
                self._released()
            raise
        self.requests += 1
        freed = held - pool.held_blocks        # 1 where a kept buffer served the request
        grown = pool.managed_bytes - managed   # the request's bin size where the driver did
        if grown:
            self.driver_allocations += 1
            # the pools' footprint grows only here
            pooled = sum(p.managed_bytes for p in self._pool_list)
            for peak in self._peaks:
                if pooled > peak["pool"]:
                    peak["pool"] = pooled
            if freed or grown != pool.alloc_size(pool.bin_number(nbytes)):
                self._released()
        elif freed != 1:
            self._released()
        live = [p.active_bytes for p in self._pool_list]      # in the order of CATEGORIES
        total = sum(live)
        state = sum(live[:len(STATE)])
        c, mine = alloc.category, live[alloc.index]
        for peak in self._peaks:
            if total > peak["total"]:
                peak["total"] = total
                peak["at_peak"] = dict(zip(CATEGORIES, live))
            if state > peak["state"]:
                peak["state"] = state
            if mine > peak[c]:
                peak[c] = mine
        return buf

    def on_release(self, callback) -> None:
        """Call ``callback()`` whenever buffers go back to the driver (their handles may then be
        reused): the launch cache of the device forgets the buffers it compares by handle."""
        self._on_release.append(callback)

    def _released(self) -> None:
        for cb in self._on_release:
            cb()

    def trim(self) -> None:
        """Give every kept (freed) buffer back to the driver."""
        for p in self._pools.values():
            p.free_held()
        self._released()

    # ---- what is held --------------------------------------------------------------------
    def live(self) -> dict[str, int]:
        """Bytes of the buffers that exist now, per category."""
        return {c: int(p.active_bytes) for c, p in self._pools.items()}

    def pooled(self) -> dict[str, int]:
        """Bytes each pool holds from the driver (live buffers in whole bins, and kept ones)."""
        return {c: int(p.managed_bytes) for c, p in self._pools.items()}

    def _fresh_peak(self) -> dict:
        live = self.live()
        return dict(live, total=sum(live.values()), state=sum(live[c] for c in STATE),
                    pool=sum(self.pooled().values()), at_peak=live)

    def reset_peak(self) -> None:
        """The device's peaks start again from what is live now."""
        self._peaks[0] = self._fresh_peak()

    def peak(self) -> dict[str, int]:
        """Peak live bytes since the last :meth:`reset_peak`: per category (each its own
        maximum), ``total``, ``state`` (weights + gradients + optimizer) and ``pool`` (the most
        the pools held)."""
        return {k: v for k, v in self._peaks[0].items() if k != "at_peak"}

    def peak_breakdown(self) -> dict[str, int]:
        """Live bytes per category at the moment the total peaked."""
        return dict(self._peaks[0]["at_peak"])

    @contextlib.contextmanager
    def measure(self):
        """Peaks within a block, the device's own going on: yields a dict that, when the block
        ends, holds ``before`` (live bytes per category at its start), ``peak`` (as
        :meth:`peak`, over the block) and ``at_peak`` (live bytes per category when the total
        peaked)."""
        result = {"before": self.live()}
        peak = self._fresh_peak()
        self._peaks.append(peak)
        try:
            yield result
        finally:
            self._peaks.remove(peak)
            result["at_peak"] = peak.pop("at_peak")
            result["peak"] = peak

    def snapshot(self) -> dict:
        """What a log records: live bytes per category and in all, the pools' bytes, and the
        peaks so far (as :meth:`peak`)."""
        live = self.live()
        return {"live": live, "live_total": sum(live.values()),
                "pool_total": sum(self.pooled().values()), "peak": self.peak()}
