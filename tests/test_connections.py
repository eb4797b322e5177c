"""Connections that cannot hold the daemon: parser errors as JSON, idle and slow clients closed,
a cap on open connections that evicts idle ones, and repeated warnings logged once."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from fake_embedder import hash_loader

from localrank.config import load_settings
from localrank.logs import RepeatFilter
from localrank.serve.app import make_app
from localrank.serve.connections import (
    ACCEPT_BACKLOG,
    LINGER_SECONDS,
    RESERVED_FDS,
    connection_cap,
    make_runner,
)
from localrank.serve.state import STATE_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def daemon(tmp_path: Path, minilm: Path) -> AsyncIterator[int]:
    """A daemon on a real TCP port with short timeouts and a cap of 20 connections."""
    settings = load_settings(
        {
            "home": str(tmp_path),
            "idle_timeout_s": 1.0,
            "body_timeout_s": 1.0,
            "max_connections": 20,
        },
        environ={},
    )
    app = make_app(settings, loader=hash_loader(minilm))
    runner = make_runner(app, settings, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await app[STATE_KEY].ready.wait()
    try:
        yield port
    finally:
        await runner.cleanup()


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


def split(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_parser_errors_are_json_with_the_limit_in_bytes(daemon: int) -> None:
    long_header = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"
    status, body = split(await exchange(daemon, long_header))
    assert status == 400 and "8190-byte limit" in body["error"]["message"]
    duplicate = b"GET /health HTTP/1.1\r\nHost: localhost\r\nHost: evil.com\r\n\r\n"
    status, body = split(await exchange(daemon, duplicate))
    assert status == 400 and "Duplicate 'Host'" in body["error"]["message"]


async def test_slow_drip_headers_and_silent_connections_are_closed(daemon: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon)
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", daemon)
    start = time.monotonic()
    request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"x" * 100
    closed_at = None
    for byte in request:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed_at = time.monotonic()
            break
        if reader.at_eof():
            closed_at = time.monotonic()
            break
        await asyncio.sleep(0.1)
        if await _eof_soon(reader):
            closed_at = time.monotonic()
            break
    assert closed_at is not None and closed_at - start < 3.0
    assert await _closed_silently(silent_reader, 3.0)
    writer.close()
    silent_writer.close()


async def _eof_soon(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.01) == b""
    except asyncio.TimeoutError:
        return False
    except ConnectionError:  # a reset is a close too: the kernel may answer unread bytes with RST
        return True


async def _closed_silently(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Closed with nothing sent: an orderly EOF or a reset both count."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionError:
        return True


async def test_a_stalled_body_gets_408(daemon: int) -> None:
    start = time.monotonic()
    raw = await exchange(
        daemon,
        b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        b'{"input": ',
    )
    status, body = split(raw)
    assert status == 408 and "body_timeout_s" in body["error"]["message"]
    assert time.monotonic() - start < 1.0 + LINGER_SECONDS + 1.0  # answered, then closed


async def test_idle_connections_past_the_cap_make_room_for_real_clients(daemon: int) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", daemon) for _ in range(40)]
    try:
        start = time.monotonic()
        raw = await exchange(
            daemon,
            b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            wait=1.0,
        )
        assert raw.startswith(b"HTTP/1.1 200") and time.monotonic() - start < 1.0
        # the oldest idle ones were closed to make room
        assert await _closed_silently(idle[0][0], 1.0)
    finally:
        for _, w in idle:
            w.close()


def test_the_cap_stays_below_the_file_limit() -> None:
    # Room for one whole accept batch: asyncio accepts that many before the cap is checked.
    assert RESERVED_FDS > ACCEPT_BACKLOG
    assert connection_cap(0, 1024) == 1024 - RESERVED_FDS
    assert connection_cap(100, 1024) == 100
    assert connection_cap(5000, 1024) == 1024 - RESERVED_FDS


def test_repeated_warnings_are_logged_once_per_window() -> None:
    flt = RepeatFilter(window=60.0)

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.makeLogRecord({"name": "x", "msg": msg, "levelno": level, "args": ()})

    passed = [flt.filter(record("too many open files: %s")) for _ in range(1000)]
    assert passed.count(True) == 1
    assert flt.filter(record("another message"))
    assert all(flt.filter(record("info", logging.INFO)) for _ in range(10))
    flt.window = 0.0  # the window has passed: the next one says how many were held back
    r = record("too many open files: %s")
    assert flt.filter(r) and "999 more like it" in str(r.msg)
