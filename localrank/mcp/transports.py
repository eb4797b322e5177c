"""Serving the MCP server: stdio (what editors launch) and Streamable HTTP on its own loopback
port, behind the same Host / Origin / token rules as the daemon (`ops.access`).

Over stdio, a line that is not a JSON-RPC 2.0 message (not JSON, a wrong `jsonrpc`, no method,
params that are not an object) is answered with a JSON-RPC error, as the HTTP transport answers
400: the SDK's stdio transport drops such a line without a reply, leaving the client waiting."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import anyio
import mcp_types
import uvicorn
from mcp.server import MCPServer
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.message import SessionMessage
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from localrank.config import Settings
from localrank.ops.access import SecurityPolicy, check_bind_safety, refusal

MCP_PATH = "/mcp"
_CODES = {401: "unauthorized", 403: "forbidden"}


class AccessMiddleware:
    """Refuses what the daemon refuses: a Host that is not a local name (DNS rebinding), a
    browser Origin that is not allow-listed, a missing or wrong bearer token. The error body
    is the daemon's shape."""

    def __init__(self, app: ASGIApp, policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        server = scope.get("server")
        refused = refusal(
            self.policy,
            host=headers.get("host", ""),
            origin=headers.get("origin"),
            authorization=headers.get("authorization", ""),
            fetch_site=headers.get("sec-fetch-site", ""),
            port=int(server[1]) if server and server[1] is not None else None,
        )
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, message = refused
        body = json.dumps(
            {"error": {"message": message, "type": _CODES[status], "code": status, "param": None}}
        ).encode()
        response_headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 401:
            response_headers.append((b"www-authenticate", b'Bearer realm="localrank"'))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})


def http_app(server: MCPServer, settings: Settings) -> Any:
    """The Streamable HTTP app (endpoint `/mcp`) behind the daemon's access rules."""
    # The SDK's own Host check would duplicate ours with a different allow-list: ours decides.
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=settings.host,
    )
    return AccessMiddleware(app, SecurityPolicy.from_settings(settings))


def run_http(
    server: MCPServer,
    settings: Settings,
    port: int,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve Streamable HTTP on `settings.host`:`port` until interrupted; `on_listening` is
    told the endpoint's URL once the port is bound."""
    check_bind_safety(settings)
    config = uvicorn.Config(
        http_app(server, settings),
        host=settings.host,
        port=port,
        log_level="warning",
        lifespan="on",
    )
    http = uvicorn.Server(config)

    async def serve() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(http.serve)
            while not http.started:
                if http.should_exit:
                    return
                await anyio.sleep(0.02)
            if on_listening is not None:
                on_listening(_url(settings.host, http))

    anyio.run(serve)


def _url(host: str, http: uvicorn.Server) -> str:
    """The endpoint's URL, with the port the socket got."""
    port = http.servers[0].sockets[0].getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    netloc = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    return f"http://{netloc}{MCP_PATH}"


def jsonrpc_refusal(line: str) -> mcp_types.JSONRPCError | None:
    """The JSON-RPC error answering `line`, or None when it is a JSON-RPC message: -32700 for
    what is not JSON, -32600 (with the request's id when it has one) for JSON that is not a
    message."""
    try:
        mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return None
    except ValidationError:
        pass
    try:
        raw = json.loads(line)
    except ValueError:
        error = mcp_types.ErrorData(code=mcp_types.PARSE_ERROR, message="Parse error: not JSON")
        return mcp_types.JSONRPCError(jsonrpc="2.0", id=None, error=error)
    request_id = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        request_id = None
    error = mcp_types.ErrorData(
        code=mcp_types.INVALID_REQUEST,
        message='Invalid Request: not a JSON-RPC 2.0 message ("jsonrpc": "2.0", a "method" '
        'string, "params" an object)',
    )
    return mcp_types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)


class CheckedLines:
    """The lines of stdin for the SDK's stdio transport, minus those that are not JSON-RPC
    messages: each of those is answered here through `replies` (set once the transport runs)."""

    def __init__(self, lines: AsyncIterable[str]) -> None:
        self.lines = lines
        self.replies: Any = None
        self.ready = anyio.Event()

    async def __aiter__(self) -> AsyncIterator[str]:
        async for line in self.lines:
            if not line.strip():
                continue
            error = jsonrpc_refusal(line)
            if error is None:
                yield line
                continue
            await self.ready.wait()
            await self.replies.send(SessionMessage(error))


async def serve_stdio(server: MCPServer) -> None:
    """Serve over stdin/stdout until the client closes stdin."""
    # A duplicate of fd 0, so closing this reader never closes the process's stdin.
    stdin = io.TextIOWrapper(
        os.fdopen(os.dup(sys.stdin.fileno()), "rb"), encoding="utf-8", errors="replace"
    )
    lines = CheckedLines(anyio.wrap_file(stdin))
    lowlevel = server._lowlevel_server  # what MCPServer.run_stdio_async runs, given our stdin
    async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
        lines.replies = write_stream
        lines.ready.set()
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def run_stdio(server: MCPServer) -> None:
    """Serve over stdin/stdout until the client closes them."""
    anyio.run(serve_stdio, server)
