"""Load generator against a live `localrank serve`, next to sentence-transformers in-process.

Starts the daemon itself (a subprocess on a free loopback port, a temporary LOCALRANK_HOME),
waits for /health 200, measures, and stops it with SIGTERM. Every request carries texts never
sent before in the run, so the daemon's embedding cache never answers for the model.

  * closed loop, one short text (8-30 words) per request, at concurrency 1, 16, 64 (and 256 with
    --max-concurrency), plus concurrency 4 with 32 texts per request: p50/p95/p99 latency,
    texts/s, req/s, daemon RSS (end of level and peak while it ran). Each level warms up first,
    then runs a fixed number of requests, capped by a fixed duration.
  * cold start: process launch -> /health 200, median of --coldstart-runs launches.
  * open loop (fixed-rate arrivals, latency counted from the scheduled send time, so a slow
    daemon cannot hide behind a slow client): the highest request rate with p95 under
    --p95-target ms, found by doubling then bisecting.
  * the in-process reference, in the same run, on the same model and texts, in a fresh
    subprocess (so the load generator itself never holds torch): sentence-transformers
    `SentenceTransformer(path, device="cpu")`, single-call `encode([text])` latency, batched
    `encode(texts, batch_size=64)` throughput, RSS, and import + load + first encode time.

Every figure is printed next to its reference as a ratio (absolute times on a shared machine are
noise), with the issue's targets as PASS/FAIL. Writes bench/results/load.csv, coldstart.csv,
rate.csv, load_summary.json and latency.png, throughput.png, rss.png.

This module parses the options and runs the steps in order; the parts live next to it:
processes.py (the reference worker, cold starts; the daemon is bench/kit/daemon.py),
reference_worker.py (what runs inside the worker: `python -m bench.load --reference-worker`),
levels.py (the levels and the reference re-measured before each), loadgen.py (closed loop, open
loop, rate search) and report.py (CSV, JSON, plots, the table and the targets).

    python -m bench.load                      # full run (~6-8 minutes here)
    python -m bench.load --quick              # smoke run (~1-2 minutes)
    python -m bench.load --max-concurrency    # adds concurrency 256
    python -m bench.load --quick --levels 1,4 --requests 20 --batch none --skip-rate
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.kit.measure import fmt
from bench.kit.paths import RESULTS, minilm
from bench.kit.texts import mixed_texts
from bench.load.levels import (
    Level,
    ReferenceFigures,
    plan_levels,
    reference_texts,
    run_levels,
    split_texts,
)
from bench.load.loadgen import Client, RateResult, TextPool, rate_search
from bench.load.processes import Running, cold_starts
from bench.load.reference_worker import reference_worker
from bench.load.report import Results, report

SHORT_WORDS = (8, 30)  # words per text for the one-text-per-request levels


# --- settings ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `settings` turns it into the run's Settings."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from its wheel)")
    ap.add_argument("--quick", action="store_true", help="small counts for a smoke run")
    ap.add_argument("--levels", help="concurrencies with one text per request (default 1,16,64)")
    ap.add_argument("--max-concurrency", action="store_true", help="add concurrency 256")
    ap.add_argument(
        "--batch",
        default="4x32",
        help="CONCURRENCYxTEXTS level with many texts per request, or 'none'",
    )
    ap.add_argument(
        "--requests", type=int, help="requests per level (default: scaled by concurrency)"
    )
    ap.add_argument("--duration", type=float, help="cap per level in seconds (default 20, quick 6)")
    ap.add_argument(
        "--warmup",
        type=int,
        help="warm-up requests per level (default 2x concurrency, at least 20; quick 10)",
    )
    ap.add_argument(
        "--input-type",
        choices=("document", "query"),
        default="document",
        help="query: every request (and the reference) embeds queries with the instruction",
    )
    ap.add_argument(
        "--words",
        default=f"{SHORT_WORDS[0]},{SHORT_WORDS[1]}",
        help="MIN,MAX words per one-text request (default 8,30)",
    )
    ap.add_argument(
        "--route",
        choices=("openai", "native"),
        default="openai",
        help="POST /v1/embeddings (default) or /api/v1/embed",
    )
    ap.add_argument(
        "--coldstart-runs", type=int, help="launches for the cold-start median (default 3, quick 1)"
    )
    ap.add_argument("--skip-rate", action="store_true", help="skip the open-loop rate search")
    ap.add_argument(
        "--skip-reference",
        action="store_true",
        help="skip the in-process reference (ratios become n/a)",
    )
    ap.add_argument(
        "--no-engine-reference",
        action="store_true",
        help="do not also time localrank's engine inside the reference process (keeps the "
        "reference's RSS that of sentence-transformers alone)",
    )
    ap.add_argument("--p95-target", type=float, default=150.0, help="ms, for the rate search")
    ap.add_argument("--rate-start", type=float, default=16.0)
    ap.add_argument("--rate-max", type=float, default=4096.0)
    ap.add_argument("--rate-duration", type=float, help="seconds per probe (default 5, quick 2)")
    ap.add_argument("--rate-bisect", type=int, help="bisection steps (default 4, quick 2)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the daemon, e.g. LOCALRANK_BATCH_WAIT_MS=0 "
        "(repeatable; for experiments)",
    )
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    # internal: the in-process reference subprocess
    ap.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    ap.add_argument("--cold-only", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


@dataclass(frozen=True)
class Settings:
    """One run, resolved from the command line: the --quick defaults applied, levels planned."""

    model: str
    route: str  # "openai" (POST /v1/embeddings) or "native" (/api/v1/embed)
    input_type: str  # "document" or "query"
    words: tuple[int, int]  # words per one-text request
    quick: bool
    levels: list[Level]
    duration: float  # cap per level, seconds
    timeout: float  # per request, seconds
    cold_runs: int
    skip_reference: bool
    engine_reference: bool
    skip_rate: bool
    p95_target: float  # ms, for the rate search
    rate_start: float  # req/s
    rate_max: float  # req/s
    rate_duration: float  # seconds per probe
    rate_bisect: int  # bisection steps after the doubling
    daemon_env: dict[str, str]
    out: Path
    seed: int
    strict: bool


def settings(args: argparse.Namespace, model: str) -> Settings:
    """The run's Settings from the parsed command line, `model` already defaulted."""
    quick = args.quick
    conc = [int(c) for c in args.levels.split(",") if c.strip()] if args.levels else [1, 16, 64]
    if args.max_concurrency and 256 not in conc:
        conc.append(256)
    batch = None
    if args.batch and args.batch.lower() != "none":
        c_s, k_s = args.batch.lower().split("x")
        batch = (int(c_s), int(k_s))
    low, high = (int(w) for w in args.words.split(","))
    return Settings(
        model=model,
        route=args.route,
        input_type=args.input_type,
        words=(low, high),
        quick=quick,
        levels=plan_levels(conc, batch, requests=args.requests, warmup=args.warmup, quick=quick),
        duration=args.duration or (6.0 if quick else 20.0),
        timeout=args.timeout,
        cold_runs=args.coldstart_runs or (1 if quick else 3),
        skip_reference=args.skip_reference,
        engine_reference=not args.no_engine_reference,
        skip_rate=args.skip_rate,
        p95_target=args.p95_target,
        rate_start=args.rate_start,
        rate_max=args.rate_max,
        rate_duration=args.rate_duration or (2.0 if quick else 5.0),
        rate_bisect=args.rate_bisect if args.rate_bisect is not None else (2 if quick else 4),
        daemon_env=dict(kv.split("=", 1) for kv in args.env),
        out=Path(args.out),
        seed=args.seed,
        strict=args.strict,
    )


