"""The one exception type of bad input.

``InputError`` is what proxcl raises when a value, a file or a setting given to it is unusable:
the command line prints it as one line with exit status 2.  It is a ``ValueError``, so callers of
the Python API may catch either.  Any other exception is a bug and shows as one.
"""

from __future__ import annotations


class InputError(ValueError):
    """Unusable input (a value, a file, a setting): one line."""
