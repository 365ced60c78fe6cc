"""Benchmarks: kernel-level (`proxcl bench kernels`), model-level (`proxcl bench model`) and
training memory (`proxcl bench memory`)."""

from ..errors import InputError


def model_names(text) -> list[str]:
    """The built-in model names of a comma-separated --models value (one clear error otherwise)."""
    from ..models import BUILTIN_SPECS
    names = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in names if m not in BUILTIN_SPECS]
    if not names or bad:
        raise InputError(f"--models: unknown model(s) {', '.join(bad) or '(none given)'}; "
                         f"choose from {', '.join(BUILTIN_SPECS)}")
    return names
