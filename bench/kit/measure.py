"""Measuring: percentiles, ratios, printing, a process's memory (read once, or sampled while a
load runs) and the machine's other CPU load. A process's memory is read as the tests' stress
drivers read it (tests/stress.py), one reader for both."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from tests.stress import rss_mb, rss_parts_mb

__all__ = ["pct", "ratio", "fmt", "rss_mb", "rss_parts_mb", "RssSampler", "background_cpu"]


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default), no numpy needed."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(a: float, b: float) -> float:
    """a / b, or nan when either is nan or b is zero (a figure with no reference to compare)."""
    return a / b if b and b == b and a == a else float("nan")


def fmt(x: float, digits: int = 1) -> str:
    """A figure for printing: "n/a" for nan."""
    return "n/a" if x != x else f"{x:.{digits}f}"


class RssSampler:
    """A process's RSS every `every` seconds while the `async with` block runs: the samples and
    their peak, in MiB."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (monotonic seconds, MiB)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def peak(self) -> float:
        """The highest sample; nan when none could be read."""
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


def background_cpu(seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over `seconds` while this benchmark is idle (Linux /proc/stat;
    nan elsewhere): other work on a shared machine, printed next to each level."""

    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields[:8]), fields[3] + fields[4]

    a = sample()
    time.sleep(seconds)
    b = sample()
    if a is None or b is None or b[0] == a[0]:
        return float("nan")
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])
