"""`python -m minillama COMMAND ...`: the command line.

Each subcommand is a module `minillama.cli.<name>` with `add_arguments(parser)` and `run(args) -> int`; its docstring's
first line is its one-line help. To add one, write the module and append its name to SUBCOMMANDS.

Exit codes, for every subcommand: 0 done; 1 an error minillama explains (`error: ...` on stderr, no traceback);
2 bad arguments (argparse); 130 interrupted with Ctrl-C; 141 stdout was closed early (`... | head`), like any
Unix tool that dies of SIGPIPE.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import MinillamaError

SUBCOMMANDS = ("chat", "generate", "serve", "lab", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillama", description="A llama.cpp-style inference engine in PyTorch "
                                     "whose internals are steerable while it generates.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        doc = (module.__doc__ or "").strip()
        sub = commands.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()          # a closed pipe shows up here for output still buffered
        return code
    except MinillamaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`). Point stdout at /dev/null so the interpreter's own flush at exit does
        # not raise again, and leave quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
