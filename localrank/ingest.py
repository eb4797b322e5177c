"""Documents -> chunks -> vectors -> store, for the API (sync and async jobs) and the CLI.

The embedding engine is reached only through `AsyncEmbedder`; ingestion always passes
`bulk=True` so the daemon's scheduler serves interactive requests (embed, rerank, search) first.

Durability contract: a sync upsert answers after its transaction commits; an async upsert
answers with a job id after the job row and every document's payload are committed. The job
runner then stores documents batch by batch, marking their items done in the same transaction,
so after kill -9 a restarted runner resumes exactly where the last commit left off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from localrank.chunking import chunk_text
from localrank.errors import InvalidInput, LocalrankError, ModelMismatch, TooLarge
from localrank.store import Store
from localrank.store import documents as docs_db
from localrank.store import jobs as jobs_db
from localrank.store.cache import DEFAULT_MAX_ROWS, cache_get, cache_put, trim_cache
from localrank.store.db import scalar
from localrank.store.records import Collection, PreparedDocument
from localrank.store.reindex import chunks_to_reindex, stage_vectors, swap_vectors

DEFAULT_MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
MAX_DOCUMENT_ID_CHARS = 512


class AsyncEmbedder(Protocol):
    """What ingestion and search need from the engine."""

    model_id: str  # e.g. "Qwen/Qwen3-Embedding-0.6B"
    fingerprint: str  # model id + revision + dim + pooling + prompt format
    dim: int

    async def embed(
        self,
        texts: Sequence[str],
        *,
        query: bool,
        instruction: str | None = None,
        bulk: bool = False,
    ) -> np.ndarray:
        """float32 [N, dim], L2-normalised."""
        ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of `text`."""
        ...


EmbedderGetter = Callable[[], AsyncEmbedder]


@dataclass(frozen=True)
class IngestSettings:
    """Chunking and batching knobs (a collection may override the chunking ones)."""

    chunk_tokens: int = 512
    chunk_overlap: int = 64
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    embed_batch: int = 128  # texts per embed() call; calls of one batch run concurrently
    job_batch_docs: int = 32  # documents per job transaction
    cache_max_rows: int = DEFAULT_MAX_ROWS


