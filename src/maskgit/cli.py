"""The ``maskgit`` command: a thin dispatcher. Each subcommand lives in ``maskgit.commands.<name>`` and exposes
``register(subparsers)``; it parses arguments into configs and calls library functions."""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys

from maskgit.errors import MaskGITError

# subcommand -> module in maskgit.commands (imported lazily so `maskgit --help` stays fast)
COMMANDS = {
    "data": "data",
    "train-features": "features",
    "train-tokenizer": "tokenizer",
    "reconstruct": "tokenizer",
    "tokenize": "tokenizer",
    "train": "train",
    "presets": "presets",
    "sample": "sample",
    "edit": "sample",
    "eval": "evaluate",
    "bench": "bench",
    "bench-binding": "bench_binding",
    "text-embed": "text",
    "convert": "convert",
    "export": "export",
    "serve": "serve",
    "cache": "hub",
    "push": "hub",
}

# commands whose time goes into the VQGAN decoder's large activations, where raised malloc thresholds pay; the
# others (training, tokenizing) keep glibc's defaults, so their peak memory does not hold freed buffers
DECODING_COMMANDS = {"sample", "edit", "eval", "bench", "bench-binding", "serve", "reconstruct"}


def build_parser() -> argparse.ArgumentParser:
    from maskgit import __version__
    parser = argparse.ArgumentParser(prog="maskgit", description="MaskGIT: masked generative image transformer.")
    parser.add_argument("--version", action="version", version=f"maskgit {__version__}")
    from maskgit.commands.parser import CommandParser  # --help shows every option's default
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for mod_name in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"maskgit.commands.{mod_name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m maskgit -- sample ...` (where torchrun passes the separator on)
        argv = argv[1:]
    args = parser.parse_args(argv)
    # the command as typed (quoted), recorded beside results and in checkpoints' metadata
    args.command_line = "maskgit " + shlex.join(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in DECODING_COMMANDS:
        from maskgit.inference.malloc import tune_malloc
        tune_malloc()  # faster CPU decoding, same results (see its docstring; MASKGIT_TUNE_MALLOC=0 turns it off)
    # the library's messages are the command's output: INFO on stdout, warnings on stderr, as plain lines (the
    # "maskgit" logger's console handler, see maskgit/__init__.py)
    logger = logging.getLogger("maskgit")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        rc = args.func(args)
    except MaskGITError as e:
        print(f"maskgit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        logger.setLevel(level)  # a caller in Python (tests, a notebook) keeps its own level
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
