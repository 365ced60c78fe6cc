"""Device layer: device choice, errors, memoised builds, the devices command."""

import subprocess
import sys

import numpy as np
import pytest

import proxcl
from proxcl import runtime


def test_default_device_works(dev):
    a = dev.to_device(np.arange(5, dtype=np.float32))
    assert np.array_equal(a.get(), np.arange(5, dtype=np.float32))
    assert dev.name and dev.platform_name


@pytest.mark.parametrize("spec", ["pocl", "cpu"])
def test_specs_select_pocl(spec):
    d = proxcl.Device(spec)
    assert "Portable Computing Language" in d.platform_name or d.is_cpu


def test_index_spec_selects_that_device():
    first = runtime.cl.get_platforms()[0].get_devices()[0]
    assert proxcl.Device("0:0").cl_device == first


@pytest.mark.parametrize("spec", ["9:9", "no-such-platform", "accelerator"])
def test_bad_spec_is_a_device_error(spec):
    with pytest.raises(proxcl.DeviceError, match="proxcl devices"):
        proxcl.Device(spec)


def test_env_variable_names_the_device(monkeypatch):
    monkeypatch.setenv("PROXCL_DEVICE", "no-such-platform")
    with pytest.raises(proxcl.DeviceError):
        proxcl.Device()


def test_no_platform_says_how_to_get_pocl(monkeypatch):
    monkeypatch.setattr(runtime.cl, "get_platforms", lambda: [])
    with pytest.raises(proxcl.DeviceError, match="pocl-binary-distribution"):
        proxcl.Device()


def test_program_builds_are_memoised(dev):
    p1 = dev.program("csr.cl", VEC=4)
    p2 = dev.program("csr.cl", VEC=4)
    p3 = dev.program("csr.cl", VEC=2)
    assert p1 is p2 and p1 is not p3
    other = proxcl.Device(dev.spec)
    assert other.program("csr.cl", VEC=4) is not p1  # another context, another build


def test_devices_command_lists_the_device():
    out = subprocess.run([sys.executable, "-m", "proxcl.cli", "devices"], capture_output=True,
                         text=True, check=True).stdout
    assert "Portable Computing Language" in out or "OpenCL C" in out
    assert "used without --device" in out


