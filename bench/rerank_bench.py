"""Cross-encoder reranking through the daemon vs the authors' in-process code (issue 11).

For each reranker (the MiniLM-shape BERT cross-encoder; the Qwen3-Reranker-0.6B shape) and each
request size (20 and 100 documents of ~150 words, one query), in one run:

  daemon     `localrank serve --reranker FOLDER` (its own process), POST /v2/rerank;
  reference  in this process: sentence-transformers' CrossEncoder.predict, or the
             Qwen3-Reranker README's transformers code (tests/reference.py, the same code the
             parity tests check against), float32 like the daemon (--dtype float32).

Calls alternate daemon / reference, `--repeats` times; the figure is median reference seconds /
median daemon seconds (>= 1.0: the daemon is at least as fast). Also reported: the first
(lazy-loading) call, and the daemon's RSS before the reranker is loaded, with it loaded, and
after the idle unload (--reranker-idle-unload-s).

    python -m bench.rerank_bench                       # both rerankers, 20 and 100 documents
    python -m bench.rerank_bench --models minilm --sizes 20,100 --repeats 5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.kit.daemon import Daemon
from bench.kit.measure import background_cpu
from bench.kit.paths import RESULTS, ROOT
from bench.kit.texts import mixed_texts
from models.build_test_models import bench_cross_encoder, bench_reranker, minilm_dir
from tests.reference import cross_encoder_reference, qwen3_reranker_reference

QUERY = "how do I reset a forgotten password on the sign-in page"
REFERENCE_BATCH = 20


class WorktreeDaemon(Daemon):
    """`python -m localrank` from this checkout (not whatever the venv's script points at)."""

    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "localrank"]


def reference(kind: str, folder: Path):  # type: ignore[no-untyped-def]
    if kind == "minilm":
        return lambda docs: cross_encoder_reference(folder, [(QUERY, d) for d in docs])

    def qwen3(docs: list[str]) -> Any:
        # The README's code, in batches of REFERENCE_BATCH pairs: as written it computes the
        # whole vocabulary's logits at every position, and one batch of 100 documents of ~150
        # words needs ~16 GB for them (the OOM killer ended two runs on this 24 GB machine).
        pairs = [(QUERY, d) for d in docs]
        return np.concatenate(
            [
                qwen3_reranker_reference(folder, pairs[i : i + REFERENCE_BATCH])
                for i in range(0, len(pairs), REFERENCE_BATCH)
            ]
        )

    return qwen3


def run(kind: str, sizes: list[int], repeats: int, idle_s: float) -> list[dict[str, Any]]:
    folder = bench_cross_encoder() if kind == "minilm" else bench_reranker()
    embed_model = str(minilm_dir())
    daemon = WorktreeDaemon(
        embed_model,
        extra=[
            "--reranker",
            str(folder),
            "--dtype",
            "float32",
            "--reranker-idle-unload-s",
            str(idle_s),
        ],
        env={"PYTHONPATH": str(ROOT)},
    )
    daemon.start(timeout=600)
    rows: list[dict[str, Any]] = []
    try:
        health = daemon.call("GET", "/health", timeout=30)
        assert health["reranker"]["loaded"] is False, "the daemon is not this checkout's"
        rss_before = daemon.rss()[0]
        docs_all = mixed_texts(max(sizes), min_words=150, max_words=150, seed=11)
        t = time.perf_counter()
        daemon.call("POST", "/v2/rerank", {"query": QUERY, "documents": docs_all[:1]}, 3600)
        first_call = time.perf_counter() - t
        rss_loaded = daemon.rss()[0]
        ref = reference(kind, folder)
        t = time.perf_counter()
        ref(docs_all[:1])  # the reference's own load, not timed below
        ref_load = time.perf_counter() - t
        for n in sizes:
            docs = docs_all[:n]
            daemon_s: list[float] = []
            ref_s: list[float] = []
            busy = background_cpu(0.5)
            for _ in range(repeats):
                t = time.perf_counter()
                body = daemon.call("POST", "/v2/rerank", {"query": QUERY, "documents": docs}, 3600)
                daemon_s.append(time.perf_counter() - t)
                assert len(body["results"]) == n
                t = time.perf_counter()
                ref(docs)
                ref_s.append(time.perf_counter() - t)
            d, r = statistics.median(daemon_s), statistics.median(ref_s)
            row = {
                "reranker": kind,
                "documents": n,
                "daemon_s": round(d, 3),
                "reference_s": round(r, 3),
                "daemon_docs_per_s": round(n / d, 2),
                "reference_docs_per_s": round(n / r, 2),
                "ratio": round(r / d, 3),
                "daemon_spread": f"{min(daemon_s):.3f}-{max(daemon_s):.3f}",
                "reference_spread": f"{min(ref_s):.3f}-{max(ref_s):.3f}",
                "background_cpu": round(busy, 2),
                "first_call_s": round(first_call, 3),
                "reference_load_s": round(ref_load, 3),
                "rss_before_mb": round(rss_before, 1),
                "rss_loaded_mb": round(rss_loaded, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        deadline = time.monotonic() + idle_s + 60
        while (
            daemon.call("GET", "/health", timeout=30)["reranker"]["loaded"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        time.sleep(1.0)
        rss_unloaded = daemon.rss()[0]
        for row in rows:
            row["rss_unloaded_mb"] = round(rss_unloaded, 1)
        print(
            f"{kind}: RSS before {rss_before:.0f} MiB, loaded {rss_loaded:.0f} MiB, "
            f"after idle unload {rss_unloaded:.0f} MiB; first call {first_call:.2f}s",
            flush=True,
        )
    finally:
        daemon.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="minilm,qwen3", help="minilm,qwen3")
    ap.add_argument("--sizes", default="20,100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--idle-unload-s", type=float, default=5.0)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A SIGTERM (an outer timeout, run_all stopping a step) unwinds, so the daemon is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(x) for x in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    for kind in args.models.split(","):
        rows += run(kind, sizes, args.repeats, args.idle_unload_s)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "rerank_bench.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{'reranker':8} {'docs':>5} {'daemon/s':>9} {'ref/s':>8} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['reranker']:8} {r['documents']:>5} {r['daemon_docs_per_s']:>9} "
            f"{r['reference_docs_per_s']:>8} {r['ratio']:>6}"
        )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
