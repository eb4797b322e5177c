"""Thread pools: what the engine's thread settings are worth, measured, each variant in a fresh
process (OpenMP and tokenizers read their settings when they first load).

  torch pool   intra-op threads (physical cores, all logical CPUs, 1) x OpenMP wait policy
               (ACTIVE: GNU OpenMP's spinning default; PASSIVE: sleep at once; the engine's
               default: spin briefly, GOMP_SPINCOUNT): p50 of one short query at a time, alone
               and while another process keeps a core busy, a pass of 16 queries, and bulk
               documents/s.
  tokenizer    the same short queries while another thread tokenises a large batch, as the
               daemon's tokenising worker will: tokenizers' rayon pool (one thread per CPU)
               against tokenising on the calling thread (TOKENIZERS_PARALLELISM=false).

Absolute figures on a shared machine are noise: read each variant against the others, measured
in the same run, and run it twice. Writes bench/results/threads.csv.

    python -m bench.threads_bench [--model FOLDER] [--queries 20] [--docs 16]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from bench.kit.measure import background_cpu, pct
from bench.kit.paths import RESULTS, ROOT
from bench.kit.texts import mixed_texts
from models.build_test_models import bench_model


def child(args: argparse.Namespace) -> None:
    """One variant, in this fresh process: load, warm, measure, print one JSON line."""
    from localrank.config import load_settings
    from localrank.engine.load import load_engine

    engine = load_engine(
        load_settings({"model": args.model, "backend": "cpu", "threads": args.threads}, environ={})
    )
    engine.optimize()  # what a daemon does once it serves: steady state
    queries = mixed_texts(args.queries + 3, min_words=5, max_words=16, seed=11)
    docs = mixed_texts(args.docs, seed=12)
    for q in queries[:3]:
        engine.embed([q], query=True)
    lat = []
    stop = threading.Event()
    tokenised = [0]

    def tokenise_forever() -> None:
        big = mixed_texts(256, seed=13)
        while not stop.is_set():
            engine.tokenizer.encode(big)
            tokenised[0] += len(big)

    background = threading.Thread(target=tokenise_forever, daemon=True)
    if args.with_tokenizer:
        background.start()
    started = time.perf_counter()
    for q in queries[3:]:
        t0 = time.perf_counter()
        engine.embed([q], query=True)
        lat.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    stop.set()
    if args.with_tokenizer:
        background.join()
    passes = []
    for i in range(3):
        t0 = time.perf_counter()
        engine.embed(queries[i : i + 16], query=True)
        passes.append((time.perf_counter() - t0) * 1000)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy_lat = []
        for q in queries[3:]:
            t0 = time.perf_counter()
            engine.embed([q], query=True)
            busy_lat.append((time.perf_counter() - t0) * 1000)
    finally:
        busy.kill()
        busy.wait()
    t0 = time.perf_counter()
    engine.embed(docs)
    bulk = len(docs) / (time.perf_counter() - t0)
    print(
        "RESULT "
        + json.dumps(
            {
                "threads": engine.info.backend.threads,
                "dtype": engine.info.backend.dtype,
                "query_p50_ms": statistics.median(lat),
                "query_p95_ms": pct(lat, 95),
                "query_busy_core_p50_ms": statistics.median(busy_lat),
                "pass_of_16_ms": statistics.median(passes),
                "docs_per_s": bulk,
                "texts_tokenised_per_s": tokenised[0] / elapsed if args.with_tokenizer else None,
            }
        ),
        flush=True,
    )


def run_variant(args: argparse.Namespace, env: dict[str, str], threads: int, tok: bool) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.threads_bench",
        "--child",
        "--model",
        args.model,
        "--threads",
        str(threads),
        "--queries",
        str(args.queries),
        "--docs",
        str(args.docs),
    ] + (["--with-tokenizer"] if tok else [])
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env.pop("TOKENIZERS_PARALLELISM", None)
    full_env.update(env)
    out = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=1800, cwd=ROOT)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(line[len("RESULT ") :])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="model folder (default: the 0.6B-shape bench model)")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--with-tokenizer", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        args.model = str(bench_model())
    if args.child:
        child(args)
        return 0

    from localrank.engine.machine import read_topology

    physical = read_topology().physical_cores()
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    variants: list[tuple[str, dict[str, str], int, bool]] = []
    for threads in dict.fromkeys([physical, logical, 1]):
        for policy in ("ACTIVE", "PASSIVE", "default"):
            env = {"TOKENIZERS_PARALLELISM": "false"}
            if policy != "default":  # default: what the engine sets (engine/load.py)
                env["OMP_WAIT_POLICY"] = policy
            variants.append((f"torch {threads} threads, wait {policy}", env, threads, False))
    for par in ("true", "false"):
        env = {"TOKENIZERS_PARALLELISM": par}
        name = f"+ tokenising alongside, TOKENIZERS_PARALLELISM={par}"
        variants.append((name, env, physical, True))
    print(
        f"threads bench: model {args.model}; {physical} physical cores, {logical} logical CPUs; "
        f"{args.queries} short queries, {args.docs} documents per variant",
        flush=True,
    )
    rows = []
    for name, env, threads, tok in variants:
        busy = background_cpu(1.0)
        r = run_variant(args, env, threads, tok)
        r.update({"variant": name, "other_cpu_load": round(busy, 2)})
        rows.append(r)
        tokenised = r["texts_tokenised_per_s"]
        print(
            f"  {name:52s} query p50 {r['query_p50_ms']:7.1f} ms  p95 {r['query_p95_ms']:7.1f} ms"
            f"  beside a busy core {r['query_busy_core_p50_ms']:7.1f} ms"
            f"  16 queries {r['pass_of_16_ms']:6.0f} ms  bulk {r['docs_per_s']:5.2f} docs/s"
            + (f"  tokenised {tokenised:7.0f} texts/s" if tokenised else "")
            + f"  (other CPU load {100 * busy:.0f}%)",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "threads.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {RESULTS / 'threads.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
