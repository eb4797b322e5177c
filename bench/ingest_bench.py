"""Ingestion throughput (chunks/s) as a ratio to raw embedding throughput on the same texts.

    python -m bench.ingest_bench --docs 200 \
        --embedder localrank.collections.models:local_embedding_model
    python -m bench.ingest_bench --embedder tests.fake_embedder:make   # plumbing only

`--embedder module:function` names a factory `f(settings) -> EmbeddingModel`. Raw throughput
embeds exactly the chunk texts ingestion will produce (same chunker, same token offsets, same
chunk size capped to the model's max tokens) with `bulk=True`; ingestion then runs the full path
(chunk, cache lookup, embed, write to a fresh SQLite store through a job). The ratio is the
result: absolute numbers on a shared machine are noise, so raw and ingest runs alternate for
`--rounds` rounds and the median of the per-round ratios is reported. Appends a row to
bench/results/ingest.csv.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib
import statistics
import tempfile
import time
from pathlib import Path

from bench.kit.ingest import synthetic_docs, timed_ingest
from bench.kit.paths import RESULTS
from localrank.collections import DocumentIn, EmbeddingModel, IngestSettings
from localrank.collections.chunking import chunk_text
from localrank.collections.ingest import chunk_budget
from localrank.config import load_settings
from localrank.store import SQLiteStore


class InFlight:
    """An embedder wrapper that measures how long at least one embed call was in flight: the
    share of ingest time the model had work, whatever its speed under the machine's load."""

    def __init__(self, inner: EmbeddingModel) -> None:
        self.inner = inner
        self.model_id, self.fingerprint, self.dim = inner.model_id, inner.fingerprint, inner.dim
        self.max_tokens = inner.max_tokens
        self.token_offsets = inner.token_offsets
        self.calls = 0
        self.since = 0.0
        self.seconds = 0.0

    async def embed(self, texts, *, query, instruction=None, bulk=False):  # type: ignore[no-untyped-def]
        if self.calls == 0:
            self.since = time.perf_counter()
        self.calls += 1
        try:
            return await self.inner.embed(texts, query=query, instruction=instruction, bulk=bulk)
        finally:
            self.calls -= 1
            if self.calls == 0:
                self.seconds += time.perf_counter() - self.since


def load_factory(spec: str):  # type: ignore[no-untyped-def]
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "embedder_factory")


async def embed_raw(embedder: EmbeddingModel, texts: list[str], step: int) -> float:
    """Seconds to embed `texts` as the engine does at best: bulk calls of `step` texts."""
    start = time.perf_counter()
    await asyncio.gather(
        *(
            embedder.embed(texts[s : s + step], query=False, bulk=True)
            for s in range(0, len(texts), step)
        )
    )
    return time.perf_counter() - start


async def ingest(
    embedder: EmbeddingModel, docs: list[DocumentIn], ing: IngestSettings
) -> tuple[float, int]:
    """Seconds to ingest `docs` through a job into a fresh store, and the chunks stored."""
    with tempfile.TemporaryDirectory(prefix="localrank-ingest-bench-") as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        try:
            return await timed_ingest(store, embedder, docs, ing)
        finally:
            store.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    settings = load_settings({"home": args.home} if args.home else None)
    embedder: EmbeddingModel = load_factory(args.embedder)(settings)
    docs = synthetic_docs(args.docs, args.paragraphs)
    ing = IngestSettings()
    target = chunk_budget(ing.chunk_tokens, embedder.max_tokens)
    texts = [
        c.text
        for d in docs
        for c in chunk_text(
            d.text,
            embedder.token_offsets(d.text),
            target_tokens=target,
            overlap_tokens=ing.chunk_overlap,
        )
    ]
    await embedder.embed(texts[:8], query=False, bulk=True)  # warm-up

    raw: list[float] = []
    took: list[float] = []
    cpu = {"raw": 0.0, "ingest": 0.0}  # process CPU seconds: less sensitive to other load
    watched = InFlight(embedder)
    for r in range(args.rounds):
        # Alternate the order so drift in the machine's load does not favour one side.
        for phase in ("raw", "ingest") if r % 2 == 0 else ("ingest", "raw"):
            start_cpu = time.process_time()
            if phase == "raw":
                raw.append(await embed_raw(embedder, texts, ing.embed_batch))
            else:
                watched.seconds = 0.0
                seconds, chunks = await ingest(watched, docs, ing)
                assert chunks == len(texts), (chunks, len(texts))
                took.append(seconds)
            cpu[phase] += time.process_time() - start_cpu
        print(
            f"round {r + 1}: raw {len(texts) / raw[-1]:.1f} chunks/s, ingest "
            f"{len(texts) / took[-1]:.1f} chunks/s, ratio {raw[-1] / took[-1]:.3f} "
            f"(CPU seconds, raw/ingest so far: {cpu['raw'] / cpu['ingest']:.3f}; the model had "
            f"work {100 * watched.seconds / took[-1]:.1f}% of the ingest time)",
            flush=True,
        )
    return {
        "model": embedder.model_id,
        "docs": len(docs),
        "chunks": len(texts),
        "raw_chunks_per_s": round(len(texts) / statistics.median(raw), 1),
        "ingest_chunks_per_s": round(len(texts) / statistics.median(took), 1),
        "ratio": round(statistics.median(r / t for r, t in zip(raw, took, strict=True)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--embedder", required=True, help="module:factory, factory(settings)")
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--paragraphs", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3, help="alternating raw/ingest rounds")
    ap.add_argument("--home", help="LOCALRANK_HOME for the settings given to the factory")
    ap.add_argument("--out", default=str(RESULTS / "ingest.csv"))
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
