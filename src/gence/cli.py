"""The ``gence`` command line: one entry point, one subcommand per concern.

Each concern registers its own subcommand (``register(subparsers)`` in its package's ``cli`` module),
so this file only wires them together and the heavy imports happen only for the command that runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand module -> the package that owns it; each module defines register(subparsers).
_COMMAND_MODULES = (
    "gence.train.cli",        # gence train
    "gence.bench",            # gence bench (runs, then the report: composed above both packages)
    "gence.experiments.cli",  # gence merge
    "gence.report.cli",       # gence report
    "gence.properness.cli",   # gence properness
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gence",
        description="Generative Cross-Entropy: train, benchmark and report.",
        epilog="The main job: `gence bench` runs the default benchmark (the built-in digits demo grid) into "
               "runs/gence.sqlite and writes report/. `gence COMMAND --help` describes each command.",
    )
    from gence import __version__

    parser.add_argument("--version", action="version", version=f"gence {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that concern is not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # `gence` alone is a usage error: the help, on stderr, names the main job; it runs nothing.
        parser.print_help(sys.stderr)
        print("\ngence: no COMMAND given (the main job is `gence bench`)", file=sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
