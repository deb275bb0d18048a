"""`tfpipeline` command line: a thin layer that parses flags and calls the library.

Each stage registers its subcommands from its own module (`data_commands`, `model_commands`,
...). User errors (:class:`tfpipeline.errors.UserError`, bad flags) print one line and exit 2;
`--debug` shows tracebacks. Heavy imports (TensorFlow) happen inside the command functions so
`tfpipeline --help` is fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tfpipeline import __version__
from tfpipeline.errors import UserError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors raise UserError, so every bad input exits the same way."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def show_help(parser: argparse.ArgumentParser):
    """A command function that prints `parser`'s help (for a group called without subcommand)."""

    def run(_args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USER_ERROR

    return run


def build_parser() -> argparse.ArgumentParser:
    from tfpipeline.cli import (
        data_commands,
        eval_commands,
        export_commands,
        model_commands,
        ood_commands,
        tune_commands,
    )

    parser = Parser(
        prog="tfpipeline", description="Keras image classification: data, train, evaluate, serve."
    )
    parser.add_argument("--version", action="version", version=f"tfpipeline {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (
        data_commands,
        model_commands,
        ood_commands,
        eval_commands,
        export_commands,
        tune_commands,
    ):
        module.register(commands)
    parser.set_defaults(func=show_help(parser))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tfpipeline` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if not debug:
        # TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) drowns the output.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(argv)  # for commands that re-run themselves in a fresh process (tune)
        if args.command is not None:
            from tfpipeline.hardware import prepare_tensorflow

            prepare_tensorflow(quiet=not debug)
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
