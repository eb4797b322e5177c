"""The closed-loop levels of the load bench: which ones run, the texts each one gets, and running
them one after another against the daemon with the in-process reference re-measured right
before each (a shared machine's background load drifts within a run)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from bench.kit.measure import background_cpu, fmt, ratio
from bench.load.loadgen import Client, LevelResult, TextPool, closed_loop
from bench.load.processes import Reference

NAN = float("nan")


@dataclass(frozen=True)
class Level:
    """One closed-loop level: `concurrency` workers, each request carrying `texts_per_request`
    texts; `warmup` requests go first, unmeasured."""

    name: str  # "c16" for one text per request, "c4x32" for 32
    concurrency: int
    texts_per_request: int
    requests: int
    warmup: int

    @property
    def texts_needed(self) -> int:
        """Texts for the whole level, warm-up included, so none is ever sent twice."""
        return (self.warmup + self.requests) * self.texts_per_request


def plan_levels(
    concurrencies: list[int],
    batch: tuple[int, int] | None,
    *,
    requests: int | None,
    warmup: int | None,
    quick: bool,
) -> list[Level]:
    """One single-text level per concurrency, then the (concurrency, texts) batch level.

    `requests` and `warmup` override the defaults, which scale with concurrency (smaller with
    `quick`)."""

    def warmup_for(c: int) -> int:
        return warmup if warmup is not None else (10 if quick else max(20, 2 * c))

    levels = []
    for c in concurrencies:
        if requests:
            n = requests
        elif quick:
            n = max(50, 8 * c)
        else:
            n = 400 if c == 1 else max(1500, 40 * c)
        levels.append(Level(f"c{c}", c, 1, n, warmup_for(c)))
    if batch is not None:
        c, k = batch
        n = requests or (20 if quick else 160)
        levels.append(Level(f"c{c}x{k}", c, k, n, warmup_for(c)))
    return levels


def split_texts(levels: list[Level], texts: list[str]) -> tuple[dict[str, TextPool], TextPool]:
    """A pool of its own for each level, in order, and what is left for the rate search (every
    text, when nothing is left)."""
    pools: dict[str, TextPool] = {}
    at = 0
    for level in levels:
        pools[level.name] = TextPool(texts[at : at + level.texts_needed])
        at += level.texts_needed
    return pools, TextPool(texts[at:] or texts)


def reference_texts(
    levels: list[Level], pools: dict[str, TextPool], texts: list[str], *, quick: bool
) -> tuple[list[str], list[str]]:
    """(single, batched): the texts the in-process reference measures, the daemon's own. The
    lowest single-text level's texts for single calls, the highest one's for batched
    throughput."""
    singles = [lv for lv in levels if lv.texts_per_request == 1]
    low = min(singles, key=lambda lv: lv.concurrency, default=None)
    high = max(singles, key=lambda lv: lv.concurrency, default=None)
    single = pools[low.name].texts[: (100 if quick else 300)] if low else texts[:100]
    batched = pools[high.name].texts[: (256 if quick else 512)] if high else texts[:256]
    return single, batched


class ReferenceFigures:
    """The in-process reference's latest figures (`latest`, as the worker names them), kept
    current by re-measuring before each level. Without a worker (--skip-reference) nothing is
    measured and every ratio to the reference is nan."""

    def __init__(
        self,
        worker: Reference | None,
        latest: dict[str, Any],
        *,
        single_n: int,
        batched_repeats: int,
        engine: bool = True,
    ) -> None:
        self.worker = worker
        self.latest = latest
        self.single_n = single_n  # texts timed one at a time
        self.batched_repeats = batched_repeats  # batched timings, the median is kept
        # Also time localrank's engine inside the worker (the serving overhead). Off when the
        # worker's RSS is a reference: a second model in it would inflate that.
        self.engine = engine

    def before(self, level: Level) -> None:
        """The c=1 level (or the first, if none) is compared with single calls, the others with
        batched throughput; both are known before the first level runs."""
        c, k = level.concurrency, level.texts_per_request
        self.measure(
            "single" if (c, k) == (1, 1) or "single_p50_ms" not in self.latest else "batched"
        )
        if "batched_texts_per_s" not in self.latest and self.worker is not None:
            self.measure("batched")

    def measure(self, what: str) -> None:
        """what="single": encode([text]) and localrank's engine in-process, one text per call;
        anything else: batched encode throughput."""
        if self.worker is None:
            return
        ref = self.latest
        if what == "single":
            ref.update(self.worker.ask(f"single {self.single_n}"))
            if self.engine:
                ref.update(self.worker.ask(f"engine {self.single_n}"))
            print(
                f"  [ref] encode([text]) p50 {ref['single_p50_ms']:.2f} ms (p95 "
                f"{ref['single_p95_ms']:.2f}, n={ref['single_n']})"
                + (
                    f"; localrank engine in-process embed([text]) p50 "
                    f"{ref['engine_single_p50_ms']:.2f} ms"
                    if self.engine
                    else ""
                ),
                flush=True,
            )
        else:
            ref.update(self.worker.ask(f"batched {self.batched_repeats}"))
            print(
                f"  [ref] encode(batch_size=64) {ref['batched_texts_per_s']:.1f} texts/s, "
                f"32-text calls {ref['batch32_texts_per_s']:.1f} texts/s "
                f"(n={ref['batched_n']})",
                flush=True,
            )


def run_levels(
    pid: int,
    client: Client,
    levels: list[Level],
    pools: dict[str, TextPool],
    ref: ReferenceFigures,
    *,
    max_seconds: float,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Every level in order against the daemon `pid`; one row each (see level_row)."""
    rows = []
    for level in levels:
        ref.before(level)
        bg = background_cpu()
        pool = pools[level.name]
        r = asyncio.run(
            closed_loop(
                pid,
                client,
                pool,
                name=level.name,
                concurrency=level.concurrency,
                per_request=level.texts_per_request,
                n_requests=level.requests,
                max_seconds=max_seconds,
                warmup=level.warmup,
                timeout_s=timeout_s,
            )
        )
        r.background_cpu = bg
        rows.append(level_row(r, ref.latest))
        print_level(r, pool)
    return rows


