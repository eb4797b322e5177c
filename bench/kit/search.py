"""The search benches' corpus and their store-level measurement (bench.search_bench, and
bench.search_e2e and bench.pg_bench on the same data).

The corpus: 1024-d unit vectors around 2,000 random unit centres (cosine to the centre ~0.7),
100 chunks a document, each chunk's text its cluster's name and eight random corpus words, each
document in one of ten shards; 100 queries drawn the same way. Seeded: a size always gives the
same corpus. The exact top 10 of each query is computed while generating (streamed: 1M x 1024
floats is 4 GB, never held at once).

The SQLite database is built through the store's own write path (`write_documents`: chunks, FTS,
float32 vectors, binary codes) and cached with the exact ground truth, so a rerun only measures;
the filtered ground truth (documents with shard 3, a tenth) on first use, from the stored
vectors. `measure` reads the database once first (the OS page cache warm, as on a machine that
has been searching it), then times the store's `prepare_search` (the daemon's startup) and the
first search after it, vector search at each candidate count, the full hybrid pipeline (FTS5 +
vector + RRF + exact rerank + chunk fetch) and vector search with a filter, each with recall@10
against exact (filtered) search.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
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


def queries() -> tuple[np.ndarray, np.ndarray]:
    """The QUERIES query vectors and the cluster each was drawn from."""
    cent = centres(np.random.default_rng(1234))
    return sample(np.random.default_rng(99), cent, QUERIES)


def corpus(
    n: int, *, row_tags: bool = False
) -> Iterator[tuple[int, np.ndarray, list[PreparedDocument]]]:
    """The corpus of `n` chunks in batches of BATCH_DOCS documents: (the batch's first row, its
    vectors, its documents). `row_tags`: each chunk's text names its row too (`r<row>`), for a
    client that reads the rows back out of the results."""
    rng = np.random.default_rng(1234)
    cent = centres(rng)
    row = doc = 0
    while row < n:
        rows = min(n - row, BATCH_DOCS * CHUNKS_PER_DOC)
        vecs, labels = sample(rng, cent, rows)
        docs = []
        for s in range(0, rows, CHUNKS_PER_DOC):
            part = vecs[s : s + CHUNKS_PER_DOC]
            words = rng.integers(0, VOCAB, (len(part), 8))
            chunks = [
                Chunk(
                    k,
                    f"cluster{labels[s + k]} "
                    + (f"r{row + s + k} " if row_tags else "")
                    + " ".join(f"w{w}" for w in words[k]),
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
        yield row, vecs, docs
        row += rows


class TopK:
    """The exact top 10 of each query over vectors added batch by batch: `ids` (queries x 10)."""

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries
        self.scores = np.full((len(queries), 10), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(queries), 10), dtype=np.int64)

    def add(self, vecs: np.ndarray, ids: np.ndarray) -> None:
        sims = self.queries @ vecs.T
        all_s = np.concatenate([self.scores, sims], axis=1)
        all_i = np.concatenate([self.ids, np.broadcast_to(ids, sims.shape)], axis=1)
        top = np.argsort(-all_s, axis=1)[:, :10]
        self.scores = np.take_along_axis(all_s, top, 1)
        self.ids = np.take_along_axis(all_i, top, 1)


def build(path: Path, n: int) -> dict[str, float]:
    """Create the SQLite database of `n` chunks and return the build's stats; the queries and
    their ground truth (chunk ids) are saved next to it."""
    qs, qlabels = queries()
    top = TopK(qs)
    store = SQLiteStore(path)
    start = time.perf_counter()
    try:
        store.create_collection(
            "bench", fingerprint="synthetic-1024", model_id="synthetic", dim=DIM, settings={}
        )
        for row, vecs, docs in corpus(n):
            top.add(vecs, np.arange(row, row + len(vecs)))
            store.write_documents("bench", "synthetic-1024", "synthetic", docs)
        build_s = time.perf_counter() - start
        ids = np.array(
            [r[0] for r in store.db.reader().execute("SELECT id FROM chunks ORDER BY id")]
        )
    finally:
        store.close()
    truth = ids[top.ids]
    np.savez(path.with_suffix(".npz"), queries=qs, qlabels=qlabels, truth=truth, build_s=build_s)
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
    top = TopK(queries)
    for start in range(0, len(ids), 20_000):
        got, vecs = fetch_vectors(conn, ids[start : start + 20_000].tolist())
        top.add(vecs, got)
    np.savez(cache, truth=top.ids)
    return top.ids


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
