"""Head-of-line: a one-text request's latency while something big is in flight, against the same
requests on the idle daemon, and the daemon's RSS meanwhile.

The big things, each on a client of its own while a prober sends one-text requests one after
another (a short pause between them):
  (a) a single 30 MB text (POST /v1/embeddings), sent again each time it is answered;
  (b) one request of 2,000 texts x 2,000 words;
  (c) a synchronous ingest of a 9 MB document (POST /v1/collections/{name}/documents).
(b) and (c) take minutes on a 2-core CPU; each runs for `window` seconds, then its client
disconnects, and the time until the daemon's queue is empty shows that its work was dropped.
Each load's reference is the idle daemon probed the same way just before and just after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from bench.kit.daemon import Daemon
from bench.kit.measure import RssSampler, pct
from tests.stress import Texts, post_one, session

PROBE_GAP = 0.05  # seconds between two one-text requests


@dataclass
class Probe:
    """One-text requests sent one after another: latencies in ms, and failures by kind."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return pct(self.latencies, 50)

    @property
    def p95(self) -> float:
        return pct(self.latencies, 95)

    async def run(
        self, s: aiohttp.ClientSession, base: str, texts: Texts, stop: asyncio.Event, gap: float
    ) -> None:
        while not stop.is_set():
            kind, ms = await post_one(s, base + "/v1/embeddings", {"input": texts.short()})
            if kind:
                self.errors[kind] = self.errors.get(kind, 0) + 1
            else:
                self.latencies.append(ms)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)


