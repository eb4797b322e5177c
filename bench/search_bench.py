"""Search latency (p50/p95) and recall@10 against exact float search, at 10k / 100k / 1M chunks
of 1024-d clustered synthetic vectors.

The database is built through the store's own write path (`write_documents`: chunks, FTS,
float32 vectors, binary codes) and cached under --cache-dir with the exact ground truth, so a
rerun only measures. Ground truth is computed while generating (streamed: 1M x 1024 floats is
4 GB, never held at once); the filtered ground truth (documents with shard 3, a tenth) on first
use, from the stored vectors.

Per size, with the database file read once first (the OS page cache warm, as on a machine that
has been searching it): `index_load_s` is the store's `prepare_search` (the daemon's startup),
`first_ms` the first search after it; then vector search at each --candidates, the full hybrid
pipeline (FTS5 + vector + RRF + exact rerank + chunk fetch) and vector search with a filter,
each with recall@10 against exact (filtered) search.

    python bench/search_bench.py --sizes 10k,100k,1m
Writes bench/results/search.csv. bench/search_e2e.py reuses `ensure_db` and `measure`.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from localrank.collections.search import SearchRequest, parse_filter, run_search
from localrank.store import SQLiteStore
from localrank.store.filters import Filter
from localrank.store.records import Chunk, Collection, PreparedDocument
from localrank.store.sqlite.retrieve import allowed_documents, fetch_vectors

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


def ensure_db(cache: Path, size: int) -> Path:
    """The cached database of `size` chunks (built now if missing, with its ground truth)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"search_{size}_{DIM}.db"
    if not path.with_suffix(".npz").exists():
        for p in cache.glob(f"{path.name}*"):
            p.unlink()
        print(f"building {size} chunks ...", flush=True)
        stats = build(path, size)
        print(f"  built in {stats['build_s']:.0f} s", flush=True)
    return path


def filtered_truth(
    store: SQLiteStore, coll: Collection, queries: np.ndarray, flt: Filter, cache: Path
) -> np.ndarray:
    """Exact top-10 chunk ids of each query among the chunks the filter allows (cached)."""
    if cache.exists():
        return np.asarray(np.load(cache)["truth"])
    conn = store.db.reader()
    docs = allowed_documents(conn, coll.id, flt)
    ids = np.array(
        [
            r[0]
            for r in conn.execute(
                "SELECT id FROM chunks WHERE doc IN (SELECT value FROM json_each(?)) ORDER BY id",
                (json.dumps(docs.tolist()),),
            )
        ],
        dtype=np.int64,
    )
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 10), dtype=np.int64)
    for start in range(0, len(ids), 20_000):
        got, vecs = fetch_vectors(conn, ids[start : start + 20_000].tolist())
        all_s = np.concatenate([best_s, queries @ vecs.T], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(got, (len(queries), len(got)))], axis=1)
        top = np.argsort(-all_s, axis=1)[:, :10]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    np.savez(cache, truth=best_i)
    return best_i


def warm_file(path: Path) -> float:
    """Read a database once, sequentially, so it sits in the OS page cache as it does on a
    machine that has been searching it; returns the seconds taken. (From a cold cache, after a
    reboot, every search reads its candidates' float vectors from disk until it is warm.)"""
    start = time.perf_counter()
    with path.open("rb") as f:
        while f.read(16 << 20):
            pass
    return time.perf_counter() - start


def recall(got: list[int], exact: np.ndarray) -> float:
    return len(set(got) & set(exact.tolist())) / 10


def measure(
    path: Path,
    n: int,
    candidates: list[int],
    *,
    collection: str = "bench",
    truth_file: Path | None = None,
) -> list[dict[str, object]]:
    """Every figure of the module docstring for one database (opened here, closed after)."""
    data = np.load(truth_file or path.with_suffix(".npz"))
    queries, truth, qlabels = data["queries"], data["truth"], data["qlabels"]
    warm_file(path)
    store = SQLiteStore(path)
    rows: list[dict[str, object]] = []
    try:
        coll = store.get_collection(collection)
        t = time.perf_counter()
        store.prepare_search()
        load_s = time.perf_counter() - t
        assert store.search_readiness().ready
        t = time.perf_counter()
        store.vector_candidates(coll, queries[0], 10, candidates=400)
        first_ms = (time.perf_counter() - t) * 1000
        for c in candidates:
            lat, rec = [], []
            for q, exact in zip(queries, truth, strict=True):
                t = time.perf_counter()
                hits = store.vector_candidates(coll, q, 10, candidates=c)
                lat.append((time.perf_counter() - t) * 1000)
                rec.append(recall([h for h, _ in hits], exact))
            rows.append(row_for(n, "vector", c, lat, rec, load_s, first_ms, path))
        # The full hybrid pipeline (FTS5 + vector + RRF + rerank + chunk fetch), default knobs,
        # and vector search inside a filter (a tenth of the documents).
        shard = {"shard": 3}
        flt = parse_filter(shard)
        assert flt is not None
        exact_filtered = filtered_truth(
            store, coll, queries, flt, path.with_name(f"{path.stem}.{collection}.shard3.npz")
        )
        for mode, body_filter, exact_set in (
            ("hybrid", None, truth),
            ("vector+filter", shard, exact_filtered),
        ):
            lat, rec = [], []
            for q, exact, label in zip(queries, exact_set, qlabels, strict=True):
                body = {
                    "collection": collection,
                    "query": f"cluster{label} w1 w2",
                    "top_k": 10,
                    "mode": mode.split("+")[0],
                    "filter": body_filter,
                }
                req = SearchRequest.from_json(body)
                timings: dict[str, float] = {}
                t = time.perf_counter()
                results = run_search(store, coll, req, q, timings)
                lat.append((time.perf_counter() - t) * 1000)
                rec.append(recall([r["chunk_id"] for r in results], exact))
            rows.append(row_for(n, mode, 400, lat, rec, load_s, first_ms, path))
    finally:
        store.close()
    return rows


def row_for(
    n: int,
    mode: str,
    c: int,
    lat: list[float],
    rec: list[float],
    load_s: float,
    first_ms: float,
    path: Path,
) -> dict[str, object]:
    return {
        "chunks": n,
        "dim": DIM,
        "mode": mode,
        "candidates": c,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "recall_at_10": round(float(np.mean(rec)), 4),
        "index_load_s": round(load_s, 2),
        "first_ms": round(first_ms, 2),
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
    all_rows = []
    for size in (parse_size(s) for s in args.sizes.split(",")):
        path = ensure_db(cache, size)
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
