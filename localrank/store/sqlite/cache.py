"""The persistent embedding cache: (fingerprint, sha256(text)) -> float32 vector.

It serves repeats across documents and re-ingestion (an edited file keeps most chunk texts),
and survives restarts. Bounded: `trim_cache` drops the rows least recently written (a hit
does not refresh `used`: reads stay read-only, so they never wait for the writer).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import apsw
import numpy as np

from localrank.store.sqlite.db import scalar

DEFAULT_MAX_ROWS = 100_000


def text_hash(text: str) -> bytes:
    """The cache key's text part."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def cache_get(
    conn: apsw.Connection, fingerprint: str, texts: Sequence[str], dim: int
) -> dict[int, np.ndarray]:
    """Positions in `texts` that are cached, with their vectors."""
    found: dict[int, np.ndarray] = {}
    for i, t in enumerate(texts):
        row = conn.execute(
            "SELECT embedding FROM embed_cache WHERE fingerprint = ? AND text_hash = ?",
            (fingerprint, text_hash(t)),
        ).fetchone()
        if row is not None and len(row[0]) == dim * 4:
            found[i] = np.frombuffer(row[0], dtype=np.float32)
    return found


def cache_put(
    conn: apsw.Connection, fingerprint: str, texts: Sequence[str], vectors: np.ndarray
) -> None:
    """Store vectors for texts (caller's write transaction)."""
    now = time.time()
    conn.executemany(
        "INSERT INTO embed_cache (fingerprint, text_hash, embedding, used) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (fingerprint, text_hash) DO UPDATE SET used = excluded.used",
        [
            (fingerprint, text_hash(t), np.asarray(v, dtype=np.float32).tobytes(), now)
            for t, v in zip(texts, vectors, strict=True)
        ],
    )


def trim_cache(conn: apsw.Connection, max_rows: int = DEFAULT_MAX_ROWS) -> int:
    """Delete the least recently used rows beyond `max_rows`; returns how many."""
    count = int(scalar(conn, "SELECT count(*) FROM embed_cache"))
    excess = count - max_rows
    if excess <= 0:
        return 0
    conn.execute(
        "DELETE FROM embed_cache WHERE (fingerprint, text_hash) IN "
        "(SELECT fingerprint, text_hash FROM embed_cache ORDER BY used LIMIT ?)",
        (excess,),
    )
    return excess