async def queue_depth(s: aiohttp.ClientSession, base: str) -> float:
    """localrank_queue_depth from /metrics: requests waiting for or in the model."""
    async with s.get(base + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("localrank_queue_depth "):
                return float(line.split()[1])
    return float("nan")


async def wait_idle(s: aiohttp.ClientSession, base: str, timeout: float) -> float:
    """Seconds until the daemon's queue is empty (nan if not within `timeout`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await queue_depth(s, base) == 0:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    return float("nan")


@dataclass
class Load:
    """One big thing in flight, and the idle daemon measured right before and after it (the
    machine may be shared: the reference is taken in the same minute)."""

    name: str
    body_bytes: int
    probe: Probe = field(default_factory=Probe)
    idle: Probe = field(default_factory=Probe)
    rss_peak: float = float("nan")
    outcome: str = ""  # what happened to the big request(s)
    drained_s: float = float("nan")  # disconnect -> empty queue


async def with_probe(
    daemon: Daemon,
    texts: Texts,
    load: Load,
    big: Callable[[aiohttp.ClientSession], Awaitable[str]],
    window: float,
) -> None:
    """Run `big` for at most `window` seconds while probing; then cancel it (the client goes)."""
    stop = asyncio.Event()
    async with session(4, timeout=3600) as s, session(4) as ps, RssSampler(daemon.pid) as rss:
        task = asyncio.create_task(big(s))
        await asyncio.sleep(0.2)  # the big request is on its way
        prober = asyncio.create_task(load.probe.run(ps, daemon.base, texts, stop, PROBE_GAP))
        done, _ = await asyncio.wait({task}, timeout=window)
        stop.set()
        await prober
        if task in done:
            load.outcome = task.result()
        else:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            load.outcome = f"still running after {window:.0f}s: client disconnected"
            load.drained_s = await wait_idle(ps, daemon.base, 120)
    load.rss_peak = rss.peak


def thirty_mb(texts: Texts) -> tuple[bytes, Callable[[aiohttp.ClientSession, str], Awaitable[str]]]:
    text = texts.document(30 * 1024 * 1024).replace("\n", " ")
    body = json.dumps({"input": text}).encode()

    async def big(s: aiohttp.ClientSession, base: str) -> str:
        n, t0 = 0, time.perf_counter()
        while True:  # again and again until the window closes
            async with s.post(
                base + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
            ) as r:
                payload = await r.json()
                if r.status != 200:
                    return f"HTTP {r.status}: {str(payload)[:200]}"
                n += 1
                truncated = payload["usage"].get("truncated_inputs")
                print(
                    f"    30 MB text #{n} answered in {time.perf_counter() - t0:.2f}s "
                    f"(truncated_inputs {truncated})",
                    flush=True,
                )
                t0 = time.perf_counter()

    return body, big


def many_long(texts: Texts) -> tuple[bytes, Callable[[aiohttp.ClientSession, str], Awaitable[str]]]:
    inputs = [texts.text(2000, 2000) for _ in range(2000)]
    body = json.dumps({"input": inputs}).encode()
    del inputs

    async def big(s: aiohttp.ClientSession, base: str) -> str:
        t0 = time.perf_counter()
        async with s.post(
            base + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
        ) as r:
            await r.read()
            return f"HTTP {r.status} in {time.perf_counter() - t0:.1f}s"

    return body, big


def ingest(texts: Texts) -> tuple[bytes, Callable[[aiohttp.ClientSession, str], Awaitable[str]]]:
    doc = {"id": "nine-mb", "text": texts.document(9 * 1024 * 1024), "source": "soak.md"}
    body = json.dumps({"documents": [doc], "async": False}).encode()

    async def big(s: aiohttp.ClientSession, base: str) -> str:
        t0 = time.perf_counter()
        async with s.post(base + "/v1/collections", json={"name": "soak"}) as r:
            await r.read()
        async with s.post(
            base + "/v1/collections/soak/documents",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as r:
            payload = await r.text()
            return f"HTTP {r.status} in {time.perf_counter() - t0:.1f}s: {payload[:120]}"

    return body, big


async def idle_probe(
    daemon: Daemon, texts: Texts, seconds: float, probe: Probe | None = None
) -> Probe:
    """One-text requests on the idle daemon for `seconds`, after 10 unmeasured ones (added to
    `probe` if given)."""
    probe = probe or Probe()
    stop = asyncio.Event()
    async with session(4) as s:
        for _ in range(10):
            await post_one(s, daemon.base + "/v1/embeddings", {"input": texts.short()})
        task = asyncio.create_task(probe.run(s, daemon.base, texts, stop, PROBE_GAP))
        await asyncio.sleep(seconds)
        stop.set()
        await task
    return probe


@dataclass
class HeadOfLine:
    rss_idle: float
    loads: list[Load]


LOADS = {"a": ("(a) a 30 MB text", thirty_mb), "b": ("(b) 2,000 texts x 2,000 words", many_long)}
LOADS["c"] = ("(c) sync ingest of a 9 MB document", ingest)


def head_of_line(
    model: str,
    *,
    env: dict[str, str],
    window: float,
    idle_seconds: float,
    seed: int,
    which: str = "abc",
) -> HeadOfLine:
    texts = Texts(seed)
    daemon = Daemon(model, extra=["--backend", "cpu"], env=env)
    daemon.start()
    loads: list[Load] = []
    try:

        async def main() -> HeadOfLine:
            await idle_probe(daemon, texts, 2)  # the first requests of a fresh daemon
            rss_idle = daemon.rss()[0]
            print(f"  idle RSS {rss_idle:.0f} MiB", flush=True)
            for name, make in (LOADS[k] for k in which):
                body, big = make(texts)
                load = Load(name, len(body))
                print(f"  {name}: body {len(body) / 2**20:.1f} MiB", flush=True)
                await idle_probe(daemon, texts, idle_seconds / 2, load.idle)
                await with_probe(daemon, texts, load, lambda s, b=big: b(s, daemon.base), window)
                del body
                await idle_probe(daemon, texts, idle_seconds / 2, load.idle)
                p, i = load.probe, load.idle
                print(
                    f"    one-text: {len(p.latencies)} answered, p50 {p.p50:.1f} ms, p95 "
                    f"{p.p95:.1f} ms, errors {p.errors or 0}; idle before/after: "
                    f"{len(i.latencies)}, p50 {i.p50:.1f} ms, p95 {i.p95:.1f} ms; RSS peak "
                    f"{load.rss_peak:.0f} MiB; {load.outcome}; queue empty "
                    f"{load.drained_s:.1f}s after disconnect",
                    flush=True,
                )
                loads.append(load)
            return HeadOfLine(rss_idle, loads)

        return asyncio.run(main())
    finally:
        daemon.stop()
