"""What the soak's parts share: texts never sent before, a one-text prober, an RSS sampler,
the daemon's queue depth, and the PASS/FAIL lines. Every text carries a fresh serial number, so
the daemon's embedding cache never answers for the model."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import aiohttp

from bench.measure import fmt, pct, rss_mb
from bench.texts import _words

SHORT_WORDS = (8, 30)  # a one-text request: words per text


class Texts:
    """Random-word texts, each starting with a serial number so none repeats in a run."""

    def __init__(self, seed: int) -> None:
        self.words = _words()
        self.rng = random.Random(seed)
        self.serial = 0

    def text(self, lo: int, hi: int) -> str:
        self.serial += 1
        words = self.rng.choices(self.words, k=self.rng.randint(lo, hi))
        return f"{self.serial} " + " ".join(words)

    def short(self) -> str:
        return self.text(*SHORT_WORDS)

    def document(self, chars: int) -> str:
        """Markdown-like prose of about `chars` characters: headings, paragraphs, sentences."""
        parts: list[str] = []
        size = 0
        while size < chars:
            if self.rng.random() < 0.05:
                part = "\n## " + self.text(2, 6) + "\n\n"
            else:
                sentences = [self.text(5, 25).capitalize() + "." for _ in range(5)]
                part = " ".join(sentences) + "\n\n"
            parts.append(part)
            size += len(part)
        return "".join(parts)[:chars]


def session(limit: int = 100, timeout: float = 120.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def embed_one(s: aiohttp.ClientSession, base: str, text: str) -> tuple[int, float]:
    """(status, ms) of POST /v1/embeddings with one text."""
    t0 = time.perf_counter()
    async with s.post(base + "/v1/embeddings", json={"input": text}) as r:
        await r.read()
        return r.status, (time.perf_counter() - t0) * 1000


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
            try:
                status, ms = await embed_one(s, base, texts.short())
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                kind = type(exc).__name__
                self.errors[kind] = self.errors.get(kind, 0) + 1
            else:
                if status == 200:
                    self.latencies.append(ms)
                else:
                    self.errors[f"http {status}"] = self.errors.get(f"http {status}", 0) + 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)


class RssSampler:
    """The daemon's RSS every `every` seconds while running: samples and the peak, in MiB."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (monotonic seconds, MiB)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def peak(self) -> float:
        return max((mb for _, mb in self.samples), default=float("nan"))

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            cur, _ = rss_mb(self.pid)
            if cur == cur:
                self.samples.append((time.monotonic(), cur))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)


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
class Target:
    """One line of the final table."""

    name: str
    figure: str
    passed: bool | None  # None: not measured


def target_line(t: Target) -> str:
    mark = {True: "PASS", False: "FAIL", None: "n/a "}[t.passed]
    return f"  [{mark}] {t.name}: {t.figure}"


def mib(x: float) -> str:
    return f"{fmt(x, 0)} MiB"


def ms(x: float) -> str:
    return f"{fmt(x, 1)} ms"
