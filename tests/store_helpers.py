"""Records built by hand for store tests: random unit vectors and prepared documents; SQLite
files as older releases left them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from localrank.store.migrations import Migration
from localrank.store.records import Chunk, PreparedDocument

# How SQLite files recorded their migrations before both engines used `localrank_migrations`.
LEGACY_SQLITE_RECORD = (
    "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)"
)


def migrate_as_before(conn: Any, migrations: Sequence[Migration]) -> None:
    """Apply `migrations` to an SQLite connection (in its transaction) the way releases before
    the shared migrations runner did: recorded in a table called `migrations`."""
    conn.execute(LEGACY_SQLITE_RECORD)
    for name, sql in migrations:
        conn.execute(sql)
        conn.execute("INSERT INTO migrations (name, applied) VALUES (?, 'then')", (name,))


def unit(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_doc(
    doc_id: str, vectors: np.ndarray, meta: dict | None = None, text: str | None = None
) -> PreparedDocument:
    """A document with one chunk per vector; its content hash depends on `text`."""
    chunks = [
        Chunk(i, f"{doc_id} chunk {i}", i * 10, i * 10 + 9, i + 1, i + 1)
        for i in range(len(vectors))
    ]
    return PreparedDocument(
        doc_id, text or doc_id, meta or {}, f"/src/{doc_id}", f"h-{doc_id}-{text}", chunks, vectors
    )