@dataclass(frozen=True)
class DocumentIn:
    """A document as submitted."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def to_payload(self) -> str:
        return json.dumps(
            {"id": self.id, "text": self.text, "metadata": self.metadata, "source": self.source},
            ensure_ascii=False,
        )

    @classmethod
    def from_payload(cls, payload: str) -> DocumentIn:
        d = json.loads(payload)
        return cls(d["id"], d["text"], d.get("metadata") or {}, d.get("source"))


def content_hash(text: str) -> str:
    """sha256 of the text: equal hashes are never embedded twice."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_text(doc_id: str, text: str, max_bytes: int) -> None:
    """Refuse empty text, binary junk and oversized documents with a message naming the doc."""
    if not text.strip():
        raise InvalidInput(f"document {doc_id!r} has empty text", param="text")
    if "\x00" in text:
        raise InvalidInput(f"document {doc_id!r} contains NUL bytes: binary data?", param="text")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"document {doc_id!r} is not valid Unicode text (lone surrogate at {exc.start})",
            param="text",
        ) from exc
    if size > max_bytes:
        raise TooLarge(
            f"document {doc_id!r} is {size / 1e6:.1f} MB; the limit is "
            f"{max_bytes / 1e6:.1f} MB per document",
            param="text",
        )
    sample = text[:65536]
    junk = sum(1 for ch in sample if (ord(ch) < 32 and ch not in "\t\n\r\f") or ch == "\ufffd")
    if junk > max(8, len(sample) // 100):
        raise InvalidInput(
            f"document {doc_id!r} looks like binary data ({junk} control or replacement "
            f"characters in its first {len(sample)})",
            param="text",
        )


def parse_documents(raw: Any, *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> list[DocumentIn]:
    """Validate a request's `documents` list; raises InvalidInput / TooLarge."""
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("documents must be a non-empty list", param="documents")
    out: list[DocumentIn] = []
    seen: set[str] = set()
    dupes: list[str] = []
    for i, d in enumerate(raw):
        if not isinstance(d, dict):
            raise InvalidInput(f"documents[{i}] must be an object", param="documents")
        doc_id, text = d.get("id"), d.get("text")
        if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_DOCUMENT_ID_CHARS:
            raise InvalidInput(
                f"documents[{i}].id must be a string of 1-{MAX_DOCUMENT_ID_CHARS} characters",
                param="id",
            )
        if not isinstance(text, str):
            raise InvalidInput(f"document {doc_id!r}: text must be a string", param="text")
        metadata = d.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InvalidInput(f"document {doc_id!r}: metadata must be an object", param="metadata")
        source = d.get("source")
        if source is not None and not isinstance(source, str):
            raise InvalidInput(f"document {doc_id!r}: source must be a string", param="source")
        check_text(doc_id, text, max_bytes)
        if doc_id in seen:
            dupes.append(doc_id)
        seen.add(doc_id)
        out.append(DocumentIn(doc_id, text, metadata, source))
    if dupes:
        raise InvalidInput(
            f"duplicate document ids in one request: {', '.join(sorted(set(dupes))[:10])}",
            param="id",
        )
    return out


def check_model(collection: Collection, embedder: AsyncEmbedder) -> None:
    """ModelMismatch (409) unless the collection is bound to the serving model."""
    if collection.fingerprint != embedder.fingerprint:
        raise ModelMismatch(
            f"collection {collection.name!r} was embedded with {collection.model_id} "
            f"(fingerprint {collection.fingerprint}), but the server runs {embedder.model_id} "
            f"(fingerprint {embedder.fingerprint}). Re-embed it with the current model: "
            f"`localrank reindex {collection.name}` or POST /v1/collections/{collection.name}"
            "/reindex",
            collection_model=collection.model_id,
            server_model=embedder.model_id,
        )


class Ingestor:
    """Upserts documents synchronously, queues jobs, and runs jobs to completion."""

    def __init__(
        self, store: Store, embedder: EmbedderGetter, settings: IngestSettings | None = None
    ) -> None:
        self.store = store
        self.get_embedder = embedder
        self.settings = settings or IngestSettings()

    async def _collection(self, name: str) -> Collection:
        return await asyncio.to_thread(lambda: docs_db.get_collection(self.store.db.reader(), name))

    async def embed_texts(self, embedder: AsyncEmbedder, texts: Sequence[str]) -> np.ndarray:
        """Vectors for texts: persistent cache first, the model (bulk) for the rest."""
        dim = embedder.dim
        out = np.empty((len(texts), dim), dtype=np.float32)
        cached = await asyncio.to_thread(
            cache_get, self.store.db.reader(), embedder.fingerprint, texts, dim
        )
        for i, v in cached.items():
            out[i] = v
        missing: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if i not in cached:
                missing.setdefault(t, []).append(i)
        unique = list(missing)
        step = self.settings.embed_batch
        parts = await asyncio.gather(
            *(
                embedder.embed(unique[s : s + step], query=False, bulk=True)
                for s in range(0, len(unique), step)
            )
        )
        if unique:
            vecs = np.concatenate(parts).astype(np.float32, copy=False)
            if vecs.shape != (len(unique), dim) or not np.isfinite(vecs).all():
                raise LocalrankError(f"embedder returned {vecs.shape} or non-finite vectors")
            for t, v in zip(unique, vecs, strict=True):
                out[missing[t]] = v
            await asyncio.to_thread(self._cache_put, embedder.fingerprint, unique, vecs)
        return out

    def _cache_put(self, fingerprint: str, texts: list[str], vecs: np.ndarray) -> None:
        with self.store.db.write() as conn:
            cache_put(conn, fingerprint, texts, vecs)

    async def prepare(
        self, collection: Collection, embedder: AsyncEmbedder, docs: Sequence[DocumentIn]
    ) -> list[PreparedDocument]:
        """Chunk and embed the documents whose text changed; unchanged ones carry no chunks."""
        existing = await asyncio.to_thread(
            docs_db.existing_documents,
            self.store.db.reader(),
            collection.id,
            [d.id for d in docs],
        )
        target = int(collection.settings.get("chunk_tokens", self.settings.chunk_tokens))
        overlap = int(collection.settings.get("chunk_overlap", self.settings.chunk_overlap))

        def chunk_all() -> list[PreparedDocument]:
            out = []
            for d in docs:
                h = content_hash(d.text)
                if d.id in existing and existing[d.id][0] == h:
                    out.append(PreparedDocument(d.id, d.text, d.metadata, d.source, h))
                    continue
                chunks = chunk_text(
                    d.text, embedder.token_offsets(d.text),
                    target_tokens=target, overlap_tokens=overlap,
                )  # fmt: skip
                out.append(PreparedDocument(d.id, d.text, d.metadata, d.source, h, chunks))
            return out

        prepared = await asyncio.to_thread(chunk_all)
        texts = [c.text for p in prepared if p.chunks is not None for c in p.chunks]
        vectors = await self.embed_texts(embedder, texts)
        result, pos = [], 0
        for p in prepared:
            if p.chunks is None:
                result.append(p)
                continue
            n = len(p.chunks)
            result.append(
                PreparedDocument(
                    p.doc_id, p.text, p.metadata, p.source, p.content_hash, p.chunks,
                    vectors[pos : pos + n],
                )
            )  # fmt: skip
            pos += n
        return result

    async def upsert(self, collection_name: str, docs: Sequence[DocumentIn]) -> dict[str, Any]:
        """Store documents now; returns {"documents": [{id, status, chunks}], "chunks": n}."""
        collection = await self._collection(collection_name)
        embedder = self.get_embedder()
        check_model(collection, embedder)
        results = []
        step = self.settings.job_batch_docs
        for s in range(0, len(docs), step):
            prepared = await self.prepare(collection, embedder, docs[s : s + step])

            def write(batch: list[PreparedDocument] = prepared) -> list[Any]:
                with self.store.db.write() as conn:
                    check_model(docs_db.get_collection(conn, collection_name), embedder)
                    return docs_db.write_documents(conn, collection, batch)

            results.extend(await asyncio.to_thread(write))
        return {
            "documents": [
                {"id": r.doc_id, "status": r.status, "chunks": r.chunks} for r in results
            ],
            "chunks": sum(r.chunks for r in results),
        }

    async def submit(self, collection_name: str, docs: Sequence[DocumentIn]) -> jobs_db.Job:
        """Queue an ingest job; when this returns, every document is durably recorded."""
        collection = await self._collection(collection_name)
        check_model(collection, self.get_embedder())

        def create() -> jobs_db.Job:
            items = [(d.id, d.to_payload()) for d in docs]
            with self.store.db.write() as conn:
                docs_db.get_collection(conn, collection_name)
                job_id = jobs_db.create_job(
                    conn, collection=collection_name, kind="ingest", items=items
                )
                return jobs_db.get_job(conn, job_id)

        return await asyncio.to_thread(create)

    async def submit_reindex(self, collection_name: str, *, force: bool = False) -> jobs_db.Job:
        """Queue a job that re-embeds every chunk with the serving model."""
        collection = await self._collection(collection_name)
        embedder = self.get_embedder()
        if collection.fingerprint == embedder.fingerprint and not force:
            raise InvalidInput(
                f"collection {collection_name!r} already uses {embedder.model_id}; "
                "pass force to re-embed anyway"
            )
        params = {"fingerprint": embedder.fingerprint, "model_id": embedder.model_id,
                  "dim": embedder.dim}  # fmt: skip

        def create() -> jobs_db.Job:
            with self.store.db.write() as conn:
                total = scalar(
                    conn, "SELECT count(*) FROM chunks WHERE collection_id = ?", (collection.id,)
                )
                job_id = jobs_db.create_job(
                    conn, collection=collection_name, kind="reindex", items=[],
                    params=params, total=int(total),
                )  # fmt: skip
                return jobs_db.get_job(conn, job_id)

        return await asyncio.to_thread(create)

    async def process_job(
        self, job: jobs_db.Job, on_progress: Callable[[jobs_db.Job], None] | None = None
    ) -> jobs_db.Job:
        """Run a claimed job to the end. ModelMismatch / NotReady propagate (job stays open)."""
        db = self.store.db
        if job.kind == "reindex":
            await self._run_reindex(job, on_progress)
        else:
            await self._run_ingest(job, on_progress)
        return await asyncio.to_thread(lambda: jobs_db.get_job(db.reader(), job.id))

    async def _run_ingest(
        self, job: jobs_db.Job, on_progress: Callable[[jobs_db.Job], None] | None
    ) -> None:
        db = self.store.db
        collection = await self._collection(job.collection)
        embedder = self.get_embedder()
        check_model(collection, embedder)
        while True:
            items = await asyncio.to_thread(
                jobs_db.pending_items, db.reader(), job.id, self.settings.job_batch_docs
            )
            if not items:
                break
            docs = [DocumentIn.from_payload(p) for _, _, p in items]
            try:
                prepared = await self.prepare(collection, embedder, docs)
                failed: list[tuple[int, str, str]] = []
                good = list(zip(items, prepared, strict=True))
            except (ModelMismatch, asyncio.CancelledError):
                raise
            except LocalrankError:
                # Isolate the bad document(s): embed one at a time, record each failure.
                good, failed = [], []
                for item, doc in zip(items, docs, strict=True):
                    try:
                        good.append((item, (await self.prepare(collection, embedder, [doc]))[0]))
                    except LocalrankError as exc:
                        failed.append((item[0], item[1], exc.message))

            progress = await asyncio.to_thread(
                self._write_batch, job.id, job.collection, embedder, good, failed
            )
            if on_progress:
                on_progress(progress)
        await asyncio.to_thread(self._finish, job.id)

    def _write_batch(
        self,
        job_id: str,
        collection_name: str,
        embedder: AsyncEmbedder,
        good: list[tuple[tuple[int, str, str], PreparedDocument]],
        failed: list[tuple[int, str, str]],
    ) -> jobs_db.Job:
        # Documents and the job's progress commit together: that is what makes resume exact.
        with self.store.db.write() as conn:
            current = docs_db.get_collection(conn, collection_name)
            check_model(current, embedder)
            docs_db.write_documents(conn, current, [p for _, p in good])
            jobs_db.record_progress(conn, job_id, done=[item[0] for item, _ in good], failed=failed)
            return jobs_db.get_job(conn, job_id)

    def _finish(self, job_id: str) -> None:
        with self.store.db.write() as conn:
            j = jobs_db.get_job(conn, job_id)
            state = "failed" if j.failed and not j.done else "done"
            jobs_db.finish_job(conn, job_id, state)
            trim_cache(conn, self.settings.cache_max_rows)

    async def _run_reindex(
        self, job: jobs_db.Job, on_progress: Callable[[jobs_db.Job], None] | None
    ) -> None:
        db = self.store.db
        embedder = self.get_embedder()
        if embedder.fingerprint != job.params["fingerprint"]:
            raise ModelMismatch(
                f"reindex job {job.id} targets {job.params['model_id']} but the server runs "
                f"{embedder.model_id}"
            )
        collection = await self._collection(job.collection)
        batch = self.settings.embed_batch
        while True:
            todo = await asyncio.to_thread(
                chunks_to_reindex, db.reader(), collection.id, job.id, batch
            )
            if not todo:

                def swap() -> bool:
                    with db.write() as conn:
                        current = docs_db.get_collection(conn, job.collection)
                        ok = swap_vectors(conn, current, job.id, fingerprint=embedder.fingerprint,
                                          model_id=embedder.model_id, dim=embedder.dim)  # fmt: skip
                        if ok:
                            jobs_db.finish_job(conn, job.id, "done")
                        return ok

                if await asyncio.to_thread(swap):
                    return
                continue
            vectors = await self.embed_texts(embedder, [t for _, t in todo])

            def stage(
                rows: list[tuple[int, str]] = todo, vecs: np.ndarray = vectors
            ) -> jobs_db.Job:
                with db.write() as conn:
                    stage_vectors(conn, job.id, [c for c, _ in rows], vecs)
                    jobs_db.record_progress(conn, job.id, done_count=len(rows))
                    return jobs_db.get_job(conn, job.id)

            progress = await asyncio.to_thread(stage)
            if on_progress:
                on_progress(progress)


class JobRunner:
    """Claims unfinished jobs (including ones a crashed process left running) and runs them.

    One runner per process; several processes may run one each (a CLI `index` next to the
    daemon): a job is claimed by exactly one owner at a time.
    """

    def __init__(self, ingestor: Ingestor, *, poll_seconds: float = 2.0) -> None:
        self.ingestor = ingestor
        self.owner = jobs_db.make_owner()
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        # Jobs that cannot run with the serving model, until the model changes.
        self._blocked: dict[str, str] = {}

    def notify(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run_once(self) -> jobs_db.Job | None:
        """Claim and run one job; None when there was nothing runnable."""
        db = self.ingestor.store.db
        try:
            fingerprint = self.ingestor.get_embedder().fingerprint
        except LocalrankError:
            return None  # the model is still loading
        self._blocked = {j: f for j, f in self._blocked.items() if f == fingerprint}
        job = await asyncio.to_thread(jobs_db.claim_job, db, self.owner, skip=list(self._blocked))
        if job is None:
            return None
        try:
            return await self.ingestor.process_job(job)
        except ModelMismatch:
            self._blocked[job.id] = fingerprint
            await asyncio.to_thread(self._requeue, job.id)
        except LocalrankError as exc:
            if exc.code in ("not_ready", "overloaded"):
                await asyncio.to_thread(self._requeue, job.id)
                return None
            await asyncio.to_thread(self._fail, job.id, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an unexpected bug must not kill the runner loop
            await asyncio.to_thread(self._fail, job.id, f"{type(exc).__name__}: {exc}")
        return None

    def _requeue(self, job_id: str) -> None:
        with self.ingestor.store.db.write() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL WHERE id = ? AND state = 'running'",
                (job_id,),
            )

    def _fail(self, job_id: str, message: str) -> None:
        with self.ingestor.store.db.write() as conn:
            jobs_db.finish_job(conn, job_id, "failed", message)

    async def run_forever(self) -> None:
        """The runner loop: until cancelled, run jobs, then wait for a notify or a poll."""
        try:
            while True:
                ran = await self.run_once()
                if ran is not None:
                    continue
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
        finally:
            # Closing: the store may already be gone, and then there is nothing to release.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    asyncio.to_thread(jobs_db.release_jobs, self.ingestor.store.db, self.owner)
                )
