"""The ``proxcl`` command.  Each subcommand lives in its own module here, exposing
``add_parser(subparsers)`` (which sets ``func``) and holding no logic that the Python API lacks."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `proxcl --help` lists them.
COMMANDS = ["devices", "train", "eval", "predict", "info", "report", "bench", "demo"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's input, not a bug: one line, exit 2."""
    from ..data import DataError
    from ..errors import InputError
    from ..modelfile import ModelFileError
    from ..runtime import DeviceError
    from ..training import TrainingError
    # OSError: files that cannot be read or written; MemoryError: sizes (a spec, a data set) too
    # large for this machine.  Both are about the input, and are said in one line.  Any other
    # exception (a ValueError from deep inside numpy, say) is a bug and shows as a traceback.
    return (CLIError, InputError, DeviceError, ModelFileError, DataError, TrainingError, OSError,
            MemoryError)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = argparse.ArgumentParser(
        prog="proxcl",
        description="Train sparse neural networks from scratch with proximal l1 methods and run "
                    "them, training included, as CSR matrices on any OpenCL device.")
    parser.add_argument("--version", action="version", version=f"proxcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("proxcl: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"proxcl: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
