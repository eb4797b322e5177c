"""`localrank ...`: the command line. Each command group lives in its own module with
`register(subparsers)`; a command takes the parsed args and the Runtime and returns an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from localrank import __version__
from localrank.cli import (
    collection_cmds,
    embed_cmds,
    mcp_cmds,
    ops_cmds,
    serve_cmds,
    store_cmds,
)
from localrank.cli.common import Runtime
from localrank.errors import LocalrankError, exit_code

COMMAND_MODULES = [serve_cmds, embed_cmds, collection_cmds, mcp_cmds, ops_cmds, store_cmds]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localrank", description=__doc__)
    parser.add_argument("--version", action="version", version=f"localrank {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, runtime: Runtime | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, runtime or Runtime()) or 0)
    except LocalrankError as exc:
        print(f"localrank: error: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
