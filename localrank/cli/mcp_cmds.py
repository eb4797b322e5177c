"""`localrank mcp [--http] [--allow-index]`: the MCP server for agents and editors.

It talks to the running daemon; when none answers it starts one inside this process (on the
configured address when free, so other clients find it too) and stops it on exit.
"""

from __future__ import annotations

import argparse
import logging
import sys

from localrank.cli.common import Runtime, settings_from_args
from localrank.client import DaemonClient
from localrank.config import DEFAULT_MCP_PORT

MCP_HELP = """\
Serve localrank's collections to coding agents and editors over the Model Context Protocol:
tools search, get, collections and status (with --allow-index also index_folder and unwatch).

Editors launch `localrank mcp` themselves (stdio). With --http it serves Streamable HTTP at
http://127.0.0.1:PORT/mcp instead, under the daemon's Host / Origin / token rules.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mcp",
        help="MCP server for agents and editors (stdio, or --http)",
        description=MCP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--http", action="store_true", help="serve Streamable HTTP instead of stdio")
    p.add_argument(
        "--port",
        type=int,
        dest="mcp_port",
        help=f"port for --http (default {DEFAULT_MCP_PORT}; setting mcp_port)",
    )
    p.add_argument(
        "--allow-index",
        action="store_true",
        dest="allow_index",
        help="offer the index_folder and unwatch tools (they let the agent index any folder)",
    )
    p.set_defaults(func=cmd_mcp)


def cmd_mcp(args: argparse.Namespace, runtime: Runtime) -> int:
    from localrank.logs import setup_logging

    settings = settings_from_args(args, "mcp_port")
    # stdout is the protocol channel on stdio: every log line goes to stderr.
    setup_logging(settings, stream=sys.stderr)
    logging.getLogger().setLevel(logging.WARNING)
    from localrank.mcp.daemon import DaemonAccess
    from localrank.mcp.server import build_server  # the MCP SDK: only here
    from localrank.mcp.transports import run_http, run_stdio

    started = []

    def connect() -> DaemonClient:
        client = runtime.find_daemon(settings)
        if client is not None:
            return client
        daemon = runtime.start_daemon(settings)
        started.append(daemon)
        assert daemon.endpoint is not None
        logging.getLogger(__name__).warning(
            "no daemon was running: serving one in this process at %s", daemon.endpoint.url
        )
        return DaemonClient(daemon.endpoint, token=settings.token)

    access = DaemonAccess(connect)
    # Find or start the daemon now, beside the server: the client's handshake is answered at
    # once (agents time out a server that takes seconds), tool calls wait for the daemon.
    access.start()
    server = build_server(access, allow_index=args.allow_index)
    try:
        if args.http:
            run_http(server, settings, settings.mcp_port, on_listening=_say_listening)
        else:
            run_stdio(server)
    except KeyboardInterrupt:
        pass
    finally:
        for daemon in started:
            daemon.stop()
    return 0


def _say_listening(url: str) -> None:
    print(f"localrank mcp: listening on {url} (Streamable HTTP; Ctrl-C stops)", file=sys.stderr)
