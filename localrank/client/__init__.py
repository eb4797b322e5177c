"""Clients of the running daemon (the CLI's daemon path and the MCP server use them)."""

from localrank.client.daemon import (
    DaemonClient,
    DaemonUnreachable,
    Endpoint,
    find_daemon,
    require_daemon,
)

__all__ = ["DaemonClient", "DaemonUnreachable", "Endpoint", "find_daemon", "require_daemon"]
