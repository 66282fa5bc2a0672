"""The `tndsl` command.

Exit codes: 0 success, 1 errors in the input (printed compiler-style on stderr),
2 a usage mistake, 3 an internal failure (one line asking for a report, never a
traceback), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tndsl.errors import TnError
from tndsl.program import load

REPORT_URL = "https://github.com/tndsl/tndsl/issues"


def _dim_assignment(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE, got {text!r}")
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size of {name.strip()} must be an integer, "
                                         f"got {value!r}") from None
    return name.strip(), size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tndsl", description="Tensor-network diagrams as source files: check, "
                                  "compile, render and verify .tn programs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="parse and type-check .tn files, print a summary",
                                description="Parse and type-check each file and print a "
                                            "summary: dims, params, inputs, outputs, checks.")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--dim", action="append", default=[], type=_dim_assignment,
                       metavar="NAME=SIZE", help="give or override a dim's size (repeatable)")
    check.add_argument("--dump", action="store_true",
                       help="print the elaborated IR instead of the summary")
    check.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return parser


def _check(args: argparse.Namespace) -> int:
    failed = False
    dims = dict(args.dim)
    for path in args.files:
        try:
            program = load(path, dims)
        except TnError as e:
            print(e.render(), file=sys.stderr)
            failed = True
            continue
        for warning in program.warnings:
            print(warning.render(), file=sys.stderr)
        if args.dump:
            print(program.dump(), end="")
        elif not args.quiet:
            print(f"{path}: ok")
            print(program.summary())
    return 1 if failed else 0


COMMANDS = {"check": _check}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # the promise: no traceback, ever
        print(f"tndsl: internal error ({type(e).__name__}: {e}); please report it at "
              f"{REPORT_URL} with the input that caused it", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
