"""Local security middlewares, request ids and the access log, on the daemon's real app
(`make_app`, with a hashed bag-of-tokens backend standing in for the model's forward pass)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fake_embedder import hash_engine, hash_loader

from localrank.config import Settings, load_settings
from localrank.engine.core import Engine
from localrank.errors import ConfigError
from localrank.logs import request_id_var, setup_logging
from localrank.serve.app import make_app
from localrank.serve.middleware import SERVER_HEADER
from localrank.serve.security import bind_unix_socket, check_bind_safety, start_unix_site
from localrank.serve.state import STATE_KEY

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def settings(**flags: Any) -> Settings:
    return load_settings(flags, {}, config_file=Path("/nonexistent/config.toml"))


@pytest.fixture
def client_for(
    aiohttp_client: MakeClient, tmp_path: Path, minilm: Path
) -> Callable[..., Awaitable[Client]]:
    """A started daemon with the given settings (its state under tmp_path)."""

    async def make(**flags: Any) -> Client:
        app = make_app(settings(home=str(tmp_path / "home"), **flags), loader=hash_loader(minilm))
        client = await aiohttp_client(app)
        await app[STATE_KEY].ready.wait()
        return client

    return make


def has_cors_headers(response: aiohttp.ClientResponse) -> bool:
    return any(k.lower().startswith("access-control-") for k in response.headers)


# --- Host allow-list ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8765",
        "LOCALHOST:1",
        "127.0.0.1",
        "127.0.0.1:8765",
        "[::1]",
        "[::1]:8765",
        "box.lan:8765",
        "Box.Lan",
        "other.lan:1",
        "[fe80::1]:8765",
    ],
)
async def test_allowed_hosts_pass(client_for: Callable[..., Awaitable[Client]], host: str) -> None:
    client = await client_for(allowed_hosts=("box.lan", "other.lan:8765", "fe80::1"))
    response = await client.get("/v1/collections", headers={"Host": host})
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    "host",
    [
        "evil.com",
        "evil.com:8765",
        "0.0.0.0",
        "0.0.0.0:8765",
        "",
        "localhost.evil.com",
        "127.0.0.1.nip.io",
        "[::1",
        "::1",
        "localhost:http",
        "[::]:8765",
    ],
)
async def test_foreign_hosts_get_403(
    client_for: Callable[..., Awaitable[Client]], host: str
) -> None:
    client = await client_for(allowed_hosts=("box.lan",))
    response = await client.get("/v1/collections", headers={"Host": host})
    assert response.status == 403
    assert (await response.json())["error"]["type"] == "forbidden"


async def raw_request(client: Client, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_missing_host_header_gets_403(client_for: Callable[..., Awaitable[Client]]) -> None:
    client = await client_for()
    for request in (
        b"GET /v1/collections HTTP/1.0\r\n\r\n",
        b"GET /v1/collections HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
    ):
        status_line = (await raw_request(client, request)).split(b"\r\n", 1)[0]
        assert status_line.split()[1] == b"403", status_line
    ok = b"GET /v1/collections HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    assert (await raw_request(client, ok)).startswith(b"HTTP/1.1 200")


async def test_a_specific_bind_address_is_an_allowed_host(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    client = await client_for(host="192.168.1.5", token="t")
    auth = {"Authorization": "Bearer t"}
    assert (
        await client.get("/v1/collections", headers={"Host": "192.168.1.5:8765", **auth})
    ).status == 200
    assert (
        await client.get("/v1/collections", headers={"Host": "192.168.1.6", **auth})
    ).status == 403


# --- Origin and CORS ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["http://evil.com", "null", "http://localhost:3000", "https://127.0.0.1:8765"]
)
async def test_browser_origins_are_refused_without_cors_headers(
    client_for: Callable[..., Awaitable[Client]], origin: str
) -> None:
    client = await client_for()
    response = await client.post("/v1/embeddings", json={"input": "x"}, headers={"Origin": origin})
    assert response.status == 403
    assert not has_cors_headers(response)
    preflight = await client.options(
        "/v1/embeddings", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 403 and not has_cors_headers(preflight)


async def test_the_daemons_own_pages_are_not_cross_site(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    """/docs calls back into the daemon: whichever loopback name the page was opened under, and
    whichever the request's Host says, the daemon's own origin (its names, its port) is fine."""
    client = await client_for()
    for page in ("127.0.0.1", "localhost", "[::1]"):
        for host in ("127.0.0.1", "localhost"):
            headers = {
                "Origin": f"http://{page}:{client.port}",
                "Host": f"{host}:{client.port}",
                "Sec-Fetch-Site": "same-origin" if page == host else "same-site",
            }
            response = await client.post("/v1/embeddings", json={"input": "x"}, headers=headers)
            assert response.status == 200 and not has_cors_headers(response), (page, host)
    # the same names on another port are another origin (another local server's page)
    other = await client.post(
        "/v1/embeddings",
        json={"input": "x"},
        headers={"Origin": f"http://localhost:{client.port + 1}"},
    )
    assert other.status == 403
    https = await client.post(
        "/v1/embeddings",
        json={"input": "x"},
        headers={"Origin": f"https://localhost:{client.port}"},
    )
    assert https.status == 403


@pytest.mark.parametrize("path", ["/v1/collections", "/embeddings?text=secret", "/health"])
@pytest.mark.parametrize(
    ("site", "status"),
    [("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200)],
)
async def test_browser_requests_without_an_origin_follow_sec_fetch_site(
    client_for: Callable[..., Awaitable[Client]], path: str, site: str, status: int
) -> None:
    """An image tag or a no-cors fetch from another site sends no Origin, but says cross-site."""
    client = await client_for()
    response = await client.get(path, headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors"})
    assert response.status == status, await response.text()


async def test_an_allowed_origin_may_come_cross_site(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    client = await client_for(allowed_origins=("app://obsidian.md",))
    headers = {"Origin": "app://obsidian.md", "Sec-Fetch-Site": "cross-site"}
    assert (await client.get("/v1/collections", headers=headers)).status == 200


async def test_allowed_origin_gets_cors(client_for: Callable[..., Awaitable[Client]]) -> None:
    origin = "http://localhost:3000"
    client = await client_for(allowed_origins=(origin + "/",), token="t")
    preflight = await client.options(
        "/v1/embeddings",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status == 204  # before the token: browsers send none on preflight
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = {
        h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "content-type"} <= allowed

    response = await client.post(
        "/v1/embeddings",
        json={"input": "x"},
        headers={"Origin": origin, "Authorization": "Bearer t"},
    )
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "Origin" in response.headers.getall("Vary")
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    # Errors carry the CORS headers too, so the page can read why it failed.
    failed = await client.post("/v1/embeddings", json={"input": "x"}, headers={"Origin": origin})
    assert failed.status == 401
    assert failed.headers["Access-Control-Allow-Origin"] == origin


async def test_app_origins_get_cors_as_browsers_send_it(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    """Obsidian's renderer (app://obsidian.md), as Chromium sends it: a simple GET, a text/plain
    POST (fetch with a string body) and a preflighted JSON POST whose preflight asks for the
    headers a browser SDK adds (openai-node's X-Stainless-*) and for Private Network Access."""
    origin = "app://obsidian.md"
    client = await client_for(allowed_origins=(origin,))
    browser = {"Origin": origin, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "cross-site"}
    simple = await client.get("/api/tags", headers=browser)
    assert simple.status == 200
    assert simple.headers["Access-Control-Allow-Origin"] == origin
    assert "Origin" in simple.headers.getall("Vary")
    text_post = await client.post(
        "/api/show",
        data='{"model": "localrank-embed"}',
        headers={**browser, "Content-Type": "text/plain;charset=UTF-8"},
    )
    assert text_post.status == 200
    assert text_post.headers["Access-Control-Allow-Origin"] == origin
    asked = "authorization,content-type,x-stainless-os,x-stainless-retry-count"
    preflight = await client.options(
        "/v1/embeddings",
        headers={
            **browser,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower().replace(" ", "")
    assert allowed.split(",") == asked.split(",")
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Private-Network"] == "true"
    assert "Access-Control-Request-Headers" in preflight.headers["Vary"]
    post = await client.post("/v1/embeddings", json={"input": "x"}, headers=browser)
    assert post.status == 200 and post.headers["Access-Control-Allow-Origin"] == origin


async def test_preflight_echoes_only_well_formed_header_names(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    client = await client_for(allowed_origins=("app://obsidian.md",))
    preflight = await client.options(
        "/api/embed",
        headers={
            "Origin": "app://obsidian.md",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, bad header, x-ok",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type, x-ok"
    assert "Access-Control-Allow-Private-Network" not in preflight.headers


@pytest.mark.parametrize("origin", ["app://obsidian.md.evil.com", "app://obsidian", "null"])
async def test_only_the_exact_allowed_origin_passes(
    client_for: Callable[..., Awaitable[Client]], origin: str
) -> None:
    client = await client_for(allowed_origins=("app://obsidian.md",))
    for response in (
        await client.get("/api/tags", headers={"Origin": origin}),
        await client.options(
            "/api/embed", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        ),
    ):
        assert response.status == 403 and not has_cors_headers(response)


# --- bearer token ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Bearer s3cre", 401),
        ("Basic czNjcmV0", 401),
        ("s3cret", 401),
        ("Bearer s3cret", 200),
        ("bearer s3cret", 200),
    ],
)
async def test_token(
    client_for: Callable[..., Awaitable[Client]], authorization: str | None, status: int
) -> None:
    client = await client_for(token="s3cret")
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get("/v1/collections", headers=headers)
    assert response.status == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"]["type"] == "unauthorized"


async def test_no_token_configured_means_no_auth(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    client = await client_for()
    assert (await client.get("/v1/collections")).status == 200
    assert (
        await client.get("/v1/collections", headers={"Authorization": "Bearer x"})
    ).status == 200


async def test_health_without_token_is_minimal(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    client = await client_for(token="s3cret")
    anonymous = await client.get("/health")
    assert anonymous.status == 200 and await anonymous.json() == {"status": "ok"}
    full = await client.get("/health", headers={"Authorization": "Bearer s3cret"})
    assert (await full.json())["model"] == "fake/hash-bow"


async def test_a_degraded_daemon_says_so_without_token_too(
    client_for: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    client = await client_for(token="s3cret")
    (tmp_path / "home" / "data" / "localrank.db").unlink()  # its store is lost
    anonymous = await client.get("/health")
    assert anonymous.status == 200 and await anonymous.json() == {"status": "degraded"}
    full = await (await client.get("/health", headers={"Authorization": "Bearer s3cret"})).json()
    assert full["status"] == "degraded" and "is gone" in full["store"]["reason"]


async def test_health_while_loading_without_token_is_minimal(
    aiohttp_client: MakeClient, tmp_path: Path, minilm: Path
) -> None:
    release = threading.Event()

    def slow(s: Settings) -> Engine:
        release.wait(30)
        return hash_engine(minilm)

    app = make_app(settings(home=str(tmp_path), token="s3cret"), loader=slow)
    client = await aiohttp_client(app)
    try:
        loading = await client.get("/health")
        assert loading.status == 503 and await loading.json() == {"status": "unavailable"}
        full = await client.get("/health", headers={"Authorization": "Bearer s3cret"})
        assert full.status == 503 and (await full.json())["status"] == "loading"
    finally:
        release.set()
    await app[STATE_KEY].ready.wait()
    assert (await client.get("/health")).status == 200


async def test_host_check_comes_before_the_token(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    client = await client_for(token="s3cret")
    assert (await client.get("/health", headers={"Host": "evil.com"})).status == 403


# --- body rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data", 415),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
    ],
)
async def test_post_bodies_must_be_json(
    client_for: Callable[..., Awaitable[Client]], content_type: str, status: int
) -> None:
    client = await client_for()
    response = await client.post(
        "/v1/embeddings", data=b'{"input": "x"}', headers={"Content-Type": content_type}
    )
    assert response.status == status
    if status == 415:
        assert (await response.json())["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain;charset=UTF-8", 200),  # fetch() with a string body and no Content-Type
        ("application/x-www-form-urlencoded", 200),  # `curl -d`, as Ollama's docs show it
        ("application/json", 200),
        ("multipart/form-data", 415),
    ],
)
async def test_ollama_routes_read_json_whatever_its_label(
    client_for: Callable[..., Awaitable[Client]], content_type: str, status: int
) -> None:
    """Ollama parses every body as JSON; its clients rely on that (and Origin checks, not the
    media type, keep web pages out)."""
    client = await client_for()
    response = await client.post(
        "/api/embed", data=b'{"input": "x"}', headers={"Content-Type": content_type}
    )
    assert response.status == status
    if status == 415:
        assert set(await response.json()) == {"error"}  # Ollama's error shape


async def test_post_without_body_needs_no_content_type(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    client = await client_for()
    assert (await client.post("/v1/compact")).status == 200


async def test_body_size_limit(client_for: Callable[..., Awaitable[Client]]) -> None:
    client = await client_for(max_body_bytes=1000)
    small = await client.post("/v1/embeddings", json={"input": "x" * 100})
    assert small.status == 200
    big = await client.post("/v1/embeddings", json={"input": "x" * 2000})
    assert big.status == 413 and (await big.json())["error"]["code"] == "too_large"

    async def chunks(total: int) -> AsyncIterator[bytes]:
        body = json.dumps({"input": "y" * total}).encode()
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    headers = {"Content-Type": "application/json"}
    chunked = await client.post("/v1/embeddings", data=chunks(5000), headers=headers)
    assert chunked.status == 413 and (await chunked.json())["error"]["code"] == "too_large"
    chunked_ok = await client.post("/v1/embeddings", data=chunks(50), headers=headers)
    assert chunked_ok.status == 200
    assert len((await chunked_ok.json())["data"]) == 1


async def test_batch_limit(client_for: Callable[..., Awaitable[Client]]) -> None:
    client = await client_for(max_inputs=10)
    ok = await client.post("/v1/embeddings", json={"input": ["x"] * 10})
    assert ok.status == 200
    over = await client.post("/v1/embeddings", json={"input": ["x"] * 11})
    assert over.status == 413 and "limit is 10" in (await over.json())["error"]["message"]


# --- refusing unsafe binds -----------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_network_bind_without_token_refuses_to_start(host: str) -> None:
    with pytest.raises(ConfigError, match="without a token"):
        check_bind_safety(settings(host=host))
    check_bind_safety(settings(host=host, token="t"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_bind_needs_no_token(host: str) -> None:
    check_bind_safety(settings(host=host))


# --- unix socket -----------------------------------------------------------------------------


async def test_unix_socket_is_private_and_serves(tmp_path: Path, minilm: Path) -> None:
    path = tmp_path / "run" / "lr.sock"
    app = make_app(settings(home=str(tmp_path / "home")), loader=hash_loader(minilm))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await start_unix_site(runner, path)
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s:
            async with s.get("http://localhost/v1/collections") as response:
                assert response.status == 200
            async with s.get("http://evil.com/v1/collections") as response:
                assert response.status == 403
        with pytest.raises(ConfigError, match="already serving"):
            bind_unix_socket(path)
    finally:
        await runner.cleanup()


def test_unix_socket_replaces_a_stale_file_but_not_a_regular_one(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))
    dead.close()  # the file stays, nobody listens: what a crash leaves behind
    sock = bind_unix_socket(stale)
    sock.close()
    assert stat.S_IMODE(stale.stat().st_mode) == 0o600
    regular = tmp_path / "file.sock"
    regular.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        bind_unix_socket(regular)


# --- request ids and the access log ----------------------------------------------------------


async def test_request_ids_and_access_log(client_for: Callable[..., Awaitable[Client]]) -> None:
    stream = io.StringIO()
    setup_logging(settings(log_format="json", log_level="info"), stream)
    try:
        client = await client_for()
        given = await client.get("/v1/collections", headers={"X-Request-ID": "abc-123"})
        assert given.headers["X-Request-ID"] == "abc-123"
        assert given.headers["Server"] == SERVER_HEADER
        made = await client.get("/v1/collections", headers={"X-Request-ID": "bad id <script>"})
        assert len(made.headers["X-Request-ID"]) == 32 and "<" not in made.headers["X-Request-ID"]
        refused = await client.get("/v1/collections", headers={"Host": "evil.com"})
        assert refused.status == 403 and refused.headers["X-Request-ID"]
        missing = await client.get("/nope")
        assert missing.status == 404 and missing.headers["X-Request-ID"]
    finally:
        logging.getLogger().removeHandler(setup_logging(settings(), io.StringIO()))

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "localrank.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("GET", "/v1/collections", 200),
        ("GET", "/v1/collections", 200),
        ("GET", "/v1/collections", 403),
        ("GET", "/nope", 404),
    ]
    assert access[0]["request_id"] == "abc-123"
    assert access[1]["request_id"] == made.headers["X-Request-ID"]
    assert all(isinstance(a["duration_ms"], float) and a["duration_ms"] >= 0 for a in access)


def test_text_logs_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = setup_logging(settings(log_level="debug"), stream)
    try:
        token = request_id_var.set("req-42")
        logging.getLogger("localrank.test").info("hello %s", "world")
        request_id_var.reset(token)
        logging.getLogger("localrank.test").debug("outside")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert "[req-42] hello world" in first and "INFO" in first
    assert "[-] outside" in second
    # Calling setup twice replaces its handler instead of doubling every line.
    h1 = setup_logging(settings(), io.StringIO())
    h2 = setup_logging(settings(), io.StringIO())
    try:
        assert h1 not in logging.getLogger().handlers and h2 in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(h2)


async def test_a_client_cannot_forge_log_lines(
    client_for: Callable[..., Awaitable[Client]],
) -> None:
    stream = io.StringIO()
    handler = setup_logging(settings(log_format="text", log_level="info"), stream)
    try:
        client = await client_for()
        forged = (
            "/x%0a2026-01-01 00:00:00,000 INFO    localrank.access [forged] POST /v1/compact 200"
        )
        assert (await client.get(forged)).status == 404
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [line for line in stream.getvalue().splitlines() if "localrank.access" in line]
    assert len(lines) == 1 and "[forged]" in lines[0] and "/x\\n2026-01-01" in lines[0]
    assert not any(line.startswith("2026-01-01") for line in stream.getvalue().splitlines())