def level_row(r: LevelResult, ref: dict[str, Any]) -> dict[str, Any]:
    """The level's figures and, next to them, the reference's and their ratios."""
    row = asdict(r)
    row.pop("error_kinds")
    ref_p50 = ref.get("single_p50_ms", NAN)
    ref_tps = ref.get("batched_texts_per_s", NAN)
    row.update(
        {
            "ref_single_p50_ms": ref_p50,
            "p50_vs_ref": ratio(r.p50_ms, ref_p50),
            "p50_minus_ref_ms": r.p50_ms - ref_p50,
            "ref_engine_single_p50_ms": ref.get("engine_single_p50_ms", NAN),
            "p50_minus_engine_ms": r.p50_ms - ref.get("engine_single_p50_ms", NAN),
            "ref_texts_per_s": ref_tps,
            "throughput_vs_ref": ratio(r.texts_per_s, ref_tps),
            "ref_rss_mb": ref.get("rss_mb", NAN),
            "rss_vs_ref": ratio(r.rss_mb, ref.get("rss_mb", NAN)),
        }
    )
    return row


def print_level(r: LevelResult, pool: TextPool) -> None:
    errs = f", errors {r.errors} {r.error_kinds}" if r.errors else ""
    print(
        f"  {r.level:>7}: {r.ok} req in {r.seconds:.1f}s  p50 {fmt(r.p50_ms)} "
        f"p95 {fmt(r.p95_ms)} p99 {fmt(r.p99_ms)} ms  {r.req_per_s:.1f} req/s "
        f"{r.texts_per_s:.1f} texts/s  RSS {fmt(r.rss_mb, 0)} MiB (peak "
        f"{fmt(r.rss_peak_mb, 0)}); other load before it {fmt(100 * r.background_cpu, 0)}% CPU"
        f"{errs}",
        flush=True,
    )
    if pool.reused:
        print(f"    note: text pool wrapped {pool.reused}x (cache hits possible)", flush=True)
