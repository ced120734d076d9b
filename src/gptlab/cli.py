"""The `gptlab` command line: one verb per job, each in gptlab/commands/<verb>.py.

Each command module defines `add_parser(subparsers)` and `run(args) -> int`. Mistakes a user
can fix (GptlabError) print as one line on stderr with exit status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from gptlab import __version__
from gptlab.errors import GptlabError, Interrupted

# Verb -> module under gptlab.commands, in the order `gptlab --help` lists them.
COMMANDS = {
    "pretrain": "pretrain",
    "generate": "generate",
    "download": "download",
    "convert": "convert",
    "finetune-instruct": "finetune_instruct",
    "respond": "respond",
    "chat": "chat",
    "finetune-classifier": "finetune_classifier",
    "classify": "classify",
    "evaluate": "evaluate",
    "serve": "serve",
    "prepare-data": "prepare_data",
    "pipeline": "pipeline",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptlab",
        description="GPT-2 from scratch: pretrain, load OpenAI's weights, fine-tune, evaluate, "
        "serve.",
    )
    parser.add_argument("--version", action="version", version=f"gptlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(f"gptlab.commands.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except GptlabError as exc:
        print(f"gptlab {args.command}: error: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, Interrupted) else 2
    except KeyboardInterrupt:
        print(f"gptlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        print(
            f"gptlab {args.command}: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr
        )
        return 2


# Operating-system errors that a user fixes (full disk, read-only or forbidden folder).
USER_OS_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
