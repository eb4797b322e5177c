"""Search latency (p50/p95) and recall@10 against exact float search, at 10k / 100k / 1M chunks
of 1024-d clustered synthetic vectors.

The database is built through the store's own write path (`write_documents`: chunks, FTS,
float32 vectors, binary codes) and cached under --cache-dir with the exact ground truth, so a
rerun only measures. Ground truth is computed while generating (streamed: 1M x 1024 floats is
4 GB, never held at once).

    python bench/search_bench.py --sizes 10k,100k,1m
Writes bench/results/search.csv.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from localrank.collections.search import SearchRequest, run_search
from localrank.store import SQLiteStore
from localrank.store.records import Chunk, PreparedDocument

DIM = 1024
CLUSTERS = 2000
NOISE = 1.0  # per-vector noise norm relative to the unit cluster centre (cos to centre ~0.7)
CHUNKS_PER_DOC = 100
BATCH_DOCS = 50
QUERIES = 100
VOCAB = 5000
ROOT = Path(__file__).resolve().parent


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * mult)


def centres(rng: np.random.Generator) -> np.ndarray:
    c = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def sample(rng: np.random.Generator, cent: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, CLUSTERS, n)
    noise = rng.standard_normal((n, DIM)).astype(np.float32) * (NOISE / np.sqrt(DIM))
    v = cent[labels] + noise
    return v / np.linalg.norm(v, axis=1, keepdims=True), labels


def build(path: Path, n: int) -> dict[str, float]:
    """Create the DB and return ground truth + build stats (saved next to it)."""
    rng = np.random.default_rng(1234)
    cent = centres(rng)
    queries, qlabels = sample(np.random.default_rng(99), cent, QUERIES)
    best_s = np.full((QUERIES, 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((QUERIES, 10), dtype=np.int64)
    store = SQLiteStore(path)
    start = time.perf_counter()
    try:
        store.create_collection(
            "bench", fingerprint="synthetic-1024", model_id="synthetic", dim=DIM, settings={}
        )
        row = 0
        doc = 0
        while row < n:
            docs = []
            batch_rows = min(n - row, BATCH_DOCS * CHUNKS_PER_DOC)
            vecs, labels = sample(rng, cent, batch_rows)
            # streamed exact top-10 for every query
            sims = queries @ vecs.T
            all_s = np.concatenate([best_s, sims], axis=1)
            all_i = np.concatenate(
                [best_i, np.broadcast_to(np.arange(row, row + batch_rows), sims.shape)], axis=1
            )
            top = np.argsort(-all_s, axis=1)[:, :10]
            best_s = np.take_along_axis(all_s, top, 1)
            best_i = np.take_along_axis(all_i, top, 1)
            for s in range(0, batch_rows, CHUNKS_PER_DOC):
                part = vecs[s : s + CHUNKS_PER_DOC]
                words = rng.integers(0, VOCAB, (len(part), 8))
                chunks = [
                    Chunk(
                        k,
                        f"cluster{labels[s + k]} " + " ".join(f"w{w}" for w in words[k]),
                        0,
                        10,
                        1,
                        1,
                    )
                    for k in range(len(part))
                ]
                docs.append(
                    PreparedDocument(
                        f"doc{doc}", "synthetic", {"shard": doc % 10}, None, f"h{doc}", chunks, part
                    )
                )
                doc += 1
            store.write_documents("bench", "synthetic-1024", "synthetic", docs)
            row += batch_rows
        build_s = time.perf_counter() - start
        ids = np.array(
            [r[0] for r in store.db.reader().execute("SELECT id FROM chunks ORDER BY id")]
        )
    finally:
        store.close()
    truth = ids[best_i]
    np.savez(
        path.with_suffix(".npz"), queries=queries, qlabels=qlabels, truth=truth, build_s=build_s
    )
    return {"build_s": build_s}


def measure(path: Path, n: int, candidates: list[int]) -> list[dict[str, object]]:
    data = np.load(path.with_suffix(".npz"))
    queries, truth, qlabels = data["queries"], data["truth"], data["qlabels"]
    store = SQLiteStore(path)
    rows: list[dict[str, object]] = []
    try:
        coll = store.get_collection("bench")
        t = time.perf_counter()
        index = store.indexes.get(coll.id)
        load_s = time.perf_counter() - t
        assert index is not None and index.size == n
        for c in candidates:
            lat, rec = [], []
            for q, exact in zip(queries, truth, strict=True):
                t = time.perf_counter()
                hits = store.vector_candidates(coll, q, 10, candidates=c)
                lat.append((time.perf_counter() - t) * 1000)
                rec.append(len({h for h, _ in hits} & set(exact.tolist())) / 10)
            rows.append(row_for(n, "vector", c, lat, rec, load_s, path))
        # The full hybrid pipeline (FTS5 + vector + RRF + rerank + chunk fetch), default knobs.
        for mode, flt in (("hybrid", None), ("vector+filter", {"shard": 3})):
            lat, rec = [], []
            for q, exact, label in zip(queries, truth, qlabels, strict=True):
                body = {
                    "collection": "bench",
                    "query": f"cluster{label} w1 w2",
                    "top_k": 10,
                    "mode": mode.split("+")[0],
                    "filter": flt,
                }
                req = SearchRequest.from_json(body)
                timings: dict[str, float] = {}
                t = time.perf_counter()
                results = run_search(store, coll, req, q, timings)
                lat.append((time.perf_counter() - t) * 1000)
                rec.append(len({r["chunk_id"] for r in results} & set(exact.tolist())) / 10)
            rows.append(
                row_for(n, mode, max(400, 400), lat, rec if mode == "hybrid" else [], load_s, path)
            )
    finally:
        store.close()
    return rows


def row_for(
    n: int, mode: str, c: int, lat: list[float], rec: list[float], load_s: float, path: Path
) -> dict[str, object]:
    return {
        "chunks": n,
        "dim": DIM,
        "mode": mode,
        "candidates": c,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "recall_at_10": round(float(np.mean(rec)), 4) if rec else "",
        "index_load_s": round(load_s, 2),
        "db_mb": round(path.stat().st_size / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10k,100k", help="comma list, e.g. 10k,100k,1m")
    ap.add_argument("--candidates", default="100,200,400,1000")
    ap.add_argument("--cache-dir", default="/tmp/localrank-bench")
    ap.add_argument("--out", default=str(ROOT / "results" / "search.csv"))
    args = ap.parse_args()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    all_rows = []
    for size in (parse_size(s) for s in args.sizes.split(",")):
        path = cache / f"search_{size}_{DIM}.db"
        if not path.with_suffix(".npz").exists():
            for p in cache.glob(f"{path.name}*"):
                p.unlink()
            print(f"building {size} chunks ...", flush=True)
            stats = build(path, size)
            print(f"  built in {stats['build_s']:.0f} s", flush=True)
        rows = measure(path, size, [int(c) for c in args.candidates.split(",")])
        for r in rows:
            print(r, flush=True)
        all_rows.extend(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        w.writeheader()
        w.writerows(all_rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
