"""The load generator: HTTP requests against a running daemon, in a closed loop (N workers, each
sending when its last request answered) or an open loop (fixed-rate arrivals), and the search
for the highest rate that keeps p95 under a target.

Every request carries texts from a TextPool, never sent before in the run, so the daemon's
embedding cache never answers for the model.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.kit.measure import RssSampler, fmt, pct, rss_mb


class TextPool:
    """Hands out texts never used before in this run (the daemon caches embeddings by text)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.i = 0
        self.reused = 0  # times the pool wrapped around: cache hits became possible

    def take(self, k: int) -> list[str]:
        out = []
        for _ in range(k):
            if self.i >= len(self.texts):
                self.i = 0
                self.reused += 1
            out.append(self.texts[self.i])
            self.i += 1
        return out


class Client:
    """One embedding route of the daemon: the OpenAI-compatible one or localrank's native one."""

    def __init__(self, base: str, route: str, input_type: str = "document") -> None:
        self.base = base
        self.route = route
        self.input_type = input_type  # "query": each text gets the model's query instruction
        self.url = base + ("/v1/embeddings" if route == "openai" else "/api/v1/embed")

    def body(self, texts: list[str]) -> dict[str, Any]:
        if self.route == "openai":
            body: dict[str, Any] = {"input": texts, "encoding_format": "float"}
        else:
            body = {"texts": texts}
        if self.input_type == "query":
            body["input_type"] = "query"
        return body

    @staticmethod
    def count(payload: dict[str, Any]) -> int:
        """Vectors in a response body of either route."""
        if "data" in payload:
            return len(payload["data"])
        return len(payload.get("vectors", []))

    async def post(self, session: Any, texts: list[str], *, check: bool) -> tuple[bool, str]:
        """(ok, error kind). `check` parses the body and verifies one vector per text."""
        try:
            async with session.post(self.url, json=self.body(texts)) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    return False, f"http {resp.status}"
                if check:
                    n = self.count(json.loads(raw))
                    if n != len(texts):
                        return False, f"{n} vectors for {len(texts)} texts"
                return True, ""
        except asyncio.TimeoutError:
            return False, "timeout"
        except Exception as exc:  # connection reset etc.: count it, keep going
            return False, type(exc).__name__


def session(limit: int, timeout_s: float) -> Any:
    """An aiohttp session with up to `limit` kept-alive connections to the daemon."""
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


# --- closed loop -----------------------------------------------------------------------------


@dataclass
class LevelResult:
    """One closed-loop level: latencies in ms, rates per second, the daemon's RSS in MiB."""

    level: str
    concurrency: int
    texts_per_request: int
    requests: int = 0
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    max_ms: float = float("nan")
    req_per_s: float = 0.0
    texts_per_s: float = 0.0
    rss_mb: float = float("nan")
    rss_peak_mb: float = float("nan")
    background_cpu: float = float("nan")
    error_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class Timed:
    """What the measured part of a closed-loop level saw."""

    latencies: list[float]  # ms, successful requests only
    errors: dict[str, int]  # error kind -> count
    seconds: float
    peak_rss_mb: float  # highest RSS sampled while the level ran (0.0 if never read)


async def warm_up(
    s: Any, client: Client, pool: TextPool, *, concurrency: int, per_request: int, n: int
) -> None:
    """Open the connections and let the daemon see this request shape; not measured."""
    remaining = [n]

    async def warm() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await client.post(s, pool.take(per_request), check=False)

    await asyncio.gather(*(warm() for _ in range(concurrency)))


async def timed_requests(
    s: Any,
    pid: int,
    client: Client,
    pool: TextPool,
    *,
    concurrency: int,
    per_request: int,
    n_requests: int,
    max_seconds: float,
) -> Timed:
    """`n_requests` (or as many as fit in `max_seconds`) from `concurrency` workers, sampling
    the daemon's RSS meanwhile. The first answer of worker 0 is checked for one vector per text."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    todo = [n_requests]

    async def worker(wid: int, deadline: float) -> None:
        first = True
        while todo[0] > 0 and time.perf_counter() < deadline:
            todo[0] -= 1
            texts = pool.take(per_request)
            start = time.perf_counter()
            ok, kind = await client.post(s, texts, check=first and wid == 0)
            first = False
            if ok:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors[kind] = errors.get(kind, 0) + 1

    async with RssSampler(pid) as rss:
        t0 = time.perf_counter()
        deadline = t0 + max_seconds
        await asyncio.gather(*(worker(i, deadline) for i in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return Timed(latencies, errors, elapsed, rss.peak if rss.samples else 0.0)


def level_result(
    name: str, concurrency: int, per_request: int, t: Timed, rss_now: float
) -> LevelResult:
    """The figures of one level from its timings and the daemon's RSS read right after it."""
    res = LevelResult(name, concurrency, per_request)
    res.requests = len(t.latencies) + sum(t.errors.values())
    res.ok = len(t.latencies)
    res.errors = sum(t.errors.values())
    res.error_kinds = t.errors
    res.seconds = t.seconds
    if t.latencies:
        res.p50_ms, res.p95_ms, res.p99_ms = (pct(t.latencies, q) for q in (50, 95, 99))
        res.mean_ms = statistics.fmean(t.latencies)
        res.max_ms = max(t.latencies)
    res.req_per_s = res.ok / t.seconds
    res.texts_per_s = res.ok * per_request / t.seconds
    res.rss_mb = rss_now
    res.rss_peak_mb = max(t.peak_rss_mb, rss_now if rss_now == rss_now else 0.0)
    return res


