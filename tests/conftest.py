"""Shared fixtures.  Tests run on the device that $PROXCL_DEVICE names (PoCL in CI).
In CI (CI=true) a missing OpenCL device is a failure, never a skip."""

from __future__ import annotations

import os
import re
import zlib

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# Under Oclgrind with its checks on (make test-drivers), its reports (out-of-bounds accesses, data
# races, API errors) come on stderr: a test during whose setup, call or teardown anything else
# was printed there fails.  Two things are no finding: pyopencl asks every device for vendor
# parameters (NVIDIA's compute capability, the SIMD width) and catches the error, which
# Oclgrind's API check reports; and Oclgrind's compiler counts a build's warnings ("4 warnings
# generated."; the warnings themselves are in the build log, which pyopencl shows as a
# CompilerWarning).
OCLGRIND_CHECKS = any(os.environ.get(v) for v in ("OCLGRIND_CHECK_API", "OCLGRIND_DATA_RACES"))
NO_FINDING = re.compile(r"Oclgrind - OpenCL runtime error detected\s+Function: clGetDeviceInfo\s+"
                        r"Error:\s+CL_INVALID_VALUE\s+For argument 'param_name'\s*"
                        r"|^\d+ warnings? generated\.\s*", re.M)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if not OCLGRIND_CHECKS or report.failed:
        return
    for name, text in report.sections:
        if name == f"Captured stderr {report.when}":
            rest = NO_FINDING.sub("", text).strip()
            if rest:
                report.outcome = "failed"
                report.longrepr = f"Oclgrind reported on stderr:\n{rest[:4000]}"


@pytest.fixture(scope="session")
def dev():
    import proxcl
    try:
        return proxcl.Device()
    except proxcl.DeviceError as e:
        if IN_CI:
            pytest.fail(f"no OpenCL device in CI: {e}")
        pytest.skip(f"no OpenCL device: {e}")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh inputs per test, reproducible."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


# The GPU form with its tiled GEMM (gemm_tile) taken at every size, with tiles small enough that
# test shapes span several tiles, steps of BK and partial edges.
TILED = {"gemm_tile": (4, 4, 4, 4, 4), "tile_groups_pct": 0}


@pytest.fixture(scope="module", params=["cpu", "gpu", "gpu-tiled"])
def kdev(request, dev, monkeypatch_module):
    """The test device running the CPU kernel forms, then the GPU forms (PROXCL_TUNING), then the
    GPU forms with the tiled GEMM everywhere (TILED), so every family of kernels is checked on
    whatever device the tests have."""
    import dataclasses
    import proxcl
    form = request.param.split("-")[0]
    monkeypatch_module.setenv("PROXCL_TUNING", form)
    d = proxcl.Device(dev.spec)
    assert d.tuning["kind"] == form
    if request.param == "gpu-tiled":
        d.tuning = dataclasses.replace(d.tuning, **TILED)
    monkeypatch_module.delenv("PROXCL_TUNING")
    return d



def need_fashion_mnist() -> None:
    """Fail in CI, skip elsewhere, when Fashion-MNIST is not installed."""
    from proxcl import data
    if data.find_files("fashion-mnist") is None:
        msg = "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def fashion():
    """The Fashion-MNIST data set, loaded once."""
    from proxcl import data
    need_fashion_mnist()
    return data.load_dataset("fashion-mnist", download=False)


@pytest.fixture
def torch_float32():
    """PyTorch's default dtype float32 for one test (test_layers and test_models set float64 for
    their references when they are imported, which is for the whole session)."""
    import torch
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


# A loop budget small enough that every split path runs at small sizes: GEMM slices of K, CSR row
# pieces, column slices of SDDMM and bias gradients, from_dense's column pieces, scan blocks,
# row pieces of the window kernels, chunks of classes (scan_local must stay below it).
TIGHT = {"loop_max": 256, "scan_local": 32}


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def tight(request, dev):
    """The test device in either kernel form with the loop budget of TIGHT."""
    from helpers import form_device
    return form_device(dev, request.param, **TIGHT)
