"""The commands' in-process work, when no daemon runs (or with --local): a CollectionService
over the user's store (WAL: safe next to a daemon), and the model loaded here only when the
command needs one. Imported by the command modules only when they run in-process: it brings
in the engine (numpy, torch) and the store (apsw, sqlite-vec).

`LocalCollections` is the in-process side of `cli.collections_access.Collections`; it and the
other functions return what the daemon's API returns for the same request, so a command prints
the same output whichever path ran it.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from localrank.cli.common import Runtime
from localrank.collections import CollectionService, EmbeddingModel, FolderOptions, SearchRequest
from localrank.collections.evaluate import evaluate, index_set, load_set
from localrank.collections.models import (
    LocalCrossEncoder,
    local_cross_encoder,
    local_embedding_model,
)
from localrank.config import Settings
from localrank.engine.load import load_engine, load_reranker
from localrank.errors import NotReady
from localrank.store import open_store
from localrank.store.records import Job

T = TypeVar("T")
Progress = Callable[[dict[str, Any]], None]


def _no_model() -> EmbeddingModel:
    raise NotReady("this command does not load a model")


@contextlib.asynccontextmanager
async def service(
    settings: Settings, runtime: Runtime, *, model: bool, database: Path | None = None
) -> AsyncIterator[CollectionService]:
    """A CollectionService over the user's store (or `database`), with the model loaded only
    when the command needs one; both are closed on the way out."""
    location = database or settings.store_location
    store = await asyncio.to_thread(
        lambda: open_store(location, lease_seconds=settings.job_lease_s)
    )
    try:
        # The store first: dtype "auto" keeps the precision the collections hold.
        stored = store.collection_fingerprints
        factory = runtime.embedder_factory or partial(local_embedding_model, stored=stored)
        embedder = factory(settings) if model else None
    except BaseException:
        store.close()
        raise
    loaded: list[LocalCrossEncoder] = []

    def reranker() -> LocalCrossEncoder | None:
        """The configured reranker, loaded when a search first reranks (in the CLI's loop: a
        one-shot command has nothing else to serve meanwhile)."""
        if not (model and settings.reranker):
            return None
        if not loaded:
            loaded.append(local_cross_encoder(settings))
        return loaded[0]

    try:
        yield CollectionService(
            store,
            (lambda: embedder) if embedder else _no_model,
            reranker=reranker,
            rerank_candidates=settings.rerank_candidates,
            job_failure_timeout_s=settings.job_failure_timeout_s,
        )
    finally:
        store.close()
        if embedder is not None:
            await asyncio.to_thread(embedder.close)
        for r in loaded:
            await asyncio.to_thread(r.close)


def run(
    settings: Settings,
    runtime: Runtime,
    fn: Callable[[CollectionService], Awaitable[T]],
    *,
    model: bool,
) -> T:
    async def go() -> T:
        async with service(settings, runtime, model=model) as s:
            return await fn(s)

    return asyncio.run(go())


def _jobs_as_api(progress: Progress | None) -> Callable[[Job], None] | None:
    if progress is None:
        return None
    return lambda job: progress(job.to_api())


class LocalCollections:
    """The collections of this configuration's store, worked on in this process (the model
    loaded only for what needs it); `cli.collections_access.Collections`."""

    daemon = False

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime

    def _run(self, fn: Callable[[CollectionService], Awaitable[T]], *, model: bool) -> T:
        return run(self.settings, self.runtime, fn, model=model)

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        req = SearchRequest.from_json(body)
        return self._run(lambda s: s.search(req), model=req.needs_embedding)

    def index(
        self,
        path: Path,
        collection: str,
        options: dict[str, Any],
        *,
        prune: bool,
        watch: bool,
        wait: bool,
        progress: Progress | None,
    ) -> dict[str, Any]:
        folder = FolderOptions.from_dict(options)

        async def go(s: CollectionService) -> dict[str, Any]:
            out = await s.index_folder(
                path,
                collection,
                options=folder,
                prune=prune,
                wait=wait,
                on_progress=_jobs_as_api(progress),
            )
            if watch:
                # Registered in the database: the daemon watches it from its next start.
                out["watch"] = await s.add_watch(path, collection, options=folder)
            return out

        return self._run(go, model=True)

    def collections(self) -> list[dict[str, Any]]:
        return self._run(lambda s: s.list_collections(), model=False)

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return self._run(lambda s: s.list_jobs(limit=limit), model=False)

    def retry_job(self, job_id: str, *, wait: bool, progress: Progress | None) -> dict[str, Any]:
        """Queue a failed job again and, with `wait`, run it here (loading the model)."""

        async def go(s: CollectionService) -> dict[str, Any]:
            queued = await s.retry_job(job_id)
            if not wait:
                return queued
            job = await asyncio.to_thread(s.store.get_job, job_id)
            return (await s.run_job_here(job, _jobs_as_api(progress))).to_api()

        return self._run(go, model=wait)

    def watches(self) -> list[dict[str, Any]]:
        return self._run(lambda s: s.list_watches(), model=False)

    def remove_watch(self, target: int | str) -> dict[str, Any]:
        return self._run(lambda s: s.remove_watch(target), model=False)


def compact(settings: Settings, runtime: Runtime) -> dict[str, Any]:
    return run(settings, runtime, lambda s: s.compact(), model=False)


def reindex(
    settings: Settings, runtime: Runtime, collection: str, force: bool, progress: Progress | None
) -> dict[str, Any]:
    return run(
        settings,
        runtime,
        lambda s: s.reindex_here(collection, force=force, on_progress=_jobs_as_api(progress)),
        model=True,
    )


def eval_sets(
    settings: Settings, runtime: Runtime, paths: Sequence[str], docs: str | None
) -> dict[str, Any]:
    """The `localrank eval` document: each set indexed and measured in a throwaway database."""
    datasets = [load_set(p, docs) for p in paths]

    async def go() -> dict[str, Any]:
        reports: list[dict[str, Any]] = []
        # A throwaway database: evaluation never touches the user's collections.
        with tempfile.TemporaryDirectory(prefix="localrank-eval-") as tmp:
            async with service(settings, runtime, model=True, database=Path(tmp) / "eval.db") as s:
                model = s.embedder().model_id
                for i, dataset in enumerate(datasets):
                    chunks = await index_set(s, dataset, f"eval{i}")
                    reports.append(
                        {
                            "dataset": dataset.name,
                            "documents": len(dataset.documents),
                            "queries": len(dataset.queries),
                            "chunks": chunks,
                            "metrics": await evaluate(s, dataset, f"eval{i}"),
                        }
                    )
        return {
            "model": model,
            "reranker": settings.reranker,
            # What a search without options runs.
            "default": "hybrid+cross-encoder" if settings.reranker else "hybrid+cosine",
            "sets": reports,
        }

    return asyncio.run(go())


def embed(
    settings: Settings,
    texts: Sequence[str],
    *,
    query: bool,
    instruction: str | None,
    dimensions: int | None,
    truncate: bool,
) -> dict[str, Any]:
    """The `localrank embed --json` document."""
    engine = load_engine(settings)
    try:
        result = engine.embed(
            list(texts),
            query=query,
            instruction=instruction,
            dimensions=dimensions,
            truncate=truncate,
        )
        info = engine.info
        return {
            "model": info.model_id,
            "backend": info.backend.backend,
            "device": info.backend.device,
            "dtype": info.backend.dtype,
            "dim": int(result.vectors.shape[1]),
            "pooling": info.backend.pooling,
            "fallback_reason": info.fallback_reason,
            "usage": {"prompt_tokens": result.prompt_tokens, "truncated": result.truncated},
            "embeddings": result.vectors.tolist(),
        }
    finally:
        engine.close()


def rerank(
    settings: Settings, query: str, documents: Sequence[str], instruction: str | None
) -> dict[str, Any]:
    """The `localrank rerank --json` document: the configured cross-encoder's scores, or the
    embedding model's cosine when no reranker is configured."""
    if settings.reranker:
        reranker = load_reranker(settings)
        try:
            result = reranker.rerank(query, list(documents), instruction=instruction)
            scores = result.scores
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            return {
                "model": reranker.info.model_id,
                "method": "cross-encoder",
                "results": [
                    {
                        "index": i,
                        "score": float(scores[i]),
                        "logit": float(result.logits[i]),
                        "document": documents[i],
                    }
                    for i in order
                ],
            }
        finally:
            reranker.close()
    engine = load_engine(settings)
    try:
        scores, _ = engine.rerank(query, list(documents), instruction=instruction)
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
        return {
            "model": engine.info.model_id,
            "method": "bi-encoder",
            "results": [
                {"index": i, "score": float(scores[i]), "document": documents[i]} for i in ranked
            ],
        }
    finally:
        engine.close()
