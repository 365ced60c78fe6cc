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
