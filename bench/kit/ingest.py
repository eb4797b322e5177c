"""Ingestion as the benches time it (bench.ingest_bench, bench.pg_bench): synthetic Markdown
documents, and one ingest job into a store, timed."""

from __future__ import annotations

import random
import time

from localrank.collections import CollectionService, DocumentIn, EmbeddingModel, IngestSettings
from localrank.store import Store

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


async def timed_ingest(
    store: Store, embedder: EmbeddingModel, docs: list[DocumentIn], ing: IngestSettings
) -> tuple[float, int]:
    """Seconds to ingest `docs` through a job into a new collection of an empty `store`, and
    the chunks stored (the store's only collection)."""
    service = CollectionService(store, lambda: embedder, ing)
    await service.create_collection("bench")
    start = time.perf_counter()
    job = await service.ingestor.submit("bench", docs)
    final = await service.run_job_here(job)
    seconds = time.perf_counter() - start
    assert final.state == "done", final
    return seconds, store.list_collections()[0][2]
