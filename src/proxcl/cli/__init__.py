"""The ``proxcl`` command.  Each subcommand lives in its own module here, exposing
``add_parser(subparsers)`` (which sets ``func``) and holding no logic that the Python API lacks."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules, in the order `proxcl --help` lists them (interop: export and import).
COMMANDS = ["devices", "train", "eval", "predict", "info", "interop", "report", "bench", "demo"]


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


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, as every other error of the command (subcommands'
    parsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _negative_number(tok: str) -> bool:
    if not tok.startswith("-"):
        return False
    try:
        float(tok)
    except ValueError:
        return False
    return True


def join_negative_values(argv: list[str]) -> list[str]:
    """``--l1 -1e-4`` as ``--l1=-1e-4``: argparse reads a value such as -1e-4 as an option and
    would say the option lacks its argument; the value's own check then says what is wrong."""
    out: list[str] = []
    for tok in argv:
        if out and _negative_number(tok) and out[-1].startswith("--") and "=" not in out[-1] \
                and out[-1] != "--":
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = _Parser(
        prog="proxcl",
        description="Train sparse neural networks from scratch with proximal l1 methods and run "
                    "them, training included, as CSR matrices on any OpenCL device.")
    parser.add_argument("--version", action="version", version=f"proxcl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; its exit status.  Output cut short by its reader (``proxcl predict ... |
    head -1``) ends the command quietly."""
    try:
        try:
            code = _main(argv)
        except SystemExit as e:       # argparse's --help and errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # the reader is gone: send what is left in the buffer nowhere, so that the flush at exit
        # does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _subparser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The innermost subcommand parser that argv's words name (``bench kernels``), or parser."""
    for tok in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and tok in subs[0].choices:
            parser = subs[0].choices[tok]
    return parser


def _main(argv: list[str] | None) -> int:
    argv = join_negative_values(list(sys.argv[1:] if argv is None else map(str, argv)))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:       # said by the subcommand's parser, so that its --help is the one pointed to
        _subparser(parser, argv).error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise
    except KeyboardInterrupt:
        print("proxcl: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"proxcl: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