def test_no_platform_exits_2_with_one_line(monkeypatch, capsys):
    from proxcl.cli import main
    monkeypatch.setattr(runtime.cl, "get_platforms", lambda: [])
    assert main(["devices"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pocl-binary-distribution" in err and "Traceback" not in err


def test_launch_sets_only_changed_arguments_and_stays_correct(dev):
    """Arguments equal to the previous launch's are not set again; a changed buffer, scalar
    or NULL is.  The results must follow every change."""
    k = dev.kernel("csr.cl", "gather_f32")
    x1 = dev.to_device(np.arange(8, dtype=np.float32))
    x2 = dev.to_device(np.arange(8, dtype=np.float32) * 10)
    idx = dev.to_device(np.array([7, 0, 3], np.int32), np.int32)
    out = dev.full((3,), np.nan)
    for x, n, want in ((x1, 3, [7, 0, 3]), (x1, 3, [7, 0, 3]), (x2, 3, [70, 0, 30]), (x2, 2, [70, 0, 30]),
                       (x1, 3, [7, 0, 3])):
        if n == 2:
            out.fill(np.float32(-1))
            want = [70, 0, -1]
        dev.launch(k, (3,), (64,), n, x, idx, out)
        assert out.get().tolist() == want



def test_launch_keeps_each_call_sites_arguments(dev, monkeypatch):
    """Call sites that share a kernel keep their arguments in their own OpenCL kernel objects:
    once two alternating call sites have run, no argument is set again, a third gets a third
    object, and with more call sites than runtime.ARG_SETS the least recently used object is set
    anew.  Every result is right."""
    import proxcl
    d = proxcl.Device(dev.spec)
    k = d.kernel("csr.cl", "gather_f32")
    idx = d.to_device(np.array([3, 0, 2], np.int32), np.int32)
    sites = [(d.to_device(np.arange(4, dtype=np.float32) + 10 * i), d.empty((3,))) for i in range(12)]
    set_args = []                     # the kernel objects whose arguments were set
    real = runtime._set_args
    monkeypatch.setattr(runtime, "_set_args", lambda entry, vals: set_args.append(entry[0]) or real(entry, vals))

    def run(i, n=3):
        x, out = sites[i]
        out.fill(np.float32(-1))
        d.launch(k, (3,), (64,), n, x, idx, out)
        want = [3 + 10 * i, 10 * i, 2 + 10 * i][:n] + [-1] * (3 - n)
        assert out.get().tolist() == want

    for _ in range(2):
        run(0), run(1)
    count = len(set_args)
    for _ in range(3):
        run(0), run(1)
    assert len(set_args) == count and len(d._arg_sets[k]) == 2
    run(1, n=2)                       # other arguments: a third object
    assert len(set_args) == count + 1 and len(d._arg_sets[k]) == 3
    assert len({id(e[0]) for e in d._arg_sets[k]}) == 3 and set_args[-1] is d._arg_sets[k][0][0]
    run(0), run(1), run(1, n=2)
    assert len(set_args) == count + 1
    for _ in range(2):
        for i in range(12):
            run(i)
    assert len(d._arg_sets[k]) == runtime.ARG_SETS


def test_a_failed_launch_leaves_no_stale_arguments(dev, monkeypatch):
    """When setting a kernel object's arguments fails part way (here the fourth of four), the
    object is not taken to hold its earlier arguments: the next launch with those sets them
    again and reads the right buffer (one kernel object, so the failed launch reuses it)."""
    import proxcl
    monkeypatch.setattr(runtime, "ARG_SETS", 1)
    d = proxcl.Device(dev.spec)
    k = d.kernel("csr.cl", "gather_f32")
    x1, x2 = d.to_device(np.arange(4, dtype=np.float32)), d.to_device(np.arange(4, dtype=np.float32) + 10)
    idx, out = d.to_device(np.array([3, 0, 2], np.int32), np.int32), d.empty((3,))
    d.launch(k, (3,), (64,), 3, x1, idx, out)
    with pytest.raises(Exception):
        d.launch(k, (3,), (64,), 3, x2, idx, "not a buffer")
    out.fill(np.float32(-1))
    d.launch(k, (3,), (64,), 3, x1, idx, out)
    assert out.get().tolist() == [3, 0, 2]


def test_launch_without_event_where_nothing_asks_for_one(dev, monkeypatch):
    """With the tuning's launch_events off, a launch is enqueued through clEnqueueNDRangeKernel
    with no event and returns None, in order with the queue's other work; an event is still
    made (and returned) where the caller asks, a record_launches block is open or the device
    profiles; an enqueue the bare call refuses goes to pyopencl's, which raises its error."""
    import dataclasses
    import pyopencl as cl
    d = proxcl.Device(dev.spec)
    d.tuning = dataclasses.replace(d.tuning, launch_events=False)
    k = d.kernel("csr.cl", "gather_f32")
    x = d.to_device(np.arange(8, dtype=np.float32))
    idx = d.to_device(np.array([6, 1, 4], np.int32), np.int32)
    out = d.full((3,), np.nan)
    assert d.launch(k, (3,), (64,), 3, x, idx, out) is None and d._enqueue_bare
    assert out.get().tolist() == [6, 1, 4]
    x2 = x * 2                        # pyopencl's own kernel, then a bare launch reading it
    assert d.launch(k, (3,), (64,), 3, x2, idx, out) is None
    assert out.get().tolist() == [12, 2, 8]
    assert isinstance(d.launch(k, (3,), (64,), 3, x, idx, out, event=True), cl.Event)
    with d.record_launches() as launches:
        ev = d.launch(k, (3,), (64,), 2, x, idx, out)
    assert isinstance(ev, cl.Event) and launches == [("gather_f32", ev)]
    with pytest.raises(cl.Error):     # a local size no device takes: refused, then raised
        d.launch(k, (1 << 20,), (1 << 20,), 3, x, idx, out)
    calls = []
    monkeypatch.setattr(d, "_enqueue_bare", lambda *a: calls.append(a) or -5)
    out.fill(np.float32(-1))
    assert isinstance(d.launch(k, (3,), (64,), 3, x, idx, out), cl.Event) and len(calls) == 1
    assert out.get().tolist() == [6, 1, 4]
    p = proxcl.Device(dev.spec, profile=True)
    p.tuning = d.tuning
    assert isinstance(p.launch(p.kernel("csr.cl", "gather_f32"), (3,), (64,), 3, p.to_device(np.arange(8, dtype=np.float32)),
                               p.to_device(np.array([6, 1, 4], np.int32), np.int32), p.empty((3,))), cl.Event)


def test_kernel_memo_serves_every_order_of_defines(dev):
    """Device.kernel looks a kernel up by the defines in the caller's order first; another order
    of the same defines gets the same kernel and builds nothing new, other values a new one."""
    import proxcl
    d = proxcl.Device(dev.spec)
    k1 = d.kernel("csr.cl", "gather_f32", VEC=4, LX=4)
    built = len(d._kernels)
    assert d.kernel("csr.cl", "gather_f32", LX=4, VEC=4) is k1
    assert d.kernel("csr.cl", "gather_f32", VEC=4, LX=4) is k1 and len(d._kernels) == built
    assert d.kernel("csr.cl", "gather_f32", LX=8, VEC=4) is not k1 and len(d._kernels) == built + 1


def test_launch_converts_scalars_by_type(dev):
    """Scalar arguments are converted when they are set: a Python int, numpy int32 and int64, a
    bool, a numpy bool and a numpy uint32 (as uint32: the same bits here) all reach the kernel as
    its int, and each change of value or type is set again."""
    k = dev.kernel("csr.cl", "gather_f32")
    x = dev.to_device(np.arange(8, dtype=np.float32))
    idx = dev.to_device(np.array([5, 1, 2], np.int32), np.int32)
    out = dev.full((3,), np.nan)
    for n in (2, np.int32(2), True, np.bool_(True), np.int64(3), np.uint32(2), 3):
        out.fill(np.float32(-1))
        dev.launch(k, (3,), (64,), n, x, idx, out)
        assert out.get().tolist() == [5, 1, 2][:int(n)] + [-1] * (3 - int(n))


@pytest.mark.parametrize("shape, dtype", [((3, 0, 5), np.float32), (7, np.int32), ((4, 6), np.float32),
                                          ((), np.float32), ((2, 3, 4), np.uint16)])
def test_empty_arrays_match_numpy_layout(dev, shape, dtype):
    """Device.empty builds its arrays through pyopencl's fast constructor: shape, strides, size and
    bytes as pyopencl's general constructor makes them (numpy's, but for the strides of an empty
    array), and usable by pyopencl's own operations."""
    import pyopencl.array as cla
    a = dev.empty(shape, dtype)
    ref = cla.empty(dev.queue, shape, dtype)
    assert (a.shape, a.strides, a.size, a.nbytes, a.dtype) == (ref.shape, ref.strides, ref.size, ref.nbytes,
                                                                  ref.dtype)
    assert (a.shape, a.size, a.nbytes) == (np.empty(shape, dtype).shape, np.empty(shape, dtype).size,
                                           np.empty(shape, dtype).nbytes)
    assert a.flags.c_contiguous
    if a.size:
        a.fill(dtype(3))
        assert (a.get() == 3).all() and a.get().shape == ref.shape


def test_empty_refuses_negative_dimensions(dev):
    with pytest.raises(ValueError, match="negative dimensions"):
        dev.empty((2, -1))


@pytest.mark.parametrize("environ,allowed,cpus,pin", [
    ({}, {0, 1}, 2, True),                                  # every CPU allowed
    ({"POCL_AFFINITY": "0"}, {0, 1}, 2, False),             # the user's choice stands
    ({"POCL_MAX_PTHREAD_COUNT": "1"}, {0, 1}, 2, False),    # so does a thread count of theirs
    ({}, {2, 3}, 4, False),                                 # CPU 0 not allowed (taskset, cpuset)
    ({}, {0, 1, 2}, 4, False),
    ({}, None, 8, False),                                   # no affinity mask (not Linux)
    ({}, set(), None, False)])
def test_pocl_threads_are_pinned_only_where_every_cpu_is_allowed(environ, allowed, cpus, pin):
    assert runtime.pocl_affinity_default(environ, allowed, cpus) is pin


def test_device_sets_pocl_affinity_when_it_may(monkeypatch):
    """Making a device sets POCL_AFFINITY=1 before OpenCL starts, where every CPU is allowed."""
    import os
    monkeypatch.delenv("POCL_AFFINITY", raising=False)
    monkeypatch.delenv("POCL_MAX_PTHREAD_COUNT", raising=False)
    runtime._platforms()
    pinned = runtime.pocl_affinity_default({}, os.sched_getaffinity(0), os.cpu_count())
    assert os.environ.get("POCL_AFFINITY") == ("1" if pinned else None)


def test_views_are_kept_per_shape_and_share_the_buffer(dev):
    """runtime.view: the same view object for the same shape, writes through it reach the array,
    and at most 8 shapes are kept (a ninth starts the cache again)."""
    a = dev.to_device(np.arange(24, dtype=np.float32))
    v = runtime.view(a, (4, 6))
    assert runtime.view(a, [4, 6]) is v and v.shape == (4, 6) and v.base_data is a.base_data
    v.fill(np.float32(2))
    assert (a.get() == 2).all()
    shapes = [(24,), (2, 12), (12, 2), (3, 8), (8, 3), (6, 4), (1, 24)]    # 8 with (4, 6)
    kept = [runtime.view(a, s) for s in shapes]
    assert runtime.view(a, (4, 6)) is v and all(runtime.view(a, s) is k for s, k in zip(shapes, kept))
    w = runtime.view(a, (2, 3, 4))                                          # the ninth
    assert runtime.view(a, (4, 6)) is not v and runtime.view(a, (2, 3, 4)) is w
    np.testing.assert_array_equal(w.get(), np.full((2, 3, 4), 2, np.float32))


def test_get_async_reads_after_the_work_queued_before_it(dev):
    """Device.get_async: the copy runs after the kernels queued before it, and its event says when
    the host array holds the values."""
    a = dev.to_device(np.zeros(1000, np.float32))
    a.fill(np.float32(5))                        # queued before the read
    host, ev = dev.get_async(a)
    ev.wait()
    assert host.shape == (1000,) and host.dtype == np.float32 and (host == 5).all()


# ---- device choice on made-up platforms ----------------------------------------------------

T = runtime.cl.device_type
EVERY = T.CPU | T.GPU | T.ACCELERATOR | T.DEFAULT      # what Oclgrind's device says it is


class FakeDevice:
    opencl_c_version = "OpenCL C 1.2"
    max_compute_units = 2
    global_mem_size = 1 << 30
    local_mem_size = 1 << 15
    max_work_group_size = 256

    def __init__(self, name, kind):
        self.name, self.type = name, kind


class FakePlatform:
    def __init__(self, name, *devices):
        self.name = self.vendor = name
        self.version = f"OpenCL 3.0 {name} 1.0"
        self.devices = list(devices)

    def get_devices(self):
        if not self.devices:   # as ocl-icd answers for a platform without devices
            raise runtime.cl.LogicError("clGetDeviceIDs", runtime.cl.status_code.DEVICE_NOT_FOUND, "")
        return self.devices


SIM = FakeDevice("Oclgrind Simulator", EVERY)
CPU = FakeDevice("pthread-cpu", T.CPU)
GPU = FakeDevice("Radeon", T.GPU)
EMU = FakeDevice("Intel(R) FPGA Emulation Device", T.ACCELERATOR)
LLVMPIPE = FakeDevice("llvmpipe (LLVM 15.0.6, 256 bits)", T.CPU)


@pytest.fixture
def platforms(monkeypatch):
    """Install made-up platforms: platforms(*FakePlatform) replaces cl.get_platforms."""
    monkeypatch.delenv("PROXCL_DEVICE", raising=False)

    def install(*plats):
        monkeypatch.setattr(runtime.cl, "get_platforms", lambda: list(plats))
    return install


def test_default_is_a_real_gpu_then_a_cpu_never_a_simulator(platforms):
    platforms(FakePlatform("Oclgrind", SIM), FakePlatform("Clover"), FakePlatform("PoCL", CPU),
              FakePlatform("AMD", GPU))
    assert runtime._select(None) is GPU
    platforms(FakePlatform("Oclgrind", SIM), FakePlatform("Intel(R) FPGA Emulation Platform", EMU),
              FakePlatform("PoCL", CPU))
    assert runtime._select(None) is CPU
    platforms(FakePlatform("Oclgrind", SIM))
    with pytest.raises(proxcl.DeviceError, match="only simulators.*Oclgrind"):
        runtime._select(None)


def test_simulators_only_by_name_or_index(platforms):
    platforms(FakePlatform("Oclgrind", SIM), FakePlatform("Intel(R) FPGA Emulation Platform", EMU),
              FakePlatform("PoCL", CPU))
    assert runtime._select("oclgrind") is SIM and runtime._select("0:0") is SIM
    assert runtime._select("fpga") is EMU
    assert runtime._select("cpu") is CPU
    for kind in ("gpu", "accelerator"):
        with pytest.raises(proxcl.DeviceError, match="simulators aside"):
            runtime._select(kind)


def test_devices_lists_versions_and_flags_the_special_ones(platforms, monkeypatch):
    platforms(FakePlatform("Oclgrind", SIM), FakePlatform("rusticl", LLVMPIPE), FakePlatform("PoCL", CPU))
    devs = {d["name"]: d for d in runtime.list_devices()}
    assert devs["Oclgrind Simulator"]["type"] == "any"
    assert "chosen only by name or index" in devs["Oclgrind Simulator"]["notes"][0]
    assert "65,535" in devs[LLVMPIPE.name]["notes"][0]
    assert devs["pthread-cpu"]["notes"] == [] and devs["pthread-cpu"]["platform_version"] == "OpenCL 3.0 PoCL 1.0"
    assert [d["name"] for d in devs.values() if d["default"]] == [LLVMPIPE.name]
    monkeypatch.setenv("PROXCL_DEVICE", "pocl")
    assert [d["index"] for d in runtime.list_devices() if d["default"]] == ["2:0"]


def test_the_default_here_is_no_simulator(monkeypatch):
    """On this machine's drivers (make test-drivers runs this with PoCL, rusticl, Intel's runtime
    and Oclgrind all installed): the device chosen without a spec is a real one."""
    monkeypatch.delenv("PROXCL_DEVICE", raising=False)
    d = runtime._select(None)
    assert runtime._simulated(d.platform, d) is None, d.name
