"""The memory soak: POST /v1/embeddings with one text of 1-400 random words, `concurrency`
clients, texts never repeated; the daemon's RSS sampled from /proc meanwhile.

Growth is measured after a warm-up (the allocator and the kernel caches fill first): RSS at the
end of the run against RSS at the end of the warm-up, both under load, and as the least-squares
slope of the RSS samples per 1,000 requests, which is what a daemon running for weeks would
show. A run can stop at a deadline before its request count; the slope then says what the whole
count would have grown to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from bench.measure import rss_mb
from bench.processes import Daemon
from bench.soakkit import Texts, session

WORDS = (1, 400)


@dataclass
class MemoryRun:
    label: str
    target_requests: int
    warmup: int
    requests: int = 0  # measured requests answered 200 (after the warm-up)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)  # "http 429", "TimeoutError"...
    seconds: float = 0.0
    rss_start: float = float("nan")  # MiB, the daemon idle and healthy
    rss_warm: float = float("nan")  # at the end of the warm-up
    rss_end: float = float("nan")  # at the end of the run
    rss_peak: float = float("nan")
    rss_settled: float = float("nan")  # after the load, idle for a few seconds
    slope_per_1000: float = float("nan")  # MiB per 1,000 requests after the warm-up

    @property
    def growth(self) -> float:
        """(end - warm) / warm."""
        return (self.rss_end - self.rss_warm) / self.rss_warm

    @property
    def projected_growth(self) -> float:
        """The slope over `target_requests`, relative to the warm RSS."""
        return self.slope_per_1000 * self.target_requests / 1000 / self.rss_warm

    @property
    def complete(self) -> bool:
        return self.requests >= self.target_requests

    def kinds_text(self) -> str:
        return f": {self.error_kinds}" if self.error_kinds else ""

    def line(self) -> str:
        return (
            f"{self.label}: {self.requests} requests in {self.seconds:.0f}s "
            f"({self.errors} errors{self.kinds_text()}); RSS idle {self.rss_start:.0f}, "
            f"after warm-up {self.rss_warm:.0f}, end {self.rss_end:.0f}, peak "
            f"{self.rss_peak:.0f}, settled {self.rss_settled:.0f} MiB; growth "
            f"{self.growth:+.1%}, slope {self.slope_per_1000:+.1f} MiB / 1,000 requests"
        )


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in points) / sxx


async def drive(
    daemon: Daemon,
    run: MemoryRun,
    *,
    concurrency: int,
    deadline: float,
    seed: int,
    progress_every: int = 1000,
) -> None:
    """Warm-up then the measured requests (or until `deadline`, a monotonic time)."""
    texts = Texts(seed)
    url = daemon.base + "/v1/embeddings"
    total = run.warmup + run.target_requests
    counters = {"sent": 0, "ok": 0, "errors": 0}
    samples: list[tuple[float, float]] = []  # (requests answered after warm-up, MiB)
    run.rss_start = daemon.rss()[0]
    t_measure = [0.0]

    async def client(s: aiohttp.ClientSession) -> None:
        while counters["sent"] < total and time.monotonic() < deadline:
            counters["sent"] += 1
            body = {"input": texts.text(*WORDS), "encoding_format": "float"}
            kind = ""
            try:
                async with s.post(url, json=body) as r:
                    await r.read()
                    kind = "" if r.status == 200 else f"http {r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                kind = type(exc).__name__
            counters["errors" if kind else "ok"] += 1
            if kind:
                run.error_kinds[kind] = run.error_kinds.get(kind, 0) + 1

    async def sampler() -> None:
        warm_done = False
        last_print = 0
        while True:
            answered = counters["ok"] + counters["errors"]
            rss = daemon.rss()[0]
            if not warm_done and answered >= run.warmup:
                warm_done = True
                run.rss_warm = rss
                t_measure[0] = time.monotonic()
            if warm_done:
                samples.append((answered - run.warmup, rss))
            if answered - last_print >= progress_every:
                last_print = answered
                print(f"    {answered:6d} requests, RSS {rss:.0f} MiB", flush=True)
            if answered >= total or all(t.done() for t in workers):
                return
            await asyncio.sleep(0.5)

    async with session(concurrency + 2) as s:
        workers = [asyncio.create_task(client(s)) for _ in range(concurrency)]
        sample_task = asyncio.create_task(sampler())
        await asyncio.gather(*workers)
        await sample_task
    run.rss_end = daemon.rss()[0]
    run.rss_peak = daemon.rss()[1]
    run.seconds = time.monotonic() - t_measure[0] if t_measure[0] else 0.0
    run.requests = max(0, counters["ok"] - run.warmup)
    run.errors = counters["errors"]
    run.slope_per_1000 = slope([(n / 1000, mb) for n, mb in samples]) if samples else float("nan")
    await asyncio.sleep(5)
    run.rss_settled = rss_mb(daemon.pid)[0]


def memory_soak(
    model: str,
    *,
    label: str,
    env: dict[str, str],
    requests: int,
    warmup: int,
    concurrency: int,
    seconds: float,
    seed: int,
) -> MemoryRun:
    """Start a daemon, drive it, stop it."""
    run = MemoryRun(label, requests, warmup)
    daemon = Daemon(model, extra=["--backend", "cpu"], env=env)
    daemon.start()
    try:
        print(f"  [{label}] daemon up, RSS {daemon.rss()[0]:.0f} MiB", flush=True)
        deadline = time.monotonic() + seconds
        asyncio.run(drive(daemon, run, concurrency=concurrency, deadline=deadline, seed=seed))
    finally:
        daemon.stop()
    print("  " + run.line(), flush=True)
    return run