async def closed_loop(
    pid: int,
    client: Client,
    pool: TextPool,
    *,
    name: str,
    concurrency: int,
    per_request: int,
    n_requests: int,
    max_seconds: float,
    warmup: int,
    timeout_s: float,
) -> LevelResult:
    """`concurrency` workers, each sending its next request when the last one answered.

    `pid` is the daemon's, for its RSS; `warmup` requests go first and are not measured.
    """
    async with session(concurrency + 4, timeout_s) as s:
        await warm_up(s, client, pool, concurrency=concurrency, per_request=per_request, n=warmup)
        timed = await timed_requests(
            s,
            pid,
            client,
            pool,
            concurrency=concurrency,
            per_request=per_request,
            n_requests=n_requests,
            max_seconds=max_seconds,
        )
    rss_now, _ = rss_mb(pid)
    return level_result(name, concurrency, per_request, timed, rss_now)


# --- open loop and the rate search -----------------------------------------------------------


@dataclass
class RateResult:
    """One open-loop probe. Latencies in ms from each request's scheduled send time."""

    rate: float
    seconds: float
    sent: int
    ok: int
    errors: int
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_inflight: int
    overloaded: bool  # `max_inflight` requests were waiting: sending stopped early
    passed: bool


async def open_loop(
    client: Client,
    pool: TextPool,
    *,
    rate: float,
    duration: float,
    target_ms: float,
    max_inflight: int,
    timeout_s: float,
) -> RateResult:
    """Fixed-rate arrivals for `duration` seconds; latency from each request's scheduled time,
    so a slow daemon cannot hide behind a slow client."""
    n = max(1, int(rate * duration))
    latencies: list[float] = []
    errors = [0]
    inflight = [0]
    most = [0]
    overloaded = False
    loop = asyncio.get_running_loop()
    async with session(max_inflight, timeout_s) as s:

        async def one(scheduled: float, texts: list[str]) -> None:
            inflight[0] += 1
            most[0] = max(most[0], inflight[0])
            try:
                ok, _ = await client.post(s, texts, check=False)
            finally:
                inflight[0] -= 1
            if ok:
                latencies.append((loop.time() - scheduled) * 1000)
            else:
                errors[0] += 1

        tasks = []
        start = loop.time() + 0.05
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if inflight[0] >= max_inflight:  # the daemon cannot keep up: stop adding load
                overloaded = True
                break
            tasks.append(asyncio.create_task(one(scheduled, pool.take(1))))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    p95 = pct(latencies, 95)
    passed = not overloaded and errors[0] == 0 and len(latencies) == n and p95 <= target_ms
    return RateResult(
        rate,
        elapsed,
        len(tasks),
        len(latencies),
        errors[0],
        len(latencies) / elapsed if elapsed > 0 else 0.0,
        pct(latencies, 50),
        p95,
        pct(latencies, 99),
        most[0],
        overloaded,
        passed,
    )


def probe_line(r: RateResult) -> str:
    """The progress line printed for one probe."""
    return (
        f"    rate {r.rate:7.1f}/s: p50 {fmt(r.p50_ms)} p95 {fmt(r.p95_ms)} "
        f"p99 {fmt(r.p99_ms)} ms, achieved {r.achieved_rps:6.1f}/s, errors {r.errors}, "
        f"max in flight {r.max_inflight}{' OVERLOADED' if r.overloaded else ''} -> "
        f"{'pass' if r.passed else 'fail'}"
    )


async def rate_search(
    client: Client,
    pool: TextPool,
    *,
    start: float,
    max_rate: float,
    duration: float,
    bisect_steps: int,
    target_ms: float,
    max_inflight: int,
    timeout_s: float,
) -> tuple[float, list[RateResult]]:
    """Double from `start` until a rate fails, then bisect between the last pass and the fail.

    Returns the highest passing rate (req/s) and every probe in the order run."""
    probes: list[RateResult] = []

    async def probe(rate: float) -> bool:
        r = await open_loop(
            client,
            pool,
            rate=rate,
            duration=duration,
            target_ms=target_ms,
            max_inflight=max_inflight,
            timeout_s=timeout_s,
        )
        probes.append(r)
        print(probe_line(r), flush=True)
        await asyncio.sleep(0.5)  # let the queue drain between probes
        return r.passed

    good, bad = 0.0, None
    rate = start
    while rate <= max_rate:
        if await probe(rate):
            good = rate
            rate *= 2
        else:
            bad = rate
            break
    if bad is None:
        return good, probes
    # If even the first rate failed, bisect between 0 and it.
    lo, hi = (0.0, bad) if good == 0.0 else (good, bad)
    for _ in range(bisect_steps):
        mid = (lo + hi) / 2
        if mid < 1:
            break
        if await probe(mid):
            lo = mid
        else:
            hi = mid
    return lo, probes
