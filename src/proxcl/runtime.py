"""OpenCL device layer: device choice, memoised program builds, kernel launches.

Everything above this module talks to OpenCL through :class:`Device`.  Kernel
sources are ``.cl`` files inside the package (``proxcl/kernels``); a program is
built once per (context, source, options) and its kernels are reused.  Only the
kernel host modules (proxcl.ops: one per ``.cl`` file) build and launch kernels;
the launch settings they use are the device's :attr:`Device.tuning`.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
from functools import cached_property
from importlib import resources

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
from pyopencl.compyte.array import c_contiguous_strides

from .errors import InputError
from .memory import Memory
from .tuning import FORMS, Tuning, for_device, kernel_form

__all__ = ["Device", "DeviceError", "default_device", "list_devices", "ceil_to"]

ENV_VAR = "PROXCL_DEVICE"
POCL_HINT = "pip install pyopencl pocl-binary-distribution   (a CPU OpenCL device, no system packages needed)"


class DeviceError(RuntimeError):
    """No usable OpenCL device, or a device spec that matches none."""


def ceil_to(n: int, m: int) -> int:
    """The smallest multiple of m that is >= n (and >= m)."""
    return max(m, -(-int(n) // m) * m)


ARG_SETS = 8     # OpenCL kernel objects per kernel, each holding one call site's arguments
# (item size, shape) -> (C-contiguous strides, element count, shape as a tuple of ints) of the
# arrays Device.empty makes
_LAYOUTS: dict[tuple, tuple] = {}


def view(a: cla.Array, shape) -> cla.Array:
    """``a.reshape(shape)``, made once per array and shape and kept on ``a`` (at most 8 shapes):
    pyopencl's reshape builds a new Array (about 13 us), and the layers take the same views of
    the same buffers at every training step."""
    views = a.__dict__.get("_px_views")
    if views is None:
        views = a.__dict__["_px_views"] = {}
    shape = tuple(shape)
    v = views.get(shape)
    if v is None:
        if len(views) >= 8:
            views.clear()
        v = views[shape] = a.reshape(shape)
    return v


def pocl_affinity_default(environ, allowed: set | None, cpus: int | None) -> bool:
    """Whether to set POCL_AFFINITY=1 (PoCL's CPU driver then pins its worker thread i to CPU i)
    before OpenCL starts: unless the environment sets it or PoCL's thread count itself, and only
    where the process may run on every CPU 0 .. cpus-1 (``allowed``: its affinity mask; None off
    Linux), since PoCL fails or aborts where CPU i is not allowed.  On the 2-core machine of
    docs/PERFORMANCE.md, unpinned workers sometimes shared a core for a whole process: the bar
    SpMM then took twice the device time, or 0.26-0.32 ms of wall time instead of 0.15-0.18."""
    if "POCL_AFFINITY" in environ or "POCL_MAX_PTHREAD_COUNT" in environ:
        return False
    return bool(cpus) and allowed == set(range(cpus))


def _platforms() -> list:
    if pocl_affinity_default(os.environ, getattr(os, "sched_getaffinity", lambda _: None)(0), os.cpu_count()):
        os.environ["POCL_AFFINITY"] = "1"
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        platforms = []
    if not platforms:
        raise DeviceError(f"no OpenCL platform found; install one, e.g.: {POCL_HINT}")
    return platforms


_KINDS = {"gpu": cl.device_type.GPU, "cpu": cl.device_type.CPU,
          "accelerator": cl.device_type.ACCELERATOR}
_EVERY_KIND = cl.device_type.GPU | cl.device_type.CPU | cl.device_type.ACCELERATOR
_SIMULATOR_WORDS = ("oclgrind", "simulat", "emulat")


def _type_name(t: int) -> str:
    if t & _EVERY_KIND == _EVERY_KIND:
        return "any"
    for name in ("GPU", "CPU", "ACCELERATOR", "CUSTOM"):
        if t & getattr(cl.device_type, name):
            return name.lower()
    return "other"


def _simulated(p, d) -> str | None:
    """Why a device is no real device of any kind, or None: it claims every device type at
    once (Oclgrind says CPU|GPU|ACCELERATOR|DEFAULT), or its name says simulator or emulator.
    Such a device is chosen only by its name or index, never by default or by kind."""
    if d.type & _EVERY_KIND == _EVERY_KIND:
        return "claims every device type (a simulator)"
    names = f"{p.name} {p.vendor} {d.name}".lower()
    if any(w in names for w in _SIMULATOR_WORDS):
        return "a simulator or emulator"
    return None


def _notes(p, d) -> list[str]:
    """What `proxcl devices` flags about a device (docs/PORTABILITY.md)."""
    notes = []
    if _simulated(p, d):
        notes.append("simulator: chosen only by name or index")
    if "llvmpipe" in d.name.lower():
        notes.append("llvmpipe: loops end at 65,535 iterations")
    return notes


def _pairs(platforms) -> list:
    """(platform, device) of every device of every platform, in platform order."""
    pairs = []
    for p in platforms:
        try:
            pairs += [(p, d) for d in p.get_devices()]
        except cl.Error:   # a platform without devices (Mesa's with no GPU, rusticl not enabled)
            pass
    return pairs


def _default(pairs) -> cl.Device:
    """The first real GPU, else the first CPU, else the first other device that is no
    simulator (platform order)."""
    real = [d for p, d in pairs if not _simulated(p, d)]
    for kind in (cl.device_type.GPU, cl.device_type.CPU):
        for d in real:
            if d.type & kind:
                return d
    if real:
        return real[0]
    names = ", ".join(sorted({p.name.strip() for p, _ in pairs}))
    raise DeviceError(f"only simulators found ({names}); name one to use it (--device or "
                      f"${ENV_VAR}), or install a device, e.g.: {POCL_HINT}")


def list_devices() -> list[dict]:
    """Every OpenCL device of every platform, as plain dicts (for `proxcl devices`): with its
    platform's version, notes on special devices, and whether it is the one a Device made
    without a spec uses (``$PROXCL_DEVICE``, else the default choice)."""
    platforms = _platforms()
    pairs = _pairs(platforms)
    try:
        default = _select(os.environ.get(ENV_VAR) or None) if pairs else None
    except DeviceError:
        default = None
    out = []
    for p_idx, p in enumerate(platforms):
        for d_idx, (_, d) in enumerate(q for q in pairs if q[0] == p):
            out.append({
                "index": f"{p_idx}:{d_idx}",
                "platform": p.name.strip(),
                "platform_version": p.version.strip(),
                "name": d.name.strip(),
                "type": _type_name(d.type),
                "opencl_c": d.opencl_c_version.strip(),
                "compute_units": int(d.max_compute_units),
                "global_mem_bytes": int(d.global_mem_size),
                "local_mem_bytes": int(d.local_mem_size),
                "max_work_group_size": int(d.max_work_group_size),
                "default": d == default,
                "notes": _notes(p, d),
            })
    return out


def _select(spec: str | None) -> cl.Device:
    """Resolve a device spec: None (the first real GPU, else the first CPU; never a simulator),
    "cpu", "gpu", "accelerator" (the first real device of that kind), a platform or device name
    fragment ("pocl", "nvidia", "oclgrind"), or "P:D" indices."""
    platforms = _platforms()
    pairs = _pairs(platforms)
    if not pairs:
        raise DeviceError(f"OpenCL platforms exist but have no devices; install one, e.g.: {POCL_HINT}")
    if spec is None or spec.strip() == "":
        return _default(pairs)
    s = spec.strip().lower()
    if ":" in s:
        try:
            pi, di = (int(x) for x in s.split(":", 1))
            return platforms[pi].get_devices()[di]
        except (ValueError, IndexError, cl.Error):
            raise DeviceError(f"device {spec!r}: no such platform:device index pair "
                              f"(see `proxcl devices`)") from None
    if s in _KINDS:
        for p, d in pairs:
            if d.type & _KINDS[s] and not _simulated(p, d):
                return d
        raise DeviceError(f"device {spec!r}: no OpenCL {s.upper()} device, simulators aside "
                          f"(see `proxcl devices`)")
    for p, d in pairs:
        if s in p.name.lower() or s in p.vendor.lower() or s in d.name.lower():
            return d
    raise DeviceError(f"device {spec!r}: no platform or device name contains it (see `proxcl devices`)")


_BUILD_LOCK = threading.Lock()
_PROGRAMS: dict[tuple, cl.Program] = {}


def _opencl_library() -> str | None:
    """The path of the libOpenCL this process loaded (pyopencl's), from /proc/self/maps
    (Linux); None where it cannot be read."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "libOpenCL" in path and path.startswith("/"):
                    return path
    except OSError:
        pass
    return None


def _cl_enqueue_nd_range_kernel():
    """clEnqueueNDRangeKernel of the OpenCL library pyopencl loaded, typed for ctypes, or None
    where that library cannot be found."""
    path = _opencl_library()
    if path is None:
        return None
    try:
        fn = ctypes.CDLL(path).clEnqueueNDRangeKernel
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _enqueue_without_event(queue: cl.CommandQueue):
    """A function ``(kernel, global sizes, local sizes) -> status`` that enqueues a kernel on
    ``queue`` through clEnqueueNDRangeKernel with no event asked for, or None where the OpenCL
    library cannot be found.  pyopencl makes an event for every launch; on NVIDIA's driver that
    is part of the host's cost of a launch (docs/PERFORMANCE.md, enqueue cost)."""
    fn = _cl_enqueue_nd_range_kernel()
    if fn is None:
        return None
    qp = queue.int_ptr
    sizes: dict[tuple, tuple] = {}       # (global, local) -> their size_t arrays

    def enqueue(kernel: cl.Kernel, g: tuple, l: tuple) -> int:
        gl = sizes.get((g, l))
        if gl is None:
            if len(sizes) >= 1024:
                sizes.clear()
            gl = sizes[g, l] = ((ctypes.c_size_t * len(g))(*g), (ctypes.c_size_t * len(l))(*l))
        return fn(qp, kernel.int_ptr, len(g), None, gl[0], gl[1], 0, None, None)
    return enqueue


def _kernel_source(filename: str) -> str:
    """A kernel file's text with the shared ``common.h`` put in front of it."""
    pkg = resources.files("proxcl.kernels")
    return pkg.joinpath("common.h").read_text() + "\n" + pkg.joinpath(filename).read_text()


class Device:
    """One OpenCL device with its context and in-order queue.

    ``Device(spec=None, profile=False)``: spec as for :func:`_select`; with no spec,
    ``$PROXCL_DEVICE``; with neither, the first real GPU or else the first CPU (never a
    simulator such as Oclgrind).
    ``dev.context`` and ``dev.queue`` are the pyopencl objects; ``dev.memory`` (proxcl.memory)
    makes and counts every buffer: the array methods below take its ``category``.
    """

    def __init__(self, spec: str | None = None, *, profile: bool = False):
        if spec is None:
            spec = os.environ.get(ENV_VAR) or None
        self.spec = spec
        self.cl_device = _select(spec)
        self.context = cl.Context([self.cl_device])
        props = cl.command_queue_properties.PROFILING_ENABLE if profile else 0
        self.queue = cl.CommandQueue(self.context, properties=props)
        self.profile = profile
        self._kernels: dict[tuple, cl.Kernel] = {}          # by (file, name, sorted defines)
        self._kernels_by_call: dict[tuple, cl.Kernel] = {}  # the same, by the caller's order
        # per kernel: its OpenCL kernel objects (the kernel and clones of it), each with the
        # argument keys it holds and its declared scalar types, most recently used first
        # (Device.launch)
        self._arg_sets: dict[cl.Kernel, list] = {}
        # the program of each kernel, for its clones: pyopencl's Kernel.program returns a new
        # Program wrapper whose attribute lookups try to create kernels (Oclgrind reports
        # CL_INVALID_KERNEL_NAME '_source'), so the program is kept from the build
        self._programs: dict[cl.Kernel, cl.Program] = {}
        self._recorders: list[list] = []
        self._enqueue_bare = None       # (Device.launch) made on first use where the tuning asks
        self.memory = Memory(self.queue)
        self.memory.on_release(self._arg_sets.clear)

    # ---- description -------------------------------------------------------
    @property
    def name(self) -> str:
        return self.cl_device.name.strip()

    @property
    def platform_name(self) -> str:
        return self.cl_device.platform.name.strip()

    @cached_property
    def compute_units(self) -> int:
        return int(self.cl_device.max_compute_units)

    @property
    def is_cpu(self) -> bool:
        return bool(self.cl_device.type & cl.device_type.CPU)

    def __repr__(self) -> str:
        return f"Device({self.platform_name} | {self.name})"

    @cached_property
    def tuning(self) -> Tuning:
        """The launch settings of this device's kernel form (proxcl.tuning): the form of its
        kind, or the one ``$PROXCL_TUNING`` forces, as this device runs it (``for_device``)."""
        try:
            form = FORMS[kernel_form(self.is_cpu)]
        except ValueError as e:
            raise DeviceError(str(e)) from None
        return for_device(form, int(self.cl_device.preferred_vector_width_float))

    # ---- programs and kernels ---------------------------------------------
    def program(self, filename: str, **defines) -> cl.Program:
        """The built program of a package ``.cl`` file with ``-D`` defines, memoised
        per (context, source, options)."""
        source = _kernel_source(filename)
        options = " ".join(f"-D{k}={v}" for k, v in sorted(defines.items()))
        options += " -cl-std=CL1.2 -cl-mad-enable"
        key = (self.context.int_ptr, source, options)
        with _BUILD_LOCK:
            prg = _PROGRAMS.get(key)
            if prg is None:
                prg = cl.Program(self.context, source).build(options=options)
                _PROGRAMS[key] = prg
        return prg

    def kernel(self, filename: str, name: str, **defines) -> cl.Kernel:
        """The kernel ``name`` of a package ``.cl`` file built with ``defines``, memoised: first
        by the defines in the caller's order (no sort on the launch path), then in sorted order,
        so that one build serves every order."""
        fast = (filename, name, tuple(defines.items()))
        k = self._kernels_by_call.get(fast)
        if k is None:
            key = (filename, name, tuple(sorted(defines.items())))
            k = self._kernels.get(key)
            if k is None:
                prog = self.program(filename, **defines)
                k = cl.Kernel(prog, name)
                self._kernels[key] = k
                self._programs[k] = prog
            self._kernels_by_call[fast] = k
        return k

    def launch(self, kernel: cl.Kernel, gsize, lsize, *args, wait_for=None,
               event: bool = False) -> cl.Event | None:
        """Set arguments (ints -> int32, unsigned numpy ints -> uint32, floats -> float32,
        arrays -> buffers) and enqueue with global sizes rounded up to the fixed local size.
        The launch's event is returned where ``event`` is set, the device profiles, a
        :meth:`record_launches` block is open, or the tuning's ``launch_events`` is on; otherwise
        the kernel is enqueued without one and None is returned (on NVIDIA's driver the event
        is a measurable part of a launch's host cost, docs/PERFORMANCE.md).

        One kernel serves several call sites per training step (each layer's product, each
        parameter's update), each with its own arguments.  So a kernel keeps up to ARG_SETS
        OpenCL kernel objects (clones of one program's kernel), each holding the arguments of
        its last launch: a launch takes the one whose arguments are already these, else a new
        one while there is room, else the least recently used one, and sets its arguments
        (``_set_args``: all of them, with the scalars' types declared).  Buffers are compared
        by their OpenCL handle, not kept referenced (a kept reference would keep a freed buffer
        alive): while a pool keeps a freed buffer its handle names the same memory, and when
        the pools give buffers back to the driver this cache is cleared."""
        keys = []
        for a in args:
            t = type(a)
            if t is int or a is None:       # the commonest first: ints, NULL
                keys.append(a)
            elif t is cla.Array or isinstance(a, cla.Array):
                if a.offset:
                    raise InputError("device arrays with a non-zero offset are not supported")
                a = a.base_data             # None for an empty array
                keys.append(None if a is None else a.int_ptr)   # a buffer: its handle
            elif t is cl.LocalMemory:
                keys.append(a)
            elif isinstance(a, cl.MemoryObjectHolder):
                keys.append(a.int_ptr)      # a buffer passed as such: its handle too
            else:                           # a scalar, converted only when it is set
                keys.append((t, a))
        sets = self._arg_sets.get(kernel)
        if sets is None:                    # first launch, or after the cache was cleared
            sets = self._arg_sets[kernel] = [[kernel, None, None]]
        for i, entry in enumerate(sets):
            if entry[1] == keys:            # holds these arguments already
                break
        else:                               # a new clone while there is room, else the oldest
            prog = self._programs.get(kernel)
            if len(sets) < ARG_SETS and prog is not None and sets[-1][1] is not None:
                sets.append([cl.Kernel(prog, kernel.function_name), None, None])
            i, entry = len(sets) - 1, sets[-1]
            entry[1] = None                 # what it holds is unknown until every argument is set
            _set_args(entry, [a.base_data if isinstance(a, cla.Array) else a for a in args])
            entry[1] = keys
        if i:                               # most recently used first
            sets.insert(0, sets.pop(i))
        g = tuple([ceil_to(n, l) for n, l in zip(gsize, lsize)])
        lsize = tuple(lsize)
        if not (self.tuning.launch_events or event or wait_for or self._recorders or self.profile):
            bare = self._enqueue_bare
            if bare is None:
                bare = self._enqueue_bare = _enqueue_without_event(self.queue) or False
            if bare and bare(entry[0], g, lsize) == 0:
                return None
            # no library to call, or an error: pyopencl's enqueue below raises it as usual
        ev = cl.enqueue_nd_range_kernel(self.queue, entry[0], g, lsize, wait_for=wait_for)
        if self._recorders:
            for launches in self._recorders:
                launches.append((kernel.function_name, ev))
        return ev

    @contextlib.contextmanager
    def record_launches(self):
        """The profiling hook: inside the block, every launch on this device appends
        (kernel name, event) to the list the block receives (the events carry device times
        when the device was made with ``profile=True``).  Blocks may nest."""
        launches: list = []
        self._recorders.append(launches)
        try:
            yield launches
        finally:
            self._recorders[:] = [r for r in self._recorders if r is not launches]

    # ---- arrays ------------------------------------------------------------
    def to_device(self, a, dtype=np.float32, *, category: str = "data") -> cla.Array:
        """A device copy of a host array (C-contiguous, given dtype) in a memory category
        (proxcl.memory); device arrays pass through."""
        if isinstance(a, cla.Array):
            if a.dtype != dtype:
                raise TypeError(f"expected a {np.dtype(dtype).name} device array, got {a.dtype}")
            return a
        return cla.to_device(self.queue, np.ascontiguousarray(a, dtype=dtype),
                             allocator=self.memory.allocator(category))

    def empty(self, shape, dtype=np.float32, *, category: str = "activations") -> cla.Array:
        """An uninitialised C-contiguous device array from the category's pool.  Built through
        pyopencl's fast Array constructor with the strides and size computed here: the general
        one costs about 8 us of checks per array, more than a small kernel's launch."""
        allocator = self.memory.allocator(category)
        dtype = np.dtype(dtype)
        # by the caller's shape as given (a tuple of ints hashes as its normalised form would)
        layout = _LAYOUTS.get((dtype.itemsize, shape)) if type(shape) is tuple else None
        if layout is None:
            shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
            layout = _LAYOUTS.get((dtype.itemsize, shape))
            if layout is None:
                if min(shape, default=1) < 0:
                    raise InputError(f"negative dimensions are not allowed: {shape}")
                if len(_LAYOUTS) >= 256:
                    _LAYOUTS.clear()
                layout = _LAYOUTS[dtype.itemsize, shape] = (
                    c_contiguous_strides(dtype.itemsize, shape), math.prod(shape), shape)
        return cla.Array(None, layout[2], dtype, allocator=allocator, strides=layout[0],
                         _fast=True, _size=layout[1], _context=self.context, _queue=self.queue)

    def zeros(self, shape, dtype=np.float32, *, category: str = "activations") -> cla.Array:
        return cla.zeros(self.queue, shape, dtype, allocator=self.memory.allocator(category))

    def full(self, shape, value, dtype=np.float32, *, category: str = "activations") -> cla.Array:
        a = self.empty(shape, dtype, category=category)
        a.fill(dtype(value) if callable(dtype) else np.dtype(dtype).type(value))
        return a

    def copy(self, a: cla.Array, *, category: str) -> cla.Array:
        """A device copy of a device array in another memory category."""
        out = self.empty(a.shape, a.dtype, category=category)
        if a.size:
            cl.enqueue_copy(self.queue, out.base_data, a.base_data, byte_count=a.nbytes,
                            src_offset=a.offset)
        return out

    def get_async(self, a: cla.Array) -> tuple[np.ndarray, cl.Event]:
        """A host array that a copy of ``a``, queued behind the work enqueued so far, fills, and
        the copy's event: the host waits (``event.wait()``) only when it needs the values."""
        host = np.empty(a.shape, a.dtype)
        return host, cl.enqueue_copy(self.queue, host, a.base_data, src_offset=a.offset, is_blocking=False)

    def finish(self) -> None:
        self.queue.finish()


def _scalar_dtype(a):
    """The type a kernel takes a launch argument as: unsigned numpy ints as uint32, other ints
    (and bools) as int32, floats as float32; None for buffers, NULL and local memory."""
    if isinstance(a, np.unsignedinteger):
        return np.uint32
    if isinstance(a, (int, np.integer, np.bool_)):     # bool is an int
        return np.int32
    if isinstance(a, (float, np.floating)):
        return np.float32
    return None


def _set_args(entry: list, vals: list) -> None:
    """Set every argument of the kernel object ``entry[0]`` (a Device.launch argument set,
    ``entry[2]`` the scalar types declared on it).  The types follow the arguments' own
    (``_scalar_dtype``) and are declared again when they change, so that pyopencl packs the
    scalars itself: through ``set_arg`` a scalar costs about 6 us on every driver (pyopencl's
    own path), through declared types all of a launch's arguments about 0.4 us."""
    dtypes = [_scalar_dtype(a) for a in vals]
    if dtypes != entry[2]:
        entry[0].set_scalar_arg_dtypes(dtypes)
        entry[2] = dtypes
    entry[0].set_args(*[int(a) if type(a) is np.bool_ else a for a in vals])


_DEFAULT: Device | None = None


def default_device() -> Device:
    """The process-wide device chosen by ``$PROXCL_DEVICE`` (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Device()
    return _DEFAULT
