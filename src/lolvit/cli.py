"""Command-line front end: parses arguments and calls the library; holds no logic of its own.

Each command group lives in a module with ``register(subparsers)``, which adds its parser(s)
and sets ``func`` (called with the parsed namespace, returns an exit code or None).
"""
import argparse
import importlib
import os
import sys
from typing import List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMMAND_MODULES: List[str] = [
    "lolvit.commands",
    "lolvit.commands_dense",
    "lolvit.commands_quantize",
    "lolvit.bench.cli",
    "lolvit.tasks.classify.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lolvit", description="LOLViT backbones: info, training, benchmarks, export")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except (ValueError, TypeError, OSError) as e:
        # bad input (file, field, flag) or a file system refusal: one line, no traceback
        print(f"lolvit {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    return int(code or 0)


def _message(e: BaseException) -> str:
    """One line naming the problem; OS errors keep their file name and reason."""
    text = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename else str(e)
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
