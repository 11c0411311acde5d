"""``medzoo <command>``: thin wrappers over the public API.

Each command lives in ``medzoo/cli/<command>.py`` with two functions:
``add_parser(subparsers)`` (which sets ``func`` to the command's runner) and the runner itself, which maps
the parsed flags onto one library call. Heavy imports happen inside the runner, so ``medzoo --help`` is fast.
A :class:`~medzoo.errors.MedzooError` (or a plain OS error) is printed as one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medzoo.errors import MedzooError

COMMANDS = [
    "demo", "phantom", "fingerprint", "plan", "preprocess", "train", "predict", "ensemble", "evaluate", "export",
    "models", "pack", "unpack", "info",
]

log = logging.getLogger("medzoo")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per available command."""
    parser = argparse.ArgumentParser(
        prog="medzoo", description="3D medical image segmentation: train, predict, evaluate."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"medzoo.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"medzoo.cli.{name}":
                continue  # command not available in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medzoo`` console script. Returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 2
    level = logging.DEBUG if ns.verbose else logging.WARNING if ns.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("medzoo").setLevel(level)
    try:
        code = ns.func(ns)
    except MedzooError as err:
        print(f"medzoo {ns.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a missing or unwritable file, a full or read-only disk
        print(f"medzoo {ns.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medzoo {ns.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
