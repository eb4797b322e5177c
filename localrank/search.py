"""Hybrid retrieval over a collection, and `SearchService`: the store, the ingestor, the job
runner and the embedder behind the search API and the CLI.

Pipeline (each stage timed):
  embed     the query, instructed, as an interactive (not bulk) request;
  keyword   FTS5 BM25 candidates, filter applied inside the query;
  vector    binary-code scan of the in-memory index (filter as a scan mask), exact cosine on
            the float32 vectors of a few hundred candidates;
  fuse      reciprocal-rank fusion (k=60) of the two lists (hybrid);
  rerank    exact cosine of every fused candidate against the query (default in hybrid).
Scores: cosine when reranked or in vector mode, the RRF score in hybrid without rerank, BM25
(higher is better) in keyword mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from localrank.documents import DocumentIn
from localrank.errors import InvalidInput
from localrank.ingest import (
    AsyncEmbedder,
    EmbedderGetter,
    Ingestor,
    check_model,
)
from localrank.job_runner import JobRunner
from localrank.store import Store
from localrank.store import documents as docs_db
from localrank.store import jobs as jobs_db
from localrank.store.filters import Filter, allowed_documents, parse_filter
from localrank.store.maintenance import compact
from localrank.store.records import Collection
from localrank.store.retrieve import exact_scores, keyword_candidates, vector_candidates

MODES = ("hybrid", "vector", "keyword")
RRF_K = 60
MAX_TOP_K = 1000
MAX_QUERY_CHARS = 32_768


@dataclass(frozen=True)
class SearchRequest:
    """A validated search request (field names as in the API)."""

    collection: str
    query: str
    top_k: int = 10
    mode: str = "hybrid"
    rerank: bool | None = None  # None: on for hybrid, off for keyword (no model needed)
    filter: Filter | None = None
    instruction: str | None = None
    candidates: int | None = None  # binary-scan candidates; None: max(400, 40 * top_k)

    @classmethod
    def from_json(cls, body: Any) -> SearchRequest:
        """Validate a `POST /v1/search` body; raises InvalidInput."""
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        collection, query = body.get("collection"), body.get("query")
        if not isinstance(collection, str) or not collection:
            raise InvalidInput("collection must be a non-empty string", param="collection")
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput("query must be a non-empty string", param="query")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInput(f"query is longer than {MAX_QUERY_CHARS} characters", param="query")
        top_k = body.get("top_k", 10)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidInput(f"top_k must be an integer in 1..{MAX_TOP_K}", param="top_k")
        mode = body.get("mode", "hybrid")
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}", param="mode")
        rerank = body.get("rerank")
        if rerank is not None and not isinstance(rerank, bool):
            raise InvalidInput("rerank must be true or false", param="rerank")
        instruction = body.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise InvalidInput("instruction must be a string", param="instruction")
        candidates = body.get("candidates")
        if candidates is not None and (
            isinstance(candidates, bool) or not isinstance(candidates, int)
            or not 1 <= candidates <= 100_000
        ):  # fmt: skip
            raise InvalidInput("candidates must be an integer in 1..100000", param="candidates")
        return cls(collection, query, top_k, mode, rerank, parse_filter(body.get("filter")),
                   instruction, candidates)  # fmt: skip

    @property
    def reranked(self) -> bool:
        return self.mode == "hybrid" if self.rerank is None else self.rerank

    @property
    def needs_embedding(self) -> bool:
        return self.mode != "keyword" or self.reranked


def rrf(lists: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: sum of 1 / (k + rank) over the lists each id appears in."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, cid in enumerate(ranked, start=1):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def run_search(
    store: Store,
    collection: Collection,
    req: SearchRequest,
    query_vector: np.ndarray | None,
    timings: dict[str, float],
) -> list[dict[str, Any]]:
    """The synchronous part of a search (call it in a worker thread)."""
    conn = store.db.reader()
    pool = max(50, 4 * req.top_k)
    allowed = allowed_documents(conn, collection.id, req.filter) if req.filter else None
    keyword: list[tuple[int, float]] = []
    vector: list[tuple[int, float]] = []
    if req.mode in ("hybrid", "keyword"):
        t = time.perf_counter()
        keyword = keyword_candidates(conn, collection.id, req.query, pool, allowed)
        timings["keyword"] = _ms(t)
    if req.mode in ("hybrid", "vector"):
        assert query_vector is not None
        t = time.perf_counter()
        index = store.indexes.get(collection.id)
        if index is not None:
            n_cand = req.candidates or max(400, 40 * req.top_k)
            vector = vector_candidates(conn, index, query_vector, pool, n_cand, allowed)
        timings["vector"] = _ms(t)
    cosine = dict(vector)
    if req.mode == "hybrid":
        ranked = rrf([[c for c, _ in keyword], [c for c, _ in vector]])
    elif req.mode == "vector":
        ranked = vector
    else:
        ranked = keyword
    if req.reranked and req.mode != "vector":
        assert query_vector is not None
        t = time.perf_counter()
        missing = [c for c, _ in ranked if c not in cosine]
        cosine.update(exact_scores(conn, missing, query_vector))
        ranked = sorted(
            ((c, cosine[c]) for c, _ in ranked if c in cosine), key=lambda kv: (-kv[1], kv[0])
        )
        timings["rerank"] = _ms(t)
    top = ranked[: req.top_k]
    kw_rank = {c: i for i, (c, _) in enumerate(keyword, start=1)}
    chunks = docs_db.fetch_chunks(conn, [c for c, _ in top])
    score = dict(top)
    return [
        {
            "document_id": ch.document_id,
            "chunk_id": ch.id,
            "text": ch.text,
            "score": round(float(score[ch.id]), 6),
            "citation": ch.citation(),
            "metadata": ch.metadata,
            "ranks": {"keyword": kw_rank.get(ch.id), "vector_cosine": cosine.get(ch.id)},
        }
        for ch in chunks
    ]


class SearchService:
    """Everything the search API and CLI call: async methods, SQLite work in worker threads."""

    def __init__(
        self, store: Store, embedder: EmbedderGetter, ingestor: Ingestor | None = None
    ) -> None:
        self.store = store
        self.get_embedder = embedder
        self.ingestor = ingestor or Ingestor(store, embedder)
        self.runner = JobRunner(self.ingestor)

    def embedder(self) -> AsyncEmbedder:
        """The serving embedder (raises NotReady while the model loads)."""
        return self.get_embedder()

    async def _collection(self, name: str) -> Collection:
        return await asyncio.to_thread(lambda: docs_db.get_collection(self.store.db.reader(), name))

    async def search(self, req: SearchRequest) -> dict[str, Any]:
        """Run a search; returns {"results": [...], "timings_ms": {...}, ...}."""
        start = time.perf_counter()
        timings = {"embed": 0.0, "keyword": 0.0, "vector": 0.0, "rerank": 0.0, "total": 0.0}
        collection = await self._collection(req.collection)
        query_vector = None
        model = collection.model_id
        if req.needs_embedding:
            embedder = self.get_embedder()
            check_model(collection, embedder)
            t = time.perf_counter()
            vecs = await embedder.embed([req.query], query=True, instruction=req.instruction)
            query_vector = np.asarray(vecs, dtype=np.float32)[0]
            timings["embed"] = _ms(t)
        results = await asyncio.to_thread(
            run_search, self.store, collection, req, query_vector, timings
        )
        timings["total"] = _ms(start)
        return {
            "collection": collection.name,
            "model": model,
            "mode": req.mode,
            "reranked": req.reranked,
            "results": results,
            "timings_ms": timings,
        }

    async def create_collection(
        self, name: str, *, settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create a collection bound to the serving model."""
        settings = dict(settings or {})
        for key, lo, hi in (("chunk_tokens", 16, 32768), ("chunk_overlap", 0, 16384)):
            value = settings.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi
            ):
                raise InvalidInput(f"{key} must be an integer in {lo}..{hi}", param=key)
        embedder = self.get_embedder()
        c = await asyncio.to_thread(
            docs_db.create_collection, self.store.db, name, fingerprint=embedder.fingerprint,
            model_id=embedder.model_id, dim=embedder.dim, settings=settings,
        )  # fmt: skip
        return c.to_api(documents=0, chunks=0)

    async def list_collections(self) -> list[dict[str, Any]]:
        """Every collection with its counts."""
        rows = await asyncio.to_thread(docs_db.list_collections, self.store.db.reader())
        return [c.to_api(documents=d, chunks=n) for c, d, n in rows]

    async def get_collection(self, name: str) -> dict[str, Any]:
        """One collection with its counts (NotFound if absent)."""
        for c in await self.list_collections():
            if c["name"] == name:
                return c
        raise docs_db.NotFound(f"collection {name!r} does not exist", param="collection")

    async def delete_collection(self, name: str) -> dict[str, Any]:
        """Delete a collection and everything in it."""
        await asyncio.to_thread(docs_db.delete_collection, self.store.db, name)
        return {"name": name, "deleted": True}

    async def add_documents(
        self, name: str, documents: list[DocumentIn], *, background: bool
    ) -> dict[str, Any]:
        """Upsert now (returns per-document status), or queue a job (returns its job_id)."""
        if not background:
            return await self.ingestor.upsert(name, documents)
        job = await self.ingestor.submit(name, documents)
        self.runner.notify()
        return {"job_id": job.id, "state": job.state, "total": job.total}

    async def get_document(self, name: str, doc_id: str) -> dict[str, Any]:
        """A document with its chunks and their citations."""

        def read() -> dict[str, Any]:
            conn = self.store.db.reader()
            doc, chunks = docs_db.get_document(conn, docs_db.get_collection(conn, name), doc_id)
            out = doc.to_api()
            out["chunks"] = [
                {"chunk_id": c.id, "ordinal": c.ordinal, "text": c.text, "citation": c.citation()}
                for c in chunks
            ]
            return out

        return await asyncio.to_thread(read)

    async def list_documents(
        self, name: str, *, limit: int = 100, after: str | None = None
    ) -> dict[str, Any]:
        """A page of documents (without text); `next_after` pages on."""

        def read() -> dict[str, Any]:
            conn = self.store.db.reader()
            docs = docs_db.list_documents(
                conn, docs_db.get_collection(conn, name), limit=limit, after=after
            )
            return {
                "documents": [d.to_api(include_text=False) for d in docs],
                "next_after": docs[-1].doc_id if len(docs) == limit else None,
            }

        return await asyncio.to_thread(read)

    async def delete_document(self, name: str, doc_id: str) -> dict[str, Any]:
        """Delete one document."""
        await asyncio.to_thread(docs_db.delete_document, self.store.db, name, doc_id)
        return {"id": doc_id, "deleted": True}

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """A job's state and progress."""
        job = await asyncio.to_thread(lambda: jobs_db.get_job(self.store.db.reader(), job_id))
        return job.to_api()

    async def list_jobs(self, *, limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
        """Recent jobs, newest first."""
        jobs = await asyncio.to_thread(
            lambda: jobs_db.list_jobs(self.store.db.reader(), limit=limit, state=state)
        )
        return [j.to_api() for j in jobs]

    async def reindex(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Queue a job re-embedding a collection with the serving model."""
        job = await self.ingestor.submit_reindex(name, force=force)
        self.runner.notify()
        return {"job_id": job.id, "state": job.state, "total": job.total}

    async def compact(self) -> dict[str, Any]:
        """Reclaim space left by deletes (VACUUM) and trim tombstones, old jobs and the cache."""
        report = await asyncio.to_thread(
            compact, self.store.db, cache_max_rows=self.ingestor.settings.cache_max_rows
        )
        return report.to_api()