# --- the steps ---------------------------------------------------------------------------------


def make_texts(s: Settings) -> list[str]:
    """Distinct texts for every level and the rate search (and 1000 spare); prints the header."""
    rate_n = 0 if s.skip_rate else (4000 if s.quick else 20000)
    total = sum(level.texts_needed for level in s.levels) + rate_n + 1000
    t = time.perf_counter()
    texts = mixed_texts(total, min_words=s.words[0], max_words=s.words[1], seed=s.seed)
    texts = list(dict.fromkeys(texts))  # distinct
    print(
        f"localrank load bench: model {s.model}\n  {len(texts)} distinct {s.input_type}s of "
        f"{s.words[0]}-{s.words[1]} words in {time.perf_counter() - t:.1f}s; "
        f"route {s.route}; python {platform.python_version()}, {os.cpu_count()} CPUs"
        + (f"; daemon env {s.daemon_env}" if s.daemon_env else ""),
        flush=True,
    )
    return texts


def search_rate(s: Settings, client: Client, pool: TextPool) -> tuple[float, list[RateResult]]:
    """The open-loop rate search: the highest rate with p95 under the target."""
    print(
        f"\n[rate] open loop, one text per request, highest rate with p95 <= "
        f"{s.p95_target:.0f} ms ({s.rate_duration:.0f}s per probe)",
        flush=True,
    )
    best, probes = asyncio.run(
        rate_search(
            client,
            pool,
            start=s.rate_start,
            max_rate=s.rate_max,
            duration=s.rate_duration,
            bisect_steps=s.rate_bisect,
            target_ms=s.p95_target,
            max_inflight=1024,
            timeout_s=s.timeout,
        )
    )
    print(f"  best rate: {best:.1f} req/s", flush=True)
    return best, probes


