"""Copying collections from one store to another without re-embedding (`localrank store
migrate`): a laptop's SQLite collections into a shared PostgreSQL database, or back.

Everything goes through the store protocol: each collection is created on the target with the
source's fingerprint, model, dimension and settings, then its documents are read page by page
with their chunks and full-precision vectors (`export_documents`) and written as they are
(`write_documents`, one transaction per page). A copy that stopped half way can be run again:
documents already there are "unchanged" by content hash. Watched folders come along; jobs do
not (an unfinished one is reported: finish it on the source first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from localrank.errors import ModelMismatch, NotFound
from localrank.store import Store
from localrank.store.records import Collection

PAGE_DOCUMENTS = 100
Progress = Callable[[str, int, int], None]  # collection, documents copied, documents in total


@dataclass(frozen=True)
class CopyReport:
    """What one collection's copy did."""

    collection: str
    documents: int
    chunks: int
    created: bool
    watches: int

    def to_api(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "documents": self.documents,
            "chunks": self.chunks,
            "created": self.created,
            "watches": self.watches,
        }


def _target_collection(source: Collection, target: Store) -> tuple[Collection, bool]:
    try:
        existing = target.get_collection(source.name)
    except NotFound:
        created = target.create_collection(
            source.name,
            fingerprint=source.fingerprint,
            model_id=source.model_id,
            dim=source.dim,
            settings=source.settings,
        )
        return created, True
    if existing.fingerprint != source.fingerprint:
        raise ModelMismatch(
            f"collection {source.name!r} already exists on the target with another model "
            f"({existing.model_id}, fingerprint {existing.fingerprint}); the source's is "
            f"{source.model_id} ({source.fingerprint}): delete or rename one first"
        )
    return existing, False


def copy_collections(
    source: Store,
    target: Store,
    names: Sequence[str] = (),
    *,
    on_progress: Progress | None = None,
) -> list[CopyReport]:
    """Copy the named collections (all by default) from `source` to `target`."""
    listed = {c.name: (c, d) for c, d, _ in source.list_collections()}
    for name in names:
        if name not in listed:
            raise NotFound(f"collection {name!r} does not exist in the source", param="collection")
    reports = []
    for name in names or sorted(listed):
        coll, total = listed[name]
        _, created = _target_collection(coll, target)
        copied = chunks = 0
        after: str | None = None
        while page := source.export_documents(coll, limit=PAGE_DOCUMENTS, after=after):
            target.write_documents(name, coll.fingerprint, coll.model_id, page)
            copied += len(page)
            chunks += sum(len(d.chunks or ()) for d in page)
            after = page[-1].doc_id
            if on_progress is not None:
                on_progress(name, copied, total)
        watches = 0
        for w in source.list_watches():
            if w.collection == name:
                target.add_watch(name, w.root, w.options)
                watches += 1
        reports.append(CopyReport(name, copied, chunks, created, watches))
    return reports


def unfinished_jobs(source: Store, names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Jobs still queued or running on the source (for the collections copied): not copied."""
    jobs = [j for state in ("queued", "running") for j in source.list_jobs(limit=1000, state=state)]
    return [j.to_api() for j in jobs if not names or j.collection in names]
