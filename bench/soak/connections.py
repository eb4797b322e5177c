"""Idle, slow and stalled connections against a live daemon whose open-file limit is 1,024.

1. 1,100 idle connections held open (more than the daemon's file limit allows), then a normal
   client's request: target answered within 1 s.
2. 50 slow-drip connections (headers one byte a second), 50 that send nothing, 50 that stop
   half way through a body: target every one closed by the server within 30 s.
3. How many log lines the daemon wrote about it (repeated warnings are rate-limited).

  python -m bench.soak --only connections
"""

from __future__ import annotations

import asyncio
import http.client
import resource
import time

from bench.kit.daemon import Daemon

FILE_LIMIT = 1024
TARGET_ANSWER_S = 1.0
TARGET_CLOSE_S = 30.0


def timed_request(port: int) -> float:
    """Seconds for one ordinary embedding request on a fresh connection (inf on failure)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/embeddings",
            body='{"input": "an ordinary request"}',
            headers={"Content-Type": "application/json"},
        )
        ok = conn.getresponse().status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return time.perf_counter() - start if ok else float("inf")


async def hold_idle(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(n):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            writers.append(w)
        except OSError:
            break
    return writers


async def closed_after(port: int, kind: str, limit: float) -> float:
    """Seconds until the server closes a misbehaving connection (limit + 1 if it never does)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"x" * 200 + b"\r\n\r\n"
    if kind == "body":
        writer.write(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"in'
        )
    sent = 0
    try:
        while time.monotonic() - start < limit + 1:
            if kind == "slow" and sent < len(head):
                writer.write(head[sent : sent + 1])
                sent += 1
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except asyncio.TimeoutError:
                continue
            if not data or reader.at_eof():
                return time.monotonic() - start
            # an answer (a 408, say): wait for the close that follows it
    except ConnectionError:
        return time.monotonic() - start
    finally:
        writer.close()
    return limit + 1


async def run(port: int, idle: int, slow: int) -> dict[str, float]:
    held = await hold_idle(port, idle)
    await asyncio.sleep(0.5)
    answer_s = await asyncio.to_thread(timed_request, port)
    for w in held:
        w.close()
    tasks = [
        closed_after(port, kind, TARGET_CLOSE_S)
        for kind in ("slow", "silent", "body")
        for _ in range(slow)
    ]
    closes = await asyncio.gather(*tasks)
    return {
        "idle_held": float(len(held)),
        "answer_s": answer_s,
        "close_max_s": max(closes),
        "close_p50_s": sorted(closes)[len(closes) // 2],
    }


def connections_soak(model: str, *, idle: int, slow: int) -> list[tuple[str, str, bool]]:
    """Run the three parts against a daemon limited to FILE_LIMIT open files: (target, measured
    figure, passed) for each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client holds >1,100 sockets
    daemon = Daemon(model, file_limit=FILE_LIMIT)
    daemon.start()
    try:
        figures = asyncio.run(run(daemon.port, idle, slow))
        log = daemon.log_tail(10**7)
    finally:
        daemon.stop()
    lines = len(log.splitlines())
    return [
        (
            f"a normal request while {int(figures['idle_held']):,} idle connections are held "
            f"(file limit {FILE_LIMIT:,}) answered within {TARGET_ANSWER_S:.0f} s",
            f"{figures['answer_s']:.3f} s",
            figures["answer_s"] <= TARGET_ANSWER_S,
        ),
        (
            f"{slow} each of slow-drip, silent and stalled-body connections closed by the server "
            f"within {TARGET_CLOSE_S:.0f} s",
            f"max {figures['close_max_s']:.1f} s (p50 {figures['close_p50_s']:.1f} s)",
            figures["close_max_s"] <= TARGET_CLOSE_S,
        ),
        ("daemon log lines over the whole run (rate-limited warnings)", f"{lines}", lines < 500),
    ]
