"""`/v1/search` end to end through the daemon on the default model's shape, and search at 1M
chunks, in one run.

The model is the 0.6B-shape folder `models/build_test_models.py --bench` builds (built here if
missing). Each collection holds the search benches' clustered synthetic 1024-d vectors
(bench/kit/search.py), written straight into the store (copied from bench.search_bench's cached
database, built if missing) and bound to the model's fingerprint, so the daemon serves it;
queries are text (5-16 words, some of them corpus terms so the keyword stage has work), embedded
by the daemon.

Per size (100k and 1M; --quick: 10k):
- first search after a restart: the daemon is started on the collection --restarts times (3);
  each time the first query goes out the moment /health says 200 (collections possibly still
  loading); after the last, 100 more. The firsts' median against their p50/p95, stage by stage
  too. Also launch -> healthy and launch -> collections ready;
- `/v1/search` hybrid (query embedding, FTS5 + vector candidates, fusion, exact rescoring):
  p50/p95 wall clock at the client, and the embed / keyword / vector / rerank split from the
  response's timings_ms, next to the in-process reference measured in the same run in
  alternating blocks: sentence-transformers encoding the query (the folder loaded the way a user
  would, at its default dtype) and the same retrieval called in-process on the same database;
- at 1M, store level as well (bench.search_bench's figures): vector and hybrid p50/p95 with
  recall@10 against exact search, vector search inside a filter.
Each database is read once before its measurements, so the OS page cache is warm, as on a
machine that has been searching it (from a cold cache every search reads its candidates' float
vectors from disk until it is warm: another figure, not measured here).

    python -m bench.search_e2e [--quick] [--model DIR] [--queries N]
Prints each figure against its target and writes bench/results/search_e2e.csv.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.kit.daemon import Daemon
from bench.kit.measure import background_cpu, fmt, pct, ratio
from bench.kit.paths import BENCH_MODEL, RESULTS, ROOT
from bench.kit.search import CLUSTERS, ensure_db, measure, parse_size, warm_file
from bench.kit.texts import mixed_texts
from localrank.collections.search import SearchRequest, run_search
from localrank.store import SQLiteStore

COLLECTION = "e2e"
AFTER_RESTART = 100  # queries timed after the first one that follows a restart
BLOCK = 10  # queries per alternating block (daemon, then reference)
IDLE_REOPEN_S = 10.0  # below the daemon's idle_timeout_s
TARGETS = {"e2e_p50_ms": 120.0, "e2e_p95_ms": 150.0, "store_1m_p95_ms": 80.0, "recall": 0.95}


# --- the inputs: model, collections, queries ---------------------------------------------


def ensure_model(model: Path) -> Path:
    if not (model / "config.json").exists():
        print(f"building the 0.6B-shape model in {model} ...", flush=True)
        subprocess.run(
            [sys.executable, str(ROOT / "models" / "build_test_models.py"), "--bench"], check=True
        )
    return model


def probe_model(model: Path) -> dict[str, Any]:
    """What the daemon serves for this folder (fingerprint, dtype, ...): one throwaway start."""
    daemon = Daemon(str(model))
    try:
        daemon.start()
        health: dict[str, Any] = daemon.call("GET", "/health", timeout=30)
        return health
    finally:
        daemon.stop()


def ensure_home(cache: Path, size: int, info: dict[str, Any]) -> Path:
    """A LOCALRANK_HOME whose database holds `size` synthetic chunks in a collection bound to
    the served model, with its ground truth next to it (cached per fingerprint)."""
    tag = hashlib.sha256(info["fingerprint"].encode()).hexdigest()[:8]
    home = cache / f"e2e-{size}-{tag}"
    db = home / "data" / "localrank.db"
    truth = home / "truth.npz"
    if truth.exists() and db.exists():
        return home
    src = ensure_db(cache, size)
    shutil.rmtree(home, ignore_errors=True)
    db.parent.mkdir(parents=True)
    print(f"copying {src.name} into {home} and binding it to the model ...", flush=True)
    # The store checkpoints its WAL on close: the main file is the whole database.
    shutil.copyfile(src, db)
    with SQLiteStore(db) as store, store.db.write() as conn:
        conn.execute(
            "UPDATE collections SET name = ?, fingerprint = ?, model_id = ? WHERE name = 'bench'",
            (COLLECTION, info["fingerprint"], info["model_id"]),
        )
    shutil.copyfile(src.with_suffix(".npz"), truth)
    return home


def queries(n: int, seed: int) -> list[str]:
    """Query texts of 5-16 words, two or three of them terms of the synthetic corpus."""
    rng = random.Random(seed)
    out = []
    for text in mixed_texts(n, min_words=3, max_words=13, seed=seed):
        corpus = [f"cluster{rng.randrange(CLUSTERS)}"] + [
            f"w{rng.randrange(5000)}" for _ in range(rng.randint(1, 2))
        ]
        words = text.rstrip(".").split() + corpus
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def body(query: str) -> dict[str, Any]:
    return {"collection": COLLECTION, "query": query, "top_k": 10, "mode": "hybrid"}


# --- talking to the daemon and to the reference ------------------------------------------


class Client:
    """One keep-alive connection, as an application would hold."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.last_used = time.monotonic()

    def search(self, query: str) -> tuple[float, dict[str, float]]:
        """(wall-clock ms, the response's timings_ms)."""
        payload = json.dumps(body(query))
        if time.monotonic() - self.last_used > IDLE_REOPEN_S:
            # The daemon closes a keep-alive connection idle for idle_timeout_s (15 s), as a
            # client's pool would notice: reconnect before timing, not inside the measurement.
            self.conn.close()
            self.conn.connect()
        t = time.perf_counter()
        self.conn.request("POST", "/v1/search", payload, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        ms = (time.perf_counter() - t) * 1000
        if response.status != 200:
            raise RuntimeError(f"/v1/search answered {response.status}: {data[:500]!r}")
        self.last_used = time.monotonic()
        return ms, json.loads(data)["timings_ms"]

    def close(self) -> None:
        self.conn.close()


def watch_health(daemon: Daemon, launched: float, out: dict[str, float]) -> None:
    """Record launch -> /health 200 and launch -> collections ready (polled every 20 ms)."""
    deadline = launched + 600
    while time.perf_counter() < deadline and "collections_ready_s" not in out:
        if daemon.port:
            try:
                _, health = daemon.request("GET", "/health", timeout=30)  # 503 while loading
            except (OSError, ValueError):
                health = {}
            now = time.perf_counter() - launched
            if health.get("status") == "ok":
                out.setdefault("healthy_s", now)
            if (health.get("collections") or {}).get("ready"):
                out["collections_ready_s"] = now
        time.sleep(0.02)


class Reference:
    """The in-process reference in a subprocess (this file with --reference-worker), so the
    client never holds torch: one query per line in, one RESULT line out."""

    def __init__(self, model: Path, db: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "bench.search_e2e",
            "--reference-worker",
            "--model",
            str(model),
        ]
        self.proc = subprocess.Popen(
            [*cmd, "--db", str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.ready = json.loads(self._line("READY "))

    def _line(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
        raise RuntimeError(f"reference worker exited with {self.proc.wait()}")

    def search(self, query: str) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(body(query)) + "\n")
        self.proc.stdin.flush()
        result: dict[str, float] = json.loads(self._line("RESULT "))
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def reference_worker(model: str, db: Path) -> None:
    """sentence-transformers at the folder's default dtype + the same retrieval, in-process."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, device="cpu")
    dtype = str(next(st.parameters()).dtype).removeprefix("torch.")
    store = SQLiteStore(db)
    coll = store.get_collection(COLLECTION)
    store.prepare_search()

    def embed(text: str) -> np.ndarray:
        vec = st.encode([text], prompt_name="query", normalize_embeddings=True)
        return np.asarray(vec, dtype=np.float32)[0]

    embed("warm up the shapes of a short query")
    print("READY " + json.dumps({"dtype": dtype}), flush=True)
    for line in sys.stdin:
        req = SearchRequest.from_json(json.loads(line))
        t0 = time.perf_counter()
        vec = embed(req.query)
        embed_ms = (time.perf_counter() - t0) * 1000
        timings: dict[str, float] = {}
        run_search(store, coll, req, vec, timings)
        total = (time.perf_counter() - t0) * 1000
        print("RESULT " + json.dumps({"total": total, "embed": embed_ms, **timings}), flush=True)
    store.close()


# --- the measurements --------------------------------------------------------------------


def split(timings: list[dict[str, float]], key: str) -> float:
    return pct([t.get(key, 0.0) for t in timings], 50)


@dataclass
class First:
    """The first search after a start, and that start's times."""

    ms: float
    timings: dict[str, float]
    healthy_s: float
    collections_ready_s: float
    daemon: Daemon
    client: Client


def first_search(model: Path, home: Path, text: str) -> First:
    """Start the daemon on `home` and send `text` the moment /health says 200 (the daemon and
    its client are left running)."""
    daemon = Daemon(str(model), home=home)
    times: dict[str, float] = {}
    launched = time.perf_counter()
    watcher = threading.Thread(target=watch_health, args=(daemon, launched, times), daemon=True)
    watcher.start()
    client: Client | None = None
    try:
        daemon.start(timeout=600)
        client = Client(daemon.port)
        ms, timings = client.search(text)
        watcher.join(timeout=60)
    except BaseException:
        if client is not None:
            client.close()
        daemon.stop()
        raise
    ready = times.get("collections_ready_s", float("nan"))
    return First(ms, timings, daemon.cold_start_s, ready, daemon, client)


def stop(first: First) -> None:
    first.client.close()
    first.daemon.stop()


def run_size(
    model: Path, home: Path, size: int, n_queries: int, seed: int, restarts: int
) -> list[dict[str, Any]]:
    """Restart figures, then the alternating daemon / reference measurement, for one size."""
    texts = queries(restarts + AFTER_RESTART + n_queries, seed)
    rows: list[dict[str, Any]] = []
    reference: Reference | None = None
    firsts = []
    for i in range(restarts - 1):
        firsts.append(first_search(model, home, texts[i]))
        stop(firsts[-1])
    firsts.append(first_search(model, home, texts[restarts - 1]))
    daemon, client = firsts[-1].daemon, firsts[-1].client
    try:
        rest = [client.search(t) for t in texts[restarts : restarts + AFTER_RESTART]]
        rest_ms = [ms for ms, _ in rest]
        rest_t = [t for _, t in rest]
        first_ms = [f.ms for f in firsts]
        first_t = [f.timings for f in firsts]
        info = daemon.call("GET", "/health", timeout=30)
        rows.append(
            {
                "figure": "first_search_after_restart",
                "chunks": size,
                "restarts": restarts,
                "first_ms": round(pct(first_ms, 50), 1),
                "first_each_ms": " ".join(f"{m:.0f}" for m in first_ms),
                "first_keyword_ms": round(split(first_t, "keyword"), 1),
                "first_vector_ms": round(split(first_t, "vector"), 1),
                "next_p50_ms": round(pct(rest_ms, 50), 1),
                "next_p95_ms": round(pct(rest_ms, 95), 1),
                "next_keyword_p50_ms": round(split(rest_t, "keyword"), 1),
                "next_keyword_p95_ms": round(pct([t.get("keyword", 0.0) for t in rest_t], 95), 1),
                "next_vector_p50_ms": round(split(rest_t, "vector"), 1),
                "next_vector_p95_ms": round(pct([t.get("vector", 0.0) for t in rest_t], 95), 1),
                "healthy_s": round(pct([f.healthy_s for f in firsts], 50), 2),
                "collections_ready_s": round(pct([f.collections_ready_s for f in firsts], 50), 2),
                "dtype": info.get("dtype"),
                "queries": len(rest_ms),
            }
        )
        print_restart(rows[-1])

        reference = Reference(model, home / "data" / "localrank.db")
        ours: list[tuple[float, dict[str, float]]] = []
        theirs: list[dict[str, float]] = []
        measured = texts[restarts + AFTER_RESTART :]
        for start in range(0, len(measured), BLOCK):
            block = measured[start : start + BLOCK]
            ours.extend(client.search(t) for t in block)
            time.sleep(0.3)  # let the other process's threads go idle
            theirs.extend(reference.search(t) for t in block)
            time.sleep(0.3)
        ms = [m for m, _ in ours]
        timings = [t for _, t in ours]
        ref_ms = [r["total"] for r in theirs]
        rows.append(
            {
                "figure": "search_e2e_hybrid",
                "chunks": size,
                "p50_ms": round(pct(ms, 50), 1),
                "p95_ms": round(pct(ms, 95), 1),
                "server_total_p50_ms": round(split(timings, "total"), 1),
                "embed_p50_ms": round(split(timings, "embed"), 1),
                "keyword_p50_ms": round(split(timings, "keyword"), 1),
                "vector_p50_ms": round(split(timings, "vector"), 1),
                "rerank_p50_ms": round(split(timings, "rerank"), 1),
                "ref_p50_ms": round(pct(ref_ms, 50), 1),
                "ref_p95_ms": round(pct(ref_ms, 95), 1),
                "ref_embed_p50_ms": round(split(theirs, "embed"), 1),
                "ratio_p50": round(ratio(pct(ms, 50), pct(ref_ms, 50)), 3),
                "dtype": info.get("dtype"),
                "ref_dtype": reference.ready["dtype"],
                "queries": len(ms),
            }
        )
        print_e2e(rows[-1])
    finally:
        if reference is not None:
            reference.close()
        client.close()
        code = daemon.stop()
        print(f"  daemon stopped with SIGTERM (exit {code})", flush=True)
    return rows


def print_restart(r: dict[str, Any]) -> None:
    verdict = "PASS" if r["first_ms"] <= r["next_p95_ms"] else "FAIL"
    print(
        f"  first search after each of {r['restarts']} restarts: {r['first_each_ms']} ms; "
        f"stages (median) keyword {fmt(r['first_keyword_ms'])}, vector "
        f"{fmt(r['first_vector_ms'])} vs the next {r['queries']}: keyword p50/p95 "
        f"{fmt(r['next_keyword_p50_ms'])}/{fmt(r['next_keyword_p95_ms'])}, vector "
        f"{fmt(r['next_vector_p50_ms'])}/{fmt(r['next_vector_p95_ms'])}",
        flush=True,
    )
    print(
        f"  first search after a restart (median): {fmt(r['first_ms'])} ms vs the next "
        f"{r['queries']}: p50 {fmt(r['next_p50_ms'])} / p95 {fmt(r['next_p95_ms'])} ms -> "
        f"{verdict} (first <= p95 of the rest)\n"
        f"  launch -> healthy {fmt(r['healthy_s'], 2)} s, -> collections ready "
        f"{fmt(r['collections_ready_s'], 2)} s (dtype {r['dtype']})",
        flush=True,
    )


def print_e2e(r: dict[str, Any]) -> None:
    p50_ok = "PASS" if r["p50_ms"] <= TARGETS["e2e_p50_ms"] else "FAIL"
    p95_ok = "PASS" if r["p95_ms"] <= TARGETS["e2e_p95_ms"] else "FAIL"
    print(
        f"  /v1/search hybrid, {r['chunks']} chunks, {r['queries']} queries (daemon "
        f"{r['dtype']}): p50 {fmt(r['p50_ms'])} ms [{p50_ok} <= {TARGETS['e2e_p50_ms']:.0f}], "
        f"p95 {fmt(r['p95_ms'])} ms [{p95_ok} <= {TARGETS['e2e_p95_ms']:.0f}]\n"
        f"    split (p50 ms): embed {fmt(r['embed_p50_ms'])}, keyword "
        f"{fmt(r['keyword_p50_ms'])}, vector {fmt(r['vector_p50_ms'])}, rerank "
        f"{fmt(r['rerank_p50_ms'])}; server total {fmt(r['server_total_p50_ms'])}\n"
        f"    in-process reference (sentence-transformers {r['ref_dtype']} + the same "
        f"retrieval): p50 {fmt(r['ref_p50_ms'])} / p95 {fmt(r['ref_p95_ms'])} ms (embed "
        f"{fmt(r['ref_embed_p50_ms'])}) -> daemon/in-process p50 {fmt(r['ratio_p50'], 2)}x",
        flush=True,
    )


def store_level(home: Path, size: int) -> list[dict[str, Any]]:
    """bench.search_bench's figures on the same database (no daemon running)."""
    rows = measure(
        home / "data" / "localrank.db",
        size,
        [400],
        collection=COLLECTION,
        truth_file=home / "truth.npz",
    )
    out = []
    for r in rows:
        p95_ok = "PASS" if float(r["p95_ms"]) <= TARGETS["store_1m_p95_ms"] else "FAIL"  # type: ignore[arg-type]
        rec_ok = "PASS" if float(r["recall_at_10"]) >= TARGETS["recall"] else "FAIL"  # type: ignore[arg-type]
        print(
            f"  store, {size} chunks, {r['mode']}: p50 {r['p50_ms']} / p95 {r['p95_ms']} ms "
            f"[{p95_ok} <= {TARGETS['store_1m_p95_ms']:.0f}], recall@10 {r['recall_at_10']} "
            f"[{rec_ok} >= {TARGETS['recall']}] (index load {r['index_load_s']} s, first "
            f"search after it {r['first_ms']} ms)",
            flush=True,
        )
        out.append({"figure": f"store_{r['mode']}", **r})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10k chunks, 20 queries, no 1M")
    ap.add_argument("--model", type=Path, default=BENCH_MODEL)
    ap.add_argument("--sizes", default=None, help="comma list (default 100k,1m; quick 10k)")
    ap.add_argument("--queries", type=int, default=None, help="measured per size (default 200)")
    ap.add_argument("--restarts", type=int, default=3, help="first searches timed per size")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/localrank-bench"))
    ap.add_argument("--out", type=Path, default=RESULTS / "search_e2e.csv")
    ap.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_worker:
        reference_worker(str(args.model), args.db)
        return
    sizes = [parse_size(s) for s in (args.sizes or ("10k" if args.quick else "100k,1m")).split(",")]
    n_queries = args.queries or (20 if args.quick else 200)
    print(f"[search e2e] other CPU load before starting: {background_cpu():.0%}", flush=True)
    model = ensure_model(args.model)
    info = probe_model(model)
    print(f"  model {info['model_id']} ({info['fingerprint']}), daemon dtype {info['dtype']}")
    homes = {size: ensure_home(args.cache_dir, size, info) for size in sizes}
    rows: list[dict[str, Any]] = []
    for i, size in enumerate(sizes):
        seconds = warm_file(homes[size] / "data" / "localrank.db")
        print(f"\n[{size} chunks] {homes[size]} (read once in {seconds:.1f} s)", flush=True)
        rows.extend(run_size(model, homes[size], size, n_queries, 100 + i, args.restarts))
        if size >= 1_000_000 or args.quick:
            rows.extend(store_level(homes[size], size))
    print(f"\n[search e2e] other CPU load at the end: {background_cpu():.0%}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
