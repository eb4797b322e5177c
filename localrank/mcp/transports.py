"""Serving the MCP server: stdio (what editors launch) and Streamable HTTP on its own loopback
port, behind the same Host / Origin / token rules as the daemon (`ops.access`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import uvicorn
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
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


def run_stdio(server: MCPServer) -> None:
    """Serve over stdin/stdout until the client closes them."""
    anyio.run(server.run_stdio_async)
