"""The daemon client the CLI and the MCP server use: it finds the daemon of its configuration
(host/port or unix socket), refuses one that serves another database or is not localrank,
and turns the daemon's errors back into localrank's error types with the daemon's message."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from daemons import free_port
from fake_embedder import hash_loader

from localrank.client import DaemonClient, DaemonUnreachable, Endpoint, find_daemon
from localrank.config import load_settings
from localrank.errors import InvalidInput, NotFound
from localrank.serve.app import make_app
from localrank.serve.security import start_unix_site
from localrank.serve.state import STATE_KEY


async def serve(app: web.Application, *, unix: str | None = None, port: int = 0) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    if unix:
        await start_unix_site(runner, unix)
    else:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_unix_socket_daemon_found_and_used(tmp_path: Path, minilm: Path) -> None:
    sock = str(tmp_path / "run" / "localrank.sock")
    settings = load_settings({"home": str(tmp_path / "home"), "unix_socket": sock}, environ={})
    app = make_app(settings, loader=hash_loader(minilm))
    runner = await serve(app, unix=sock)
    try:
        await app[STATE_KEY].ready.wait()
        client = await asyncio.to_thread(find_daemon, settings)
        assert client is not None and client.endpoint == Endpoint(unix_socket=sock)
        assert client.health["database"] == str(settings.paths.database)
        await asyncio.to_thread(client.request, "POST", "/v1/collections", {"name": "notes"})
        assert [c["name"] for c in await asyncio.to_thread(client.collections)] == ["notes"]
        with pytest.raises(NotFound) as missing:
            await asyncio.to_thread(client.search, {"collection": "nope", "query": "x"})
        assert missing.value.message == "collection 'nope' does not exist"
        with pytest.raises(InvalidInput) as bad:
            await asyncio.to_thread(
                client.search, {"collection": "notes", "query": "x", "top_k": 0}
            )
        assert "top_k" in bad.value.message
        # Another dialect's error shape ({"detail", "code"}) maps the same way.
        with pytest.raises(InvalidInput):
            await asyncio.to_thread(client.embed, {"texts": []})

        # The same socket, but configured for another LOCALRANK_HOME: not this CLI's daemon.
        other = load_settings({"home": str(tmp_path / "other"), "unix_socket": sock}, environ={})
        assert await asyncio.to_thread(find_daemon, other) is None
    finally:
        await runner.cleanup()


async def test_nothing_or_something_else_listening(tmp_path: Path) -> None:
    port = free_port()
    settings = load_settings({"home": str(tmp_path), "port": port}, environ={})
    assert await asyncio.to_thread(find_daemon, settings) is None  # nothing listens
    with pytest.raises(DaemonUnreachable):
        await asyncio.to_thread(DaemonClient(Endpoint("127.0.0.1", port)).collections)

    async def other_server(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", other_server)
    runner = await serve(app, port=port)
    try:
        assert await asyncio.to_thread(find_daemon, settings) is None  # not a localrank daemon
    finally:
        await runner.cleanup()


def test_endpoints() -> None:
    assert Endpoint.from_url("http://[::1]:9000") == Endpoint("::1", 9000)
    assert Endpoint("::1", 9000).url == "http://[::1]:9000"
    assert Endpoint.from_url("unix:/tmp/x.sock").url == "unix:/tmp/x.sock"
    wild = load_settings({"host": "0.0.0.0", "token": "t", "port": 9001}, environ={})
    assert Endpoint.from_settings(wild) == Endpoint("127.0.0.1", 9001)
