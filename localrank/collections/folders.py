"""What a folder's files change in a collection: which documents are new or changed (by content
hash), unchanged, replaced (the same file stored under an older id) or gone (the file no longer
exists). Shared by `localrank index` (through a job) and watched folders (directly)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from localrank.collections.documents import DocumentIn, content_hash
from localrank.collections.formats import is_regular_file
from localrank.store.records import DocumentFile


@dataclass(frozen=True)
class FolderPlan:
    """The documents to write and the ids to delete for one pass over (part of) a folder."""

    changed: list[DocumentIn]
    unchanged: int
    # Stored ids of files read now under another id (indexes made before ids were absolute
    # paths): deleted once the file is stored under its own id.
    replaced: list[str] = field(default_factory=list)
    # Stored ids whose file is gone or no longer a regular file (replaced by a folder, a FIFO):
    # only when asked to prune.
    gone: list[str] = field(default_factory=list)


def plan(docs: Sequence[DocumentIn], stored: Sequence[DocumentFile], *, prune: bool) -> FolderPlan:
    """Compare documents just read with what the collection holds for the same files.

    `stored` are the collection's documents from the same place (their source under the folder
    read); a stored document whose file is gone (or is no longer a file) is listed in `gone`
    only with `prune`.
    """
    by_id = {s.doc_id: s for s in stored}
    changed = [
        d for d in docs if d.id not in by_id or by_id[d.id].content_hash != content_hash(d.text)
    ]
    ids = {d.id for d in docs}
    sources = {d.source for d in docs}
    replaced = [s.doc_id for s in stored if s.source in sources and s.doc_id not in ids]
    gone = []
    if prune:
        gone = [
            s.doc_id
            for s in stored
            if s.doc_id not in ids and s.source not in sources and not is_regular_file(s.source)
        ]
    return FolderPlan(changed, len(docs) - len(changed), replaced, gone)
