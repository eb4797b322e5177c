"""Documents -> chunks -> vectors -> store, for the API (sync and async jobs) and the CLI.

The embedding engine is reached only through `EmbeddingModel`; ingestion always passes
`bulk=True` so the daemon's scheduler serves interactive requests (embed, rerank, search) first.

Durability contract: a sync upsert answers after its transaction commits; an async upsert
answers with a job id after the job row and every document's payload are committed. The job
runner then stores documents batch by batch, marking their items done in the same transaction,
so after kill -9 a restarted runner resumes exactly where the last commit left off.

Batches are pipelined so the model never waits for SQLite: while batch N is embedded, batch N+1
is read, chunked and looked up in the cache, and batch N-1 is written (`_overlapped`). Writes
stay in order, one transaction per batch holding its rows, its cache entries and its progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from localrank.collections.chunking import chunk_text
from localrank.collections.documents import DEFAULT_MAX_DOCUMENT_BYTES, DocumentIn, content_hash
from localrank.collections.models import EmbeddingModel, EmbeddingModelGetter
from localrank.declare import Range, arg
from localrank.errors import Conflict, LocalrankError, ModelMismatch
from localrank.store import Store
from localrank.store.records import (
    Collection,
    ItemFailure,
    Job,
    JobItem,
    JobProgress,
    PreparedDocument,
    WriteResult,
    check_fingerprint,
)

# A model's token limit counts its special tokens ([CLS] + [SEP], or Qwen3's EOS), and each chunk
# is tokenized again on its own, where a word cut at its edge can take more tokens than inside the
# whole document (measured: up to 2 more with MiniLM's WordPiece). Chunks stay this far below the
# limit, so the model never silently cuts one (tests/test_chunking.py checks both tokenizers).
SPECIAL_TOKENS_MARGIN = 8
TRANSIENT_CODES = ("not_ready", "overloaded")  # retry the job later; not the documents' fault


@dataclass(frozen=True)
class IngestSettings:
    """Chunking and batching knobs (a collection may override the chunking ones)."""

    chunk_tokens: int = 512
    chunk_overlap: int = 64
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    embed_batch: int = 128  # texts per embed() call; calls of one batch run concurrently
    job_batch_docs: int = 32  # documents per job transaction
    cache_max_rows: int = 100_000  # rows of the persistent embedding cache


@dataclass(frozen=True)
class ChunkSettings:
    """How a collection chunks its documents, when it says (`settings` of POST /v1/collections;
    unset: the daemon's IngestSettings)."""

    chunk_tokens: int | None = arg(
        "Tokens per chunk (default 512; capped to what the model reads in one input).",
        Range(16, 32768),
        default=None,
    )
    chunk_overlap: int | None = arg(
        "Tokens a chunk shares with the next one (default 64).", Range(0, 16384), default=None
    )

    def given(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def chunk_budget(chunk_tokens: int, max_tokens: int) -> int:
    """Tokens per chunk: the configured size, capped to what the model reads in one input."""
    return max(1, min(chunk_tokens, max_tokens - SPECIAL_TOKENS_MARGIN))


def check_model(collection: Collection, embedder: EmbeddingModel) -> None:
    """ModelMismatch (409) unless the collection is bound to the serving model."""
    check_fingerprint(collection, embedder.fingerprint, embedder.model_id)


Staged = TypeVar("Staged")
Embedded = TypeVar("Embedded")


@dataclass
class _Batch:
    """Texts on their way to the store: staged (cache looked up), then embedded, then written."""

    vectors: np.ndarray  # one row per text: cached rows when staged, the rest once embedded
    missing: dict[str, list[int]]  # each text the cache did not have -> its rows
    docs: list[PreparedDocument] = field(default_factory=list)  # chunks cover `vectors` in order
    items: list[JobItem] = field(default_factory=list)  # job items, one per entry of `docs`
    failed: list[ItemFailure] = field(default_factory=list)
    chunk_ids: list[int] = field(default_factory=list)  # reindex: the chunk of each row
    fresh: list[tuple[str, np.ndarray]] = field(default_factory=list)  # to cache on write


async def _overlapped(
    batches: AsyncGenerator[Staged, None],
    embed: Callable[[Staged], Coroutine[Any, Any, Embedded]],
    write: Callable[[Embedded], Awaitable[None]],
) -> None:
    """Embed each batch while the next is staged and the previous one written, in order.

    Staging and writing run in worker threads; the model runs in its own thread and releases the
    GIL, so the only time it idles is the hand-over between two batches.
    """
    running: asyncio.Task[Embedded] | None = None
    try:
        async with contextlib.aclosing(batches):
            async for staged in batches:  # staging N+1 overlaps embedding N
                previous = await running if running is not None else None
                running = asyncio.create_task(embed(staged))
                if previous is not None:
                    await write(previous)  # overlaps embedding N+1
        if running is not None:
            last, running = await running, None
            await write(last)
    finally:
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running


class Ingestor:
    """Upserts documents synchronously, queues jobs, and runs jobs to completion."""

    def __init__(
        self, store: Store, embedder: EmbeddingModelGetter, settings: IngestSettings | None = None
    ) -> None:
        self.store = store
        self.get_embedder = embedder
        self.settings = settings or IngestSettings()

    async def _collection(self, name: str) -> Collection:
        return await asyncio.to_thread(self.store.get_collection, name)

    def _lookup(self, embedder: EmbeddingModel, texts: Sequence[str]) -> _Batch:
        """Vectors the persistent cache has for `texts`; the rest is marked missing."""
        out = np.empty((len(texts), embedder.dim), dtype=np.float32)
        cached = self.store.cache_get(embedder.fingerprint, texts, embedder.dim)
        missing: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if i in cached:
                out[i] = cached[i]
            else:
                missing.setdefault(t, []).append(i)
        return _Batch(out, missing)

    def _stage(
        self, collection: Collection, embedder: EmbeddingModel, docs: Sequence[DocumentIn]
    ) -> _Batch:
        """(In a worker thread.) Chunk the documents whose text changed and look up the cache."""
        existing = self.store.document_hashes(collection, [d.id for d in docs])
        configured = int(collection.settings.get("chunk_tokens", self.settings.chunk_tokens))
        target = chunk_budget(configured, embedder.max_tokens)
        overlap = int(collection.settings.get("chunk_overlap", self.settings.chunk_overlap))
        prepared = []
        for d in docs:
            h = content_hash(d.text)
            chunks = None  # unchanged text (same hash): no chunks, nothing to embed
            if existing.get(d.id) != h:
                chunks = chunk_text(
                    d.text,
                    embedder.token_offsets(d.text),
                    target_tokens=target,
                    overlap_tokens=overlap,
                    # Source code read from a folder: `# comment` is no heading.
                    markdown=d.metadata.get("format") != "code",
                )
            prepared.append(PreparedDocument(d.id, d.text, d.metadata, d.source, h, chunks))
        batch = self._lookup(embedder, [c.text for p in prepared for c in p.chunks or ()])
        batch.docs = prepared
        return batch

    async def _embed(self, embedder: EmbeddingModel, batch: _Batch) -> _Batch:
        """Fill the batch's missing vectors with the model (bulk) and hand them to its docs."""
        unique = list(batch.missing)
        if unique:
            step = self.settings.embed_batch
            parts = await asyncio.gather(
                *(
                    embedder.embed(unique[s : s + step], query=False, bulk=True)
                    for s in range(0, len(unique), step)
                )
            )
            vecs = np.concatenate(parts).astype(np.float32, copy=False)
            if vecs.shape != (len(unique), embedder.dim) or not np.isfinite(vecs).all():
                raise LocalrankError(f"embedder returned {vecs.shape} or non-finite vectors")
            for t, v in zip(unique, vecs, strict=True):
                batch.vectors[batch.missing[t]] = v
            batch.fresh = list(zip(unique, vecs, strict=True))
        pos = 0
        for i, p in enumerate(batch.docs):
            if p.chunks is not None:
                n = len(p.chunks)
                batch.docs[i] = dataclasses.replace(p, vectors=batch.vectors[pos : pos + n])
                pos += n
        return batch

    async def _embed_isolating(
        self, collection: Collection, embedder: EmbeddingModel, batch: _Batch
    ) -> _Batch:
        """A job's embedding: when a batch fails, retry document by document and record which
        ones fail, so one bad document does not stop the job."""
        try:
            return await self._embed(embedder, batch)
        except LocalrankError as exc:
            if isinstance(exc, ModelMismatch) or exc.code in TRANSIENT_CODES:
                raise
            if len(batch.docs) == 1:
                item = batch.items[0]
                failure = ItemFailure(item.seq, item.doc_id, exc.message)
                return _Batch(batch.vectors[:0], {}, failed=[failure])
        out = _Batch(batch.vectors[:0], {})
        for item, p in zip(batch.items, batch.docs, strict=True):
            doc = DocumentIn(p.doc_id, p.text, p.metadata, p.source)
            one = await asyncio.to_thread(self._stage, collection, embedder, [doc])
            one.items = [item]
            one = await self._embed_isolating(collection, embedder, one)
            out.docs, out.items = out.docs + one.docs, out.items + one.items
            out.failed, out.fresh = out.failed + one.failed, out.fresh + one.fresh
        return out

    def _write(
        self, collection_name: str, embedder: EmbeddingModel, batch: _Batch, job_id: str | None
    ) -> tuple[list[WriteResult], Job | None]:
        # One transaction in the store: the documents, their new cache entries and the job's
        # progress commit together. That is what makes a job's resume exact.
        progress = None
        if job_id is not None:
            progress = JobProgress(job_id, tuple(i.seq for i in batch.items), tuple(batch.failed))
        return self.store.write_documents(
            collection_name,
            embedder.fingerprint,
            embedder.model_id,
            batch.docs,
            cache=batch.fresh,
            progress=progress,
        )

    async def upsert(self, collection_name: str, docs: Sequence[DocumentIn]) -> dict[str, Any]:
        """Store documents now; returns {"documents": [{id, status, chunks}], "chunks": n}."""
        collection = await self._collection(collection_name)
        embedder = self.get_embedder()
        check_model(collection, embedder)
        results: list[WriteResult] = []
        step = self.settings.job_batch_docs

        async def batches() -> AsyncGenerator[_Batch, None]:
            for s in range(0, len(docs), step):
                yield await asyncio.to_thread(self._stage, collection, embedder, docs[s : s + step])

        async def write(batch: _Batch) -> None:
            written, _ = await asyncio.to_thread(
                self._write, collection_name, embedder, batch, None
            )
            results.extend(written)

        await _overlapped(batches(), lambda b: self._embed(embedder, b), write)
        documents = [{"id": r.doc_id, "status": r.status, "chunks": r.chunks} for r in results]
        return {"documents": documents, "chunks": sum(r.chunks for r in results)}

    async def submit(self, collection_name: str, docs: Sequence[DocumentIn]) -> Job:
        """Queue an ingest job; when this returns, every document is durably recorded."""
        collection = await self._collection(collection_name)
        check_model(collection, self.get_embedder())
        items = [(d.id, d.to_payload()) for d in docs]
        return await asyncio.to_thread(
            lambda: self.store.create_job(collection_name, "ingest", items=items)
        )

    async def submit_reindex(self, collection_name: str, *, force: bool = False) -> Job:
        """Queue a job that re-embeds every chunk with the serving model."""
        collection = await self._collection(collection_name)
        embedder = self.get_embedder()
        if collection.fingerprint == embedder.fingerprint and not force:
            # The collection's state, not the request, is what stands in the way: a conflict.
            raise Conflict(
                f"collection {collection_name!r} already uses {embedder.model_id}; "
                "pass force to re-embed anyway"
            )
        params = {
            "fingerprint": embedder.fingerprint,
            "model_id": embedder.model_id,
            "dim": embedder.dim,
        }
        return await asyncio.to_thread(
            lambda: self.store.create_job(collection_name, "reindex", params=params)
        )

    async def process_job(self, job: Job, on_progress: Callable[[Job], None] | None = None) -> Job:
        """Run a claimed job to the end. ModelMismatch / NotReady propagate (job stays open)."""
        if job.kind == "reindex":
            await self._run_reindex(job, on_progress)
        else:
            await self._run_ingest(job, on_progress)
        return await asyncio.to_thread(self.store.get_job, job.id)

    async def _run_ingest(self, job: Job, on_progress: Callable[[Job], None] | None) -> None:
        collection = await self._collection(job.collection)
        embedder = self.get_embedder()
        check_model(collection, embedder)

        def stage(after: int) -> _Batch | None:
            # Items after the last one staged: the batch before may not be written yet.
            items = self.store.pending_items(job.id, self.settings.job_batch_docs, after=after)
            if not items:
                return None
            batch = self._stage(
                collection, embedder, [DocumentIn.from_payload(i.payload) for i in items]
            )
            batch.items = items
            return batch

        async def batches() -> AsyncGenerator[_Batch, None]:
            after = -1
            while (batch := await asyncio.to_thread(stage, after)) is not None:
                after = batch.items[-1].seq
                yield batch

        async def write(batch: _Batch) -> None:
            _, progress = await asyncio.to_thread(
                self._write, job.collection, embedder, batch, job.id
            )
            if on_progress and progress:
                on_progress(progress)

        await _overlapped(
            batches(), lambda b: self._embed_isolating(collection, embedder, b), write
        )
        await asyncio.to_thread(self.store.finish_job, job.id)
        await asyncio.to_thread(self.store.trim_cache, self.settings.cache_max_rows)

    async def _run_reindex(self, job: Job, on_progress: Callable[[Job], None] | None) -> None:
        embedder = self.get_embedder()
        if embedder.fingerprint != job.params["fingerprint"]:
            raise ModelMismatch(
                f"reindex job {job.id} targets {job.params['model_id']} but the server runs "
                f"{embedder.model_id}"
            )
        collection = await self._collection(job.collection)

        def stage(after: int) -> _Batch | None:
            todo = self.store.chunks_to_reindex(
                collection, job.id, self.settings.embed_batch, after=after
            )
            if not todo:
                return None
            batch = self._lookup(embedder, [t for _, t in todo])
            batch.chunk_ids = [c for c, _ in todo]
            return batch

        async def batches() -> AsyncGenerator[_Batch, None]:
            after = 0
            while (batch := await asyncio.to_thread(stage, after)) is not None:
                after = batch.chunk_ids[-1]
                yield batch

        async def write(batch: _Batch) -> None:
            progress = await asyncio.to_thread(
                lambda: self.store.stage_reindexed(
                    job.id,
                    batch.chunk_ids,
                    batch.vectors,
                    fingerprint=embedder.fingerprint,
                    cache=batch.fresh,
                )
            )
            if on_progress:
                on_progress(progress)

        # Chunks written while the pass ran (below where it had got to) get another pass.
        while True:
            await _overlapped(batches(), lambda b: self._embed(embedder, b), write)
            if await asyncio.to_thread(self.store.swap_reindexed, job.collection, job.id):
                return
