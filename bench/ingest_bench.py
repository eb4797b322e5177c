"""Ingestion throughput (chunks/s) as a ratio to raw embedding throughput on the same texts.

    python bench/ingest_bench.py --embedder localrank.engine.inprocess:embedder_factory --docs 200
    python bench/ingest_bench.py --embedder fake_embedder:make   # plumbing only (tests/ on path)

`--embedder module:function` names a factory `f(settings) -> AsyncEmbedder`. Raw throughput
embeds exactly the chunk texts ingestion will produce (same chunker, same token offsets) with
`bulk=True`; ingestion then runs the full path (chunk, cache lookup, embed, write to a fresh
SQLite store through a job). The ratio is the result: absolute numbers on a shared machine
are noise. Appends a row to bench/results/ingest.csv.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib
import random
import sys
import tempfile
import time
from pathlib import Path

from localrank.chunking import chunk_text
from localrank.config import load_settings
from localrank.ingest import AsyncEmbedder, DocumentIn, Ingestor, IngestSettings
from localrank.search import SearchService
from localrank.store import Store
from localrank.store import jobs as jobs_db
from localrank.store.db import scalar

ROOT = Path(__file__).resolve().parent
WORDS = [
    "model",
    "vector",
    "search",
    "index",
    "chunk",
    "token",
    "query",
    "document",
    "embedding",
    "sqlite",
    "latency",
    "throughput",
    "cosine",
    "binary",
    "rerank",
    "hybrid",
    "keyword",
    "fusion",
    "cache",
    "job",
    "batch",
]


def synthetic_docs(n: int, paragraphs: int, seed: int = 7) -> list[DocumentIn]:
    """Markdown documents with headings, prose and a code block; every text unique."""
    rng = random.Random(seed)
    docs = []
    for d in range(n):
        parts = [f"# Document {d}\n"]
        for p in range(paragraphs):
            if p % 4 == 0:
                parts.append(f"## Section {p}\n")
            words = [rng.choice(WORDS) for _ in range(rng.randint(40, 120))]
            parts.append(" ".join(words) + f" (doc {d} para {p}).\n")
            if p % 5 == 2:
                parts.append(f"```python\ndef f{d}_{p}(x):\n    return x * {p}\n```\n")
        docs.append(DocumentIn(f"doc{d}", "\n".join(parts)))
    return docs


def load_factory(spec: str):  # type: ignore[no-untyped-def]
    module, _, name = spec.partition(":")
    sys.path.insert(0, str(ROOT.parent / "tests"))
    return getattr(importlib.import_module(module), name or "embedder_factory")


async def run(args: argparse.Namespace) -> dict[str, object]:
    settings = load_settings({"home": args.home} if args.home else None)
    embedder: AsyncEmbedder = load_factory(args.embedder)(settings)
    docs = synthetic_docs(args.docs, args.paragraphs)
    ing = IngestSettings()
    texts = [
        c.text
        for d in docs
        for c in chunk_text(d.text, embedder.token_offsets(d.text),
                            target_tokens=ing.chunk_tokens, overlap_tokens=ing.chunk_overlap)
    ]  # fmt: skip
    await embedder.embed(texts[:8], query=False, bulk=True)  # warm-up

    start = time.perf_counter()
    step = ing.embed_batch
    await asyncio.gather(
        *(embedder.embed(texts[s : s + step], query=False, bulk=True)
          for s in range(0, len(texts), step))
    )  # fmt: skip
    raw_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="localrank-ingest-bench-") as tmp:
        store = Store(Path(tmp) / "bench.db")
        try:
            service = SearchService(store, lambda: embedder, Ingestor(store, lambda: embedder, ing))
            await service.create_collection("bench")
            start = time.perf_counter()
            job = await service.ingestor.submit("bench", docs)
            claimed = jobs_db.claim_job(store.db, service.runner.owner, only=job.id)
            assert claimed is not None
            final = await service.ingestor.process_job(claimed)
            ingest_s = time.perf_counter() - start
            chunks = int(scalar(store.db.reader(), "SELECT count(*) FROM chunks"))
        finally:
            store.close()
    assert final.state == "done" and chunks == len(texts), (final, chunks, len(texts))
    return {
        "model": embedder.model_id,
        "docs": len(docs),
        "chunks": chunks,
        "raw_chunks_per_s": round(len(texts) / raw_s, 1),
        "ingest_chunks_per_s": round(chunks / ingest_s, 1),
        "ratio": round(raw_s / ingest_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--embedder", required=True, help="module:factory, factory(settings)")
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--paragraphs", type=int, default=12)
    ap.add_argument("--home", help="LOCALRANK_HOME for the settings given to the factory")
    ap.add_argument("--out", default=str(ROOT / "results" / "ingest.csv"))
    args = ap.parse_args()
    row = asyncio.run(run(args))
    print(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


if __name__ == "__main__":
    main()
