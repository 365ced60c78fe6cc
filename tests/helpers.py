"""Reference helpers shared by the tests."""

from __future__ import annotations

import numpy as np


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf (never passes)."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        raise AssertionError(f"shape {out.shape} != reference shape {ref.shape}")
    if not np.all(np.isfinite(out)):
        return float("inf")
    den = np.linalg.norm(ref)
    num = np.linalg.norm(out - ref)
    return float(num / den) if den > 0 else float(num)


def form_device(dev, form: str = "gpu", compute_units: int | None = None, **tuning):
    """A new Device on the test device's OpenCL device, running kernel form ``form`` as that
    device runs it (proxcl.tuning.for_device) with these Tuning fields replaced (and, if given,
    reporting ``compute_units`` units)."""
    import dataclasses

    import proxcl
    from proxcl.tuning import FORMS, for_device
    d = proxcl.Device(dev.spec)
    if compute_units is not None:
        d.__dict__["compute_units"] = compute_units
    form_here = for_device(FORMS[form], int(d.cl_device.preferred_vector_width_float))
    d.tuning = dataclasses.replace(form_here, **tuning)
    return d


def poisoned(dev, shape):
    """A float32 device array filled with NaN, so an unwritten element fails the test."""
    return dev.full(shape, np.nan)