def measure(
    s: Settings,
    pools: dict[str, TextPool],
    rate_pool: TextPool,
    ref_single_n: int,
    texts_file: Path,
) -> Results:
    """Cold starts, then the levels and the rate search against the last daemon launched; the
    processes are stopped before this returns, whatever happened."""
    # The reference worker is this module again.
    worker = (
        None if s.skip_reference else [sys.executable, "-m", "bench.load", "--reference-worker"]
    )
    with Running() as running:
        daemon_cold, ref_cold = cold_starts(
            running,
            runs=s.cold_runs,
            model=s.model,
            daemon_env=s.daemon_env,
            worker=worker,
            texts_file=texts_file,
        )
        latest: dict[str, Any] = {}
        if ref_cold:
            latest["cold_start_s"] = statistics.median(c["launch_to_ready_s"] for c in ref_cold)
        daemon = running.daemon
        assert daemon is not None
        idle_rss, _ = daemon.rss()
        client = Client(daemon.base, s.route, s.input_type)
        print(
            f"\n[load] closed loop, daemon pid {daemon.pid} port {daemon.port}, idle RSS "
            f"{fmt(idle_rss, 0)} MiB",
            flush=True,
        )
        ref = ReferenceFigures(
            running.reference,
            latest,
            single_n=ref_single_n,
            batched_repeats=1 if s.quick else 2,
            engine=s.engine_reference,
        )
        rows = run_levels(
            daemon.pid, client, s.levels, pools, ref, max_seconds=s.duration, timeout_s=s.timeout
        )
        best_rate, probes = (float("nan"), []) if s.skip_rate else search_rate(s, client, rate_pool)
        final_rss, peak_rss = daemon.rss()
    return Results(
        levels=rows,
        ref=latest,
        ref_cold=ref_cold,
        daemon_cold=daemon_cold,
        daemon_idle_rss=idle_rss,
        daemon_final_rss=final_rss,
        daemon_peak_rss=peak_rss,
        best_rate=best_rate,
        rate_probes=probes,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.model if args.model is not None else minilm()
    if args.reference_worker:
        reference_worker(model, Path(args.texts_file), cold_only=args.cold_only)
        return 0
    s = settings(args, model)
    s.out.mkdir(parents=True, exist_ok=True)
    texts = make_texts(s)
    pools, rate_pool = split_texts(s.levels, texts)
    single, batched = reference_texts(s.levels, pools, texts, quick=s.quick)
    with tempfile.TemporaryDirectory(prefix="localrank-load-", ignore_cleanup_errors=True) as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(
            json.dumps({"single": single, "batched": batched, "query": s.input_type == "query"})
        )
        results = measure(s, pools, rate_pool, len(single), texts_file)
    targets = report(
        s.out,
        results,
        model=s.model,
        route=s.route,
        quick=s.quick,
        p95_target=s.p95_target,
        rate_searched=not s.skip_rate,
    )
    return 1 if s.strict and any(tg["pass"] is False for tg in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
