"""The overload burst: `n` one-text requests at once, each on its own connection. Every one
must be answered 200, or 429 with Retry-After, within `deadline` seconds; the daemon's RSS
`settle` seconds later is compared with its RSS just before the burst.

Before the burst the daemon serves `warmup` requests like the burst's, one after another: the
RSS of a daemon that has been serving, whose memory-mapped weights have the rows of the words
it has seen paged in (a fresh daemon has touched a few hundred rows of its embedding table; a
burst of random words pages in tens of MB more of it, file-backed and reclaimable, which says
nothing about what the burst allocated). Anonymous and file-backed RSS are reported apart."""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field

import aiohttp

from bench.measure import rss_parts_mb
from bench.processes import Daemon
from bench.soakkit import Texts


@dataclass
class Burst:
    requests: int
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "429", "429 no Retry-After"..
    slowest_s: float = float("nan")
    rss_before: float = float("nan")
    rss_peak: float = float("nan")
    rss_after: float = float("nan")
    anon_before: float = float("nan")
    anon_after: float = float("nan")
    file_before: float = float("nan")
    file_after: float = float("nan")

    @property
    def answered_properly(self) -> int:
        return self.statuses.get("200", 0) + self.statuses.get("429", 0)

    @property
    def rss_change(self) -> float:
        return (self.rss_after - self.rss_before) / self.rss_before


def raise_file_limit(need: int) -> None:
    """This client holds `need` sockets at once: lift its own soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need + 256), hard))


async def fire(daemon: Daemon, burst: Burst, texts: Texts, deadline: float) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=deadline)
    bodies = [{"input": texts.short()} for _ in range(burst.requests)]
    t0 = time.perf_counter()
    slowest = [0.0]

    async def one(s: aiohttp.ClientSession, body: dict[str, str]) -> str:
        try:
            async with s.post(daemon.base + "/v1/embeddings", json=body) as r:
                await r.read()
                kind = str(r.status)
                if r.status == 429 and "Retry-After" not in r.headers:
                    kind = "429 without Retry-After"
        except asyncio.TimeoutError:
            kind = f"no answer within {deadline:.0f}s"
        except aiohttp.ClientError as exc:
            kind = type(exc).__name__
        slowest[0] = max(slowest[0], time.perf_counter() - t0)
        return kind

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        kinds = await asyncio.gather(*(one(s, b) for b in bodies))
    for kind in kinds:
        burst.statuses[kind] = burst.statuses.get(kind, 0) + 1
    burst.slowest_s = slowest[0]


def overload_burst(
    model: str,
    *,
    env: dict[str, str],
    requests: int,
    deadline: float,
    settle: float,
    seed: int,
    warmup: int = 300,
) -> Burst:
    raise_file_limit(requests)
    texts = Texts(seed)
    burst = Burst(requests)
    daemon = Daemon(model, extra=["--backend", "cpu"], env=env)
    daemon.start()
    try:

        async def main() -> None:
            # Ordinary requests first, so "before" is a daemon that has been serving.
            warm = aiohttp.ClientSession()
            async with warm:
                for _ in range(warmup):
                    async with warm.post(
                        daemon.base + "/v1/embeddings", json={"input": texts.short()}
                    ) as r:
                        await r.read()
            await asyncio.sleep(3)
            burst.rss_before = daemon.rss()[0]
            burst.anon_before, burst.file_before = rss_parts_mb(daemon.pid)
            await fire(daemon, burst, texts, deadline)
            burst.rss_peak = daemon.rss()[1]
            await asyncio.sleep(settle)
            burst.rss_after = daemon.rss()[0]
            burst.anon_after, burst.file_after = rss_parts_mb(daemon.pid)

        asyncio.run(main())
    finally:
        daemon.stop()
    print(
        f"  {requests} at once: {burst.statuses}, last answer after {burst.slowest_s:.1f}s; RSS "
        f"before {burst.rss_before:.0f}, peak {burst.rss_peak:.0f}, {settle:.0f}s after "
        f"{burst.rss_after:.0f} MiB ({burst.rss_change:+.1%}); anonymous {burst.anon_before:.0f} "
        f"-> {burst.anon_after:.0f}, file-backed {burst.file_before:.0f} -> "
        f"{burst.file_after:.0f} MiB",
        flush=True,
    )
    return burst
