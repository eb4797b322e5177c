"""`CollectionService`: the one entry point to collections, for the HTTP routes and the CLI.

It owns the ingestor and the job runner, reaches storage only through the store protocol and the
model only through an `EmbeddingModel`, and returns the API's JSON shapes. Store calls run in
worker threads: the event loop never waits on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from localrank.collections.documents import DocumentIn, check_documents
from localrank.collections.files import FolderOptions, FolderReader
from localrank.collections.folders import plan
from localrank.collections.ingest import ChunkSettings, Ingestor, IngestSettings, check_model
from localrank.collections.models import CrossEncoderGetter, EmbeddingModel, EmbeddingModelGetter
from localrank.collections.runner import DEFAULT_FAILURE_TIMEOUT_S, JobRunner, LeaseLost
from localrank.collections.search import SearchRequest, run_search
from localrank.collections.search_threads import SearchThreads
from localrank.collections.store_monitor import StoreMonitor
from localrank.collections.watch import FolderWatcher, WatchSettings
from localrank.declare import parse
from localrank.errors import InvalidInput, NotFound
from localrank.store import Store
from localrank.store.records import Collection, Job

ProgressFn = Callable[[Job], None]
FOLLOW_POLL_SECONDS = 0.5


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class CollectionService:
    """Collections, documents, search, jobs and maintenance over one store and one embedder."""

    def __init__(
        self,
        store: Store,
        embedder: EmbeddingModelGetter,
        settings: IngestSettings | None = None,
        *,
        watch: WatchSettings | None = None,
        reranker: CrossEncoderGetter | None = None,
        rerank_candidates: int = 50,
        job_failure_timeout_s: float = DEFAULT_FAILURE_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.get_embedder = embedder
        self.get_reranker = reranker or (lambda: None)
        self.rerank_candidates = rerank_candidates
        self.ingestor = Ingestor(store, embedder, settings)
        self.runner = JobRunner(self.ingestor, failure_timeout_s=job_failure_timeout_s)
        self.store_monitor = StoreMonitor(store)
        # Runs only where someone calls `watcher.run_forever()`: the daemon.
        self.watcher = FolderWatcher(store, self.ingestor, watch)
        self.search_threads = SearchThreads(store)

    @property
    def settings(self) -> IngestSettings:
        return self.ingestor.settings

    def embedder(self) -> EmbeddingModel:
        """The serving embedder (raises NotReady while the model loads)."""
        return self.get_embedder()

    async def _collection(self, name: str) -> Collection:
        return await asyncio.to_thread(self.store.get_collection, name)

    # --- collections --------------------------------------------------------------------

    async def create_collection(
        self, name: str, *, settings: ChunkSettings | Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create a collection bound to the serving model, chunking as `settings` say."""
        if not isinstance(settings, ChunkSettings):
            settings = parse(ChunkSettings, settings or {}, what="settings")
        chunking = settings.given()
        embedder = self.get_embedder()
        c = await asyncio.to_thread(
            lambda: self.store.create_collection(
                name,
                fingerprint=embedder.fingerprint,
                model_id=embedder.model_id,
                dim=embedder.dim,
                settings=chunking,
            )
        )
        return c.to_api(documents=0, chunks=0)

    async def list_collections(self) -> list[dict[str, Any]]:
        """Every collection with its counts."""
        rows = await asyncio.to_thread(self.store.list_collections)
        return [c.to_api(documents=d, chunks=n) for c, d, n in rows]

    async def get_collection(self, name: str) -> dict[str, Any]:
        """One collection with its counts and its vector index (NotFound if absent)."""
        rows = await asyncio.to_thread(self.store.list_collections)
        for c, d, n in rows:
            if c.name == name:
                return c.to_api(documents=d, chunks=n, index=self.store.index_info(c))
        raise NotFound(f"collection {name!r} does not exist", param="collection")

    async def delete_collection(self, name: str) -> dict[str, Any]:
        """Delete a collection and everything in it, its watches included."""
        await asyncio.to_thread(self.store.delete_collection, name)
        await self.watcher.stop(name)
        return {"name": name, "deleted": True}

    # --- documents ----------------------------------------------------------------------

    def check_documents(self, docs: list[DocumentIn]) -> list[DocumentIn]:
        """Declared documents checked for what their declaration cannot say (size, binary
        junk, an id twice): InvalidInput / TooLarge naming the culprit."""
        return check_documents(docs, max_bytes=self.settings.max_document_bytes)

    async def add_documents(
        self, name: str, docs: Sequence[DocumentIn], *, background: bool
    ) -> dict[str, Any]:
        """Upsert documents now (per-document status) or queue a job (its job_id). Nothing is
        acknowledged before it is durable."""
        if not background:
            return await self.ingestor.upsert(name, docs)
        job = await self.ingestor.submit(name, docs)
        self.runner.notify()
        return {"job_id": job.id, "state": job.state, "total": job.total}

    async def get_document(self, name: str, doc_id: str) -> dict[str, Any]:
        """A document with its chunks and their citations."""
        collection = await self._collection(name)
        doc, chunks = await asyncio.to_thread(self.store.get_document, collection, doc_id)
        out = doc.to_api()
        out["chunks"] = [
            {"chunk_id": c.id, "ordinal": c.span.ordinal, "text": c.text, "citation": c.citation()}
            for c in chunks
        ]
        return out

    async def find_document(self, name: str, source: str) -> dict[str, Any]:
        """The document read from the file `source` (an absolute path), as `get_document`."""
        collection = await self._collection(name)
        files = await asyncio.to_thread(self.store.document_files, collection, source)
        exact = [f for f in files if f.source == source]
        if not exact:
            raise NotFound(f"no document from {source!r} in {name!r}", param="source")
        return await self.get_document(name, exact[0].doc_id)

    async def list_documents(
        self, name: str, *, limit: int = 100, after: str | None = None
    ) -> dict[str, Any]:
        """A page of documents (without text); `next_after` pages on."""
        collection = await self._collection(name)
        docs = await asyncio.to_thread(
            lambda: self.store.list_documents(collection, limit=limit, after=after)
        )
        return {
            "documents": [d.to_api(include_text=False) for d in docs],
            "next_after": docs[-1].doc_id if len(docs) == limit else None,
        }

    async def delete_document(self, name: str, doc_id: str) -> dict[str, Any]:
        """Delete one document (NotFound if it is not there)."""
        if not await asyncio.to_thread(self.store.delete_documents, name, [doc_id]):
            raise NotFound(f"document {doc_id!r} not found in {name!r}")
        return {"id": doc_id, "deleted": True}

    # --- search -------------------------------------------------------------------------

    async def search(self, req: SearchRequest) -> dict[str, Any]:
        """Run a search; returns {"results": [...], "timings_ms": {...}, ...}."""
        start = time.perf_counter()
        timings = {"embed": 0.0, "keyword": 0.0, "vector": 0.0, "rerank": 0.0, "total": 0.0}
        collection = await self.search_threads.run(
            lambda: self.store.get_collection(req.collection)
        )
        query_vector = None
        if req.needs_embedding:
            embedder = self.get_embedder()
            check_model(collection, embedder)
            t = time.perf_counter()
            vecs = await embedder.embed([req.query], query=True, instruction=req.instruction)
            query_vector = np.asarray(vecs, dtype=np.float32)[0]
            timings["embed"] = _ms(t)
        reranker = self.get_reranker() if req.reranked and req.rerank_method != "cosine" else None
        if reranker is None and req.rerank_method == "cross-encoder":
            raise InvalidInput("no reranker is configured", param="rerank_method")
        # With a cross-encoder, retrieval (and the cosine stage) picks its candidates.
        first = (
            req if reranker is None else replace(req, top_k=max(req.top_k, self.rerank_candidates))
        )
        results = await self.search_threads.run(
            lambda: run_search(self.store, collection, first, query_vector, timings)
        )
        if reranker is not None and results:
            t = time.perf_counter()
            scores = await reranker.score(req.query, [r["text"] for r in results])
            for r, score in zip(results, scores, strict=True):
                r["ranks"]["retrieval_score"] = r["score"]
                r["score"] = round(float(score), 6)
            results = sorted(results, key=lambda r: -r["score"])[: req.top_k]
            timings["rerank"] = round(timings["rerank"] + _ms(t), 3)
        timings["total"] = _ms(start)
        return {
            "collection": collection.name,
            "model": collection.model_id,
            "mode": req.mode,
            "reranked": req.reranked,
            "rerank_method": (
                "cross-encoder" if reranker is not None else "cosine" if req.reranked else None
            ),
            "results": results,
            "timings_ms": timings,
        }

    async def prepare_search(self) -> None:
        """Bring what searches need into memory and warm the threads searches run on (the
        daemon starts this at startup, in the background); searches that arrive first are
        still answered, correctly."""
        await self.search_threads.prepare()

    def search_readiness(self) -> dict[str, Any]:
        """{"ready", "loaded", "total"}: how far `prepare_search` got (no I/O)."""
        return self.search_threads.readiness()

    async def store_status(self) -> dict[str, Any]:
        """{"status": "ok"} or {"status": "unavailable", "reason"}: whether the database
        answers and its operations succeed (answered within a fraction of a second)."""
        return await self.store_monitor.status()

    async def close(self) -> None:
        """Stop preparing for search and release the search threads (the store stays open:
        whoever opened it closes it, which also stops a running preload)."""
        self.store_monitor.close()
        await self.search_threads.close()

    # --- jobs ---------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """A job's state and progress, with what the job runner knows that the store cannot
        say (yet): that the job's store operations keep failing, that it failed for it."""
        return await self.runner.view(job_id)

    async def list_jobs(self, *, limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
        """Recent jobs, newest first (as `get_job` reports them)."""
        jobs = await asyncio.to_thread(lambda: self.store.list_jobs(limit=limit, state=state))
        views = [self.runner.report(j) for j in jobs]
        return [v for v in views if state is None or v["state"] == state]

    async def retry_job(self, job_id: str) -> dict[str, Any]:
        """Queue a failed job again; it resumes where it stopped (documents already stored are
        not embedded again). NotFound for an unknown job, Conflict for one that did not fail."""
        return (await self.runner.retry(job_id)).to_api()

    async def reindex(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Queue a job re-embedding a collection with the serving model (the daemon runs it)."""
        job = await self.ingestor.submit_reindex(name, force=force)
        self.runner.notify()
        return {"job_id": job.id, "state": job.state, "total": job.total}

    async def run_job_here(self, job: Job, on_progress: ProgressFn | None = None) -> Job:
        """Run a queued job in this process, or follow it if another runner (a daemon) has
        already claimed it. Returns the finished job."""
        claimed = await asyncio.to_thread(
            lambda: self.store.claim_job(self.runner.owner, only=job.id)
        )
        if claimed is not None:
            with contextlib.suppress(LeaseLost):  # taken over: follow it like any other job
                return await self.runner.process(claimed, on_progress)
        while not (current := await asyncio.to_thread(self.store.get_job, job.id)).finished:
            if on_progress is not None:
                on_progress(current)
            await asyncio.sleep(FOLLOW_POLL_SECONDS)
        return current

    async def reindex_here(
        self, name: str, *, force: bool = False, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Re-embed a collection in this process (the CLI without a daemon)."""
        job = await self.ingestor.submit_reindex(name, force=force)
        return (await self.run_job_here(job, on_progress)).to_api()

    # --- folders ------------------------------------------------------------------------

    async def index_folder(
        self,
        root: Path,
        collection: str,
        *,
        options: FolderOptions | None = None,
        prune: bool = False,
        wait: bool = True,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Index the wanted files under `root` (or the one file `root`) into `collection`
        (created if missing). Document ids are absolute paths, so folders indexed into one
        collection never replace each other's files. Unchanged files are skipped by content
        hash; the rest go through a job, run here when `wait`. With `prune`, documents whose
        file is gone are removed. A file that cannot be read is listed in `skipped`."""
        reader = FolderReader(root, options, self.settings.max_document_bytes)
        if not reader.root.exists():
            raise NotFound(f"{reader.root} does not exist", param="path")
        scan = await asyncio.to_thread(reader.scan)
        if collection not in {c["name"] for c in await self.list_collections()}:
            await self.create_collection(collection)
        coll = await self._collection(collection)
        stored = await asyncio.to_thread(self.store.document_files, coll, reader.root.as_posix())
        p = plan(scan.documents, stored, prune=prune)
        result: dict[str, Any] = {
            "collection": collection,
            "path": reader.root.as_posix(),
            "files": len(scan.documents),
            "changed": len(p.changed),
            "unchanged": p.unchanged,
            "skipped": scan.skipped,
            "pruned": 0,
            "job_id": None,
        }
        dead = [*p.replaced, *p.gone]
        if dead:
            removed = await asyncio.to_thread(self.store.delete_documents, collection, dead)
            result["pruned"] = min(removed, len(p.gone))
        if not p.changed:
            return result
        job = await self.ingestor.submit(collection, p.changed)
        self.runner.notify()
        result["job_id"] = job.id
        if wait:
            result.update((await self.run_job_here(job, on_progress)).to_api())
        return result

    # --- watched folders ------------------------------------------------------------------

    async def add_watch(
        self, root: Path, collection: str, *, options: FolderOptions | None = None
    ) -> dict[str, Any]:
        """Register a folder to keep indexed into `collection` (created if missing). The daemon
        watches it from now on (and after every restart)."""
        reader = FolderReader(root, options, self.settings.max_document_bytes)
        if not reader.root.exists():
            raise NotFound(f"{reader.root} does not exist", param="path")
        if not reader.root.is_dir():
            raise InvalidInput(
                f"{reader.root} is not a folder: only folders can be watched", param="path"
            )
        if collection not in {c["name"] for c in await self.list_collections()}:
            await self.create_collection(collection)
        watch = await asyncio.to_thread(
            self.store.add_watch, collection, reader.root.as_posix(), reader.options.to_dict()
        )
        self.watcher.reload()
        return self._watch_api(watch.to_api())

    def _watch_api(self, watch: dict[str, Any]) -> dict[str, Any]:
        live = self.watcher.statuses().get(watch["id"])
        if live is not None:
            return live
        state = "registered" if not self.watcher.running else "starting"
        return {**watch, "state": state}

    async def list_watches(self) -> list[dict[str, Any]]:
        """Every registered watch with what it is doing (when this process runs the watcher)."""
        watches = await asyncio.to_thread(self.store.list_watches)
        return [self._watch_api(w.to_api()) for w in watches]

    async def remove_watch(self, watch: int | str) -> dict[str, Any]:
        """Stop watching a folder (by watch id or by path: every watch of that folder). Its
        documents stay in the collection."""
        watches = await asyncio.to_thread(self.store.list_watches)
        if isinstance(watch, int):
            chosen = [w for w in watches if w.id == watch]
        else:
            path = Path(watch).expanduser()
            names = {path.as_posix(), path.resolve().as_posix()}
            chosen = [w for w in watches if w.root in names]
        if not chosen:
            raise NotFound(f"no watch matches {watch!r}", param="watch")
        removed = [await asyncio.to_thread(self.store.remove_watch, w.id) for w in chosen]
        self.watcher.reload()
        return {"removed": [w.to_api() for w in removed]}

    async def upsert(self, name: str, docs: Sequence[DocumentIn]) -> dict[str, Any]:
        """Store already validated documents now (evaluation, benches)."""
        return await self.ingestor.upsert(name, docs)

    # --- maintenance --------------------------------------------------------------------

    async def compact(self) -> dict[str, Any]:
        """Reclaim space left by deletes and trim tombstones, old jobs and the cache."""
        report = await asyncio.to_thread(
            lambda: self.store.compact(cache_max_rows=self.settings.cache_max_rows)
        )
        return report.to_api()
