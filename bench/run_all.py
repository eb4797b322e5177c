"""`make bench`: every benchmark in one run, then one table of ratios.

  1. engine   bench.engine_throughput: bulk embedding of mixed-length texts, localrank's engine
              vs sentence-transformers in-process (issue 2). torch CPU only by default: the MLX
              backend on CPU (mlx[cpu], the only MLX this Linux box has) measured ~10x slower
              than torch here, so 1,000 texts would take most of an hour. `--mlx` adds a
              separate MLX run on --mlx-n texts (100 by default) instead of slowing the default.
  2. load     bench.load: the live daemon against in-process sentence-transformers (issue 3).
  3. search   bench.search_bench (--search-sizes, 10k,100k by default) and bench.ingest_bench.
  4. default  bench.default_model: the default model (Qwen3-Embedding-0.6B's shape) against
              sentence-transformers: bulk, query latency, cold start, RSS, search (issue 9);
              the same as `make bench-default`. --skip-default leaves it out.
  5. pg       bench.pg_bench: PostgreSQL + pgvector beside SQLite on 200k 1024-d chunks
              through live daemons, and ingestion PG/SQLite (issue 14; --skip-pg; the first
              run builds both stores under /tmp/localrank-bench/pg, ~15-40 minutes).
  6. rerank   bench.rerank_bench: cross-encoder reranking (MiniLM-shape, Qwen3-Reranker-0.6B
              shape) through the daemon vs CrossEncoder / the README code (issue 11;
              --skip-rerank). The 0.6B shape at 100 documents takes minutes per call on 2 cores.

Each step runs as a subprocess (fresh interpreter, its own timeout); a failed step is reported
and the others still run. Results land in bench/results/ (CSV, PNG, load_summary.json).

    python -m bench.run_all                 # full run, ~40-50 minutes on a quiet 2-core box
    python -m bench.run_all --quick         # smoke run, ~3 minutes
    python -m bench.run_all --skip-engine --skip-search
    python -m bench.run_all --mlx --max-concurrency
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.kit.paths import RESULTS
from bench.kit.steps import read_csv, run_step

Step = Callable[[str, list[str], float], dict[str, Any]]  # run_step with the run's --wait-quiet


def f2(value: Any, digits: int = 2) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if x != x else f"{x:.{digits}f}"


def engine_step(args: argparse.Namespace, py: str, step: Step) -> list[dict[str, Any]]:
    """torch CPU run, then optionally a separate small MLX run; engine.csv gets both."""
    steps = []
    rows: list[dict[str, str]] = []
    n, repeat = (200, 1) if args.quick else (args.engine_n, 3)
    runs = [("engine (cpu)", "cpu", n, repeat, 1800.0)]
    if args.mlx:
        mlx_n = min(args.mlx_n, 20) if args.quick else args.mlx_n
        runs.append(("engine (mlx)", "mlx", mlx_n, 1, 1800.0))
    csv_path = RESULTS / "engine.csv"
    for name, backends, n_texts, rep, timeout in runs:
        before = csv_path.stat().st_mtime_ns if csv_path.exists() else None
        steps.append(
            step(
                name,
                [
                    py,
                    "-m",
                    "bench.engine_throughput",
                    "--backends",
                    backends,
                    "--n",
                    str(n_texts),
                    "--repeat",
                    str(rep),
                ],
                timeout,
            )
        )
        if (
            steps[-1]["exit"] == 0 and csv_path.exists() and csv_path.stat().st_mtime_ns != before
        ):  # engine_throughput rewrites it
            for row in read_csv(csv_path):
                row["run"] = backends
                rows.append(row)
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    return steps


def summary(args: argparse.Namespace, steps: list[dict[str, Any]]) -> None:
    print(
        f"\n{'=' * 100}\nSUMMARY: every figure as a ratio to its in-process reference measured "
        f"in the same run\n{'=' * 100}"
    )
    lines: list[tuple[str, str, str]] = []  # (what, measured, ratio / verdict)

    if not args.skip_engine:
        for row in read_csv(RESULTS / "engine.csv"):
            if row.get("impl") == "localrank":
                lines.append(
                    (
                        f"engine bulk {row['backend']}/{row['device']} "
                        f"({row['texts']} mixed texts)",
                        f"{row['texts_per_s']} texts/s",
                        f"{f2(row['ratio_vs_st'])}x sentence-transformers"
                        + (
                            " (target >= 1.0x: "
                            f"{'PASS' if float(row['ratio_vs_st']) >= 1.0 else 'FAIL'})"
                            if row["backend"] == "torch"
                            else ""
                        ),
                    )
                )

    load_json = RESULTS / "load_summary.json"
    if load_json.exists() and any(s["step"] == "load" and s["exit"] == 0 for s in steps):
        s = json.loads(load_json.read_text())
        for lv in s["levels"]:
            lines.append(
                (
                    f"daemon {lv['level']} p50 / p95 / p99",
                    f"{f2(lv['p50_ms'], 1)} / {f2(lv['p95_ms'], 1)} / {f2(lv['p99_ms'], 1)} ms",
                    f"p50 {f2(lv['p50_vs_ref'])}x in-process encode([text]) "
                    f"({f2(lv['ref_single_p50_ms'], 1)} ms)",
                )
            )
            lines.append(
                (
                    f"daemon {lv['level']} throughput",
                    f"{f2(lv['texts_per_s'], 1)} texts/s, {f2(lv['req_per_s'], 1)} req/s",
                    f"{f2(lv['throughput_vs_ref'])}x in-process batched "
                    f"({f2(lv['ref_texts_per_s'], 1)} texts/s); other CPU load before "
                    f"the level {f2(100 * float(lv['background_cpu']), 0)}%",
                )
            )
            lines.append(
                (
                    f"daemon {lv['level']} RSS (peak)",
                    f"{f2(lv['rss_mb'], 0)} ({f2(lv['rss_peak_mb'], 0)}) MiB",
                    f"{f2(lv['rss_vs_ref'])}x in-process RSS ({f2(lv['ref_rss_mb'], 0)} MiB)",
                )
            )
        cold = s["cold_start"]
        lines.append(
            (
                "cold start, launch -> healthy (median)",
                f"{f2(cold['daemon_median_s'])} s",
                f"{f2(cold['daemon_median_s'] / cold['in_process_median_s'])}x in-process "
                f"import+load+first encode ({f2(cold['in_process_median_s'])} s)"
                if cold.get("in_process_median_s")
                else "n/a",
            )
        )
        rate = s["rate"]
        ref = s["reference"]
        if rate.get("probes"):
            best = float(rate["best_rps"])
            lines.append(
                (
                    f"best open-loop rate, p95 <= {rate['p95_target_ms']:.0f} ms",
                    f"{best:.1f} req/s",
                    f"{f2(best / ref['batched_texts_per_s'])}x in-process batched texts/s"
                    if ref.get("batched_texts_per_s")
                    else "n/a",
                )
            )
        for tg in s["targets"]:
            verdict = "n/a" if tg["pass"] is None else ("PASS" if tg["pass"] else "FAIL")
            lines.append((f"TARGET {tg['target']}", tg["value"], verdict))

    default = RESULTS / "default" / "default_model.json"
    if not args.skip_default and default.exists():
        for fig in json.loads(default.read_text())["figures"]:
            verdict = "" if fig["pass"] is None else (" PASS" if fig["pass"] else " FAIL")
            lines.append(
                (
                    f"default model: {fig['figure']}",
                    fig["value"],
                    f"{fig['ratio']} vs {fig['reference']}".strip()
                    + (f" (target {fig['target']}:{verdict})" if fig["target"] else ""),
                )
            )

    if not args.skip_search:
        for row in read_csv(RESULTS / "search.csv"):
            if row.get("candidates") == "400" or row.get("mode") != "vector":
                rec = row.get("recall_at_10") or ""
                lines.append(
                    (
                        f"search {row['chunks']} chunks {row['mode']} "
                        f"(candidates {row['candidates']})",
                        f"p50 {row['p50_ms']} / p95 {row['p95_ms']} ms",
                        f"recall@10 {rec} vs exact search" if rec else "",
                    )
                )
        ingest = read_csv(RESULTS / "ingest.csv")
        if ingest:
            row = ingest[-1]
            lines.append(
                (
                    f"ingest {row['docs']} docs -> {row['chunks']} chunks",
                    f"{row['ingest_chunks_per_s']} chunks/s",
                    f"{f2(row['ratio'])}x raw embedding ({row['raw_chunks_per_s']}/s)",
                )
            )

    if not args.skip_pg:
        for row in read_csv(RESULTS / "pg.csv"):
            if row.get("recall_at_10") or row.get("p95_ms"):
                rec = row.get("recall_at_10") or ""
                lines.append(
                    (
                        f"{row['store']} {row['chunks']} chunks {row['mode']} via daemon "
                        f"(candidates {row['candidates']})",
                        f"p50 {row['p50_ms']} / p95 {row['p95_ms']} ms",
                        f"recall@10 {rec} vs exact search" if rec else "",
                    )
                )
            else:
                lines.append(
                    (
                        f"{row['mode']} {row['chunks']} chunks",
                        f"PG {row['postgres_chunks_per_s']} / SQLite "
                        f"{row['sqlite_chunks_per_s']} chunks/s",
                        f"{row['ratio']}x SQLite's throughput",
                    )
                )

    w1 = max((len(a) for a, _, _ in lines), default=10)
    w2 = max((len(b) for _, b, _ in lines), default=10)
    for a, b, c in lines:
        print(f"  {a:<{w1}}  {b:<{w2}}  {c}")
    print()
    for st in steps:
        print(
            f"  step {st['step']:<14} {'ok' if st['exit'] == 0 else 'FAILED':<6} "
            f"{st['seconds']:6.0f}s"
        )
    print(f"  results: {RESULTS}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller counts: a ~3 minute smoke run")
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-default", action="store_true", help="skip the default-model bench")
    ap.add_argument("--skip-pg", action="store_true", help="no PostgreSQL bench")
    ap.add_argument("--skip-rerank", action="store_true", help="no cross-encoder bench")
    ap.add_argument(
        "--mlx",
        action="store_true",
        help="also run the engine bench on the MLX backend (slow on CPU: --mlx-n)",
    )
    ap.add_argument("--engine-n", type=int, default=1000, help="texts for the torch engine run")
    ap.add_argument("--mlx-n", type=int, default=100, help="texts for the MLX engine run")
    ap.add_argument("--max-concurrency", action="store_true", help="load: add concurrency 256")
    ap.add_argument("--search-sizes", default="10k,100k")
    ap.add_argument("--ingest-docs", type=int, default=200)
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each step, wait up to SECONDS for other CPU load to drop "
        "below 20%% (shared machines)",
    )
    args = ap.parse_args()
    step = partial(run_step, quiet=args.wait_quiet)
    py = sys.executable
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps: list[dict[str, Any]] = []

    if not args.skip_engine:
        steps += engine_step(args, py, step)

    if not args.skip_load:
        cmd = [py, "-m", "bench.load"]
        if args.quick:
            cmd.append("--quick")
        if args.max_concurrency:
            cmd.append("--max-concurrency")
        (RESULTS / "load_summary.json").unlink(missing_ok=True)
        steps.append(step("load", cmd, 600.0 if args.quick else 1800.0))

    if not args.skip_search:
        sizes = "10k" if args.quick else args.search_sizes
        steps.append(step("search", [py, "-m", "bench.search_bench", "--sizes", sizes], 1800.0))
        home = tempfile.mkdtemp(prefix="localrank-ingest-home-")
        try:
            steps.append(
                step(
                    "ingest",
                    [
                        py,
                        "-m",
                        "bench.ingest_bench",
                        "--embedder",
                        "localrank.collections.models:local_embedding_model",
                        "--docs",
                        str(20 if args.quick else args.ingest_docs),
                        "--home",
                        home,
                    ],
                    1200.0,
                )
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)

    if not args.skip_default:
        (RESULTS / "default" / "default_model.json").unlink(missing_ok=True)
        cmd = [py, "-m", "bench.default_model"] + (["--quick"] if args.quick else [])
        steps.append(step("default", cmd, 1800.0 if args.quick else 7200.0))
    if not args.skip_pg:
        pg = [py, "-m", "bench.pg_bench"]
        if args.quick:
            pg += ["--chunks", "10000", "--ingest-docs", "10", "--rounds", "1"]
        steps.append(step("pg", pg, 5400.0))
    if not args.skip_rerank:
        rr = [py, "-m", "bench.rerank_bench"]
        if args.quick:
            rr += ["--models", "minilm", "--sizes", "20", "--repeats", "1"]
        steps.append(step("rerank", rr, 7200.0))

    summary(args, steps)
    print(f"  total {time.perf_counter() - t0:.0f}s")
    return 0 if all(s["exit"] == 0 for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
