"""`make bench-default`: the default model (Qwen3-Embedding-0.6B's exact shape, built offline by
models/build_test_models.py --bench) against the in-process reference measured in the same run:
sentence-transformers loading the folder the way a user would, at its default dtype.

A small driver: one script per figure, each a subprocess with its own timeout (a failed step is
reported, the others still run), then one table of absolute values, ratios and targets.

  build     models/build_test_models.py --bench  (once; ~1.2 GB under models/.cache)
  accuracy  bench.bf16_accuracy       per-vector cosine of the dtype in use to float32
  bulk      bench.engine_throughput   mixed 5-300-word texts, engine vs ST   (target >= 1.5x)
  daemon    bench.load                one short query at a time (input_type query, 5-16 words):
                                      p50 (target <= 100 ms); 16 concurrent clients: RSS vs
                                      ST's (target <= 1x); cold start, launch -> /health 200
                                      (target <= 3 s), next to in-process import+load+encode
  search    bench.search_e2e          /v1/search end to end at 100k chunks and search at 1M
  peer      bench.llama_peer          localrank (float32, bfloat16 where native, int8 where the
                                      engine accepts it) beside llama.cpp's llama-server on
                                      GGUF f32 and q8_0 converted from the same folder, one
                                      server at a time: bulk texts/s, one query p50, cold start,
                                      RSS, min cosine to the float32 recipe. llama.cpp is built
                                      once outside the repository (~15 min); where it cannot be,
                                      the step says so and measures localrank's rows alone

Writes bench/results/default/ (each step's CSVs, and default_model.json with the table).

    python -m bench.default_model            # full (~20-30 minutes on a quiet 2-core box)
    python -m bench.default_model --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.kit.paths import BENCH_MODEL, RESULTS, ROOT
from bench.kit.steps import read_csv, run_step
from bench.llama_peer import table as peer_table

OUT = RESULTS / "default"

TARGET_BULK_RATIO = 1.5
TARGET_QUERY_P50_MS = 100.0
TARGET_COLD_S = 3.0
TARGET_RSS_RATIO = 1.0
SEARCH_P50_MS, SEARCH_P95_MS, STORE_1M_P95_MS = 120.0, 150.0, 80.0


def steps(args: argparse.Namespace) -> list[tuple[str, list[str], float]]:
    """(name, command, timeout) for every step this run makes, in order."""
    py, q = sys.executable, args.quick
    out: list[tuple[str, list[str], float]] = [
        ("build", [py, str(ROOT / "models" / "build_test_models.py"), "--bench"], 1800.0)
    ]
    if not args.skip_accuracy:
        out.append(
            (
                "accuracy",
                [py, "-m", "bench.bf16_accuracy", "--model", str(BENCH_MODEL)]
                + ["--n", "4" if q else "16", "--out", str(OUT / "bf16_accuracy.csv")],
                3600.0,
            )
        )
    out.append(
        (
            "bulk",
            [py, "-m", "bench.engine_throughput", "--model", str(BENCH_MODEL), "--backends", "cpu"]
            + ["--n", "24" if q else str(args.bulk_n), "--repeat", "1" if q else "2"]
            + ["--out", str(OUT / "engine.csv")],
            3600.0,
        )
    )
    load = [py, "-m", "bench.load", "--model", str(BENCH_MODEL), "--input-type", "query"]
    load += ["--words", "5,16", "--levels", "1,16", "--batch", "none", "--skip-rate"]
    load += ["--no-engine-reference", "--out", str(OUT)]
    load += ["--quick", "--coldstart-runs", "1"] if q else ["--coldstart-runs", "3"]
    load += ["--duration", "10" if q else "30"]
    out.append(("daemon", load, 3600.0))
    search = [py, "-m", "bench.search_e2e", "--out", str(OUT / "search_e2e.csv")]
    out.append(("search", search + (["--quick"] if q else []), 5400.0))
    peer = [py, "-m", "bench.llama_peer", "--model", str(BENCH_MODEL)]
    peer += ["--docs", "8", "--queries", "5"] if q else ["--docs", str(args.peer_docs)]
    out.append(("peer", peer + ["--out", str(OUT / "llama_peer.json")], 5400.0))
    return out


def num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def figures() -> list[dict[str, Any]]:
    """One row per figure: what, measured (absolute), reference, ratio, target, verdict."""
    rows: list[dict[str, Any]] = []
    accuracy = read_csv(OUT / "bf16_accuracy.csv")
    for r in accuracy:
        theirs = next(
            (
                num(x["min_cosine"])
                for x in accuracy
                if x["texts"] == r["texts"] and x["impl"] == "authors' recipe bfloat16"
            ),
            float("nan"),
        )
        ours = r["impl"] == "localrank bfloat16"
        rows.append(
            {
                "figure": f"accuracy, {r['texts']}: {r['impl']}",
                "value": f"min cosine {r['min_cosine']} (mean {r['mean_cosine']})",
                "reference": "authors' recipe in float32",
                "ratio": "",
                "target": ">= 0.999, >= authors' bf16" if ours else "",
                "pass": num(r["min_cosine"]) >= max(0.999, theirs) if ours else None,
            }
        )
    engine = read_csv(OUT / "engine.csv")
    st = next((r for r in engine if r["impl"] == "sentence-transformers"), None)
    for r in (r for r in engine if r["impl"] == "localrank"):
        ratio = num(r["ratio_vs_st"])
        rows.append(
            {
                "figure": f"bulk, {r['texts']} mixed 5-300-word texts ({r['dtype']})",
                "value": f"{r['texts_per_s']} texts/s",
                "reference": f"{st['texts_per_s']} texts/s ST ({st['dtype']})" if st else "n/a",
                "ratio": f"{ratio:.2f}x",
                "target": f">= {TARGET_BULK_RATIO}x",
                "pass": ratio >= TARGET_BULK_RATIO if ratio == ratio else None,
            }
        )
    summary_path = OUT / "load_summary.json"
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        by = {lv["level"]: lv for lv in s["levels"]}
        if "c1" in by:
            lv = by["c1"]
            p50 = num(lv["p50_ms"])
            rows.append(
                {
                    "figure": "daemon, one short query at a time (5-16 words), p50",
                    "value": f"{p50:.1f} ms (p95 {num(lv['p95_ms']):.1f})",
                    "reference": f"{num(lv['ref_single_p50_ms']):.1f} ms ST encode([query])",
                    "ratio": f"{num(lv['p50_vs_ref']):.2f}x",
                    "target": f"<= {TARGET_QUERY_P50_MS:g} ms",
                    "pass": p50 <= TARGET_QUERY_P50_MS,
                }
            )
        if "c16" in by:
            lv = by["c16"]
            rss_ratio = num(lv["rss_vs_ref"])
            rows.append(
                {
                    "figure": "daemon RSS at 16 concurrent clients (peak)",
                    "value": f"{num(lv['rss_mb']):.0f} MiB ({num(lv['rss_peak_mb']):.0f})",
                    "reference": f"{num(lv['ref_rss_mb']):.0f} MiB ST in-process",
                    "ratio": f"{rss_ratio:.2f}x",
                    "target": f"<= {TARGET_RSS_RATIO:g}x",
                    "pass": rss_ratio <= TARGET_RSS_RATIO if rss_ratio == rss_ratio else None,
                }
            )
            rows.append(
                {
                    "figure": "daemon, 16 concurrent clients, throughput",
                    "value": f"{num(lv['texts_per_s']):.1f} queries/s, p50 "
                    f"{num(lv['p50_ms']):.0f} ms",
                    "reference": f"{num(lv['ref_texts_per_s']):.1f} texts/s ST batched",
                    "ratio": f"{num(lv['throughput_vs_ref']):.2f}x",
                    "target": "",
                    "pass": None,
                }
            )
        cold = s["cold_start"]
        med = num(cold["daemon_median_s"])
        ref = num(cold.get("in_process_median_s"))
        runs = ", ".join(f"{x:.2f}" for x in cold["daemon_runs_s"])
        rows.append(
            {
                "figure": "cold start, launch -> /health 200 (median)",
                "value": f"{med:.2f} s ({runs})",
                "reference": f"{ref:.2f} s ST import+load+first encode",
                "ratio": f"{med / ref:.2f}x" if ref == ref and ref else "n/a",
                "target": f"<= {TARGET_COLD_S:g} s",
                "pass": med <= TARGET_COLD_S,
            }
        )
    rows.extend(search_rows(read_csv(OUT / "search_e2e.csv")))
    return rows


def search_rows(found: list[dict[str, str]]) -> list[dict[str, Any]]:
    """bench.search_e2e's figures: /v1/search end to end, the first search after a restart,
    and the store-level searches at 1M."""
    rows: list[dict[str, Any]] = []
    for r in found:
        kind = r.get("figure", "")
        if kind == "search_e2e_hybrid":
            p50, p95 = num(r["p50_ms"]), num(r["p95_ms"])
            rows.append(
                {
                    "figure": f"/v1/search hybrid end to end, {r['chunks']} chunks ({r['dtype']})",
                    "value": f"p50 {p50:.0f} / p95 {p95:.0f} ms (embed p50 "
                    f"{num(r['embed_p50_ms']):.0f} ms)",
                    "reference": f"p50 {num(r['ref_p50_ms']):.0f} ms ST ({r['ref_dtype']}) + "
                    "the same retrieval in-process",
                    "ratio": f"{num(r['ratio_p50']):.2f}x",
                    "target": f"p50 <= {SEARCH_P50_MS:g}, p95 <= {SEARCH_P95_MS:g} ms",
                    "pass": p50 <= SEARCH_P50_MS and p95 <= SEARCH_P95_MS,
                }
            )
        elif kind == "first_search_after_restart":
            first, p95 = num(r["first_ms"]), num(r["next_p95_ms"])
            rows.append(
                {
                    "figure": f"first search after a restart, {r.get('chunks', '?')} chunks",
                    "value": f"{first:.0f} ms (median of {r['restarts']})",
                    "reference": f"p95 {p95:.0f} ms of the next {r['queries']}",
                    "ratio": "",
                    "target": "<= the rest's p95",
                    "pass": first <= p95,
                }
            )
        elif kind.startswith("store_"):
            p95, recall = num(r["p95_ms"]), num(r["recall_at_10"])
            rows.append(
                {
                    "figure": f"search, {r.get('chunks', '?')} chunks, {r['mode']} (store)",
                    "value": f"p50 {num(r['p50_ms']):.0f} / p95 {p95:.0f} ms, recall@10 "
                    f"{recall:.2f}",
                    "reference": "exact search",
                    "ratio": "",
                    "target": f"p95 <= {STORE_1M_P95_MS:g} ms, recall >= 0.95",
                    "pass": p95 <= STORE_1M_P95_MS and recall >= 0.95,
                }
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    ap.add_argument("--bulk-n", type=int, default=200, help="texts for the bulk figure")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip bench.bf16_accuracy")
    ap.add_argument("--peer-docs", type=int, default=40, help="documents for the llama.cpp peer")
    ap.add_argument("--only", help="comma-separated step names to run (build always runs)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = []
    only = set(args.only.split(",")) | {"build"} if args.only else None
    for name, cmd, timeout in steps(args):
        if only is not None and name not in only:
            continue
        done.append(run_step(name, cmd, timeout))
        if name == "build" and done[-1]["exit"] != 0:
            break

    rows = figures()
    print(
        f"\n{'=' * 100}\nDEFAULT MODEL (Qwen3-Embedding-0.6B shape, {BENCH_MODEL.name}): each "
        f"figure next to the in-process reference measured in the same run\n{'=' * 100}"
    )
    w = [max((len(str(r[k])) for r in rows), default=8) for k in ("figure", "value", "reference")]
    for r in rows:
        print(
            f"  {r['figure']:<{w[0]}}  {r['value']:<{w[1]}}  {r['reference']:<{w[2]}}  "
            f"{r['ratio']:>6}  {r['target']:<12} {verdict(r['pass']) if r['target'] else ''}"
        )
    peer = OUT / "llama_peer.json"
    if peer.exists():
        found = json.loads(peer.read_text())
        meta = found["meta"]
        print(
            f"\n  beside llama.cpp (llama-server, llama-cpp-python {meta['llama_cpp_python']}), "
            f"{meta['docs']} documents, {meta['queries']} queries, {meta['threads']} threads, "
            "one server at a time:\n"
        )
        print("\n".join("  " + line for line in peer_table(found["rows"]).splitlines()))
        if meta["llama_cpp"] != "built":
            print(f"  llama.cpp not available here: {meta['llama_cpp']}")
        print()
    for st in done:
        print(
            f"  step {st['step']:<10} {'ok' if st['exit'] == 0 else 'FAILED':<6} {st['seconds']}s"
        )
    (OUT / "default_model.json").write_text(
        json.dumps({"figures": rows, "steps": done, "quick": args.quick}, indent=1)
    )
    print(f"  results: {OUT}; total {time.perf_counter() - t0:.0f}s")
    return 0 if all(s["exit"] == 0 for s in done) else 1


if __name__ == "__main__":
    sys.exit(main())
