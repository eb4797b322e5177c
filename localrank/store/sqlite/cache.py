"""SQLite statements: the persistent embedding cache, (fingerprint, sha256(text)) -> float32
vector (`engine.CacheSQL`).

It serves repeats across documents and re-ingestion (an edited file keeps most chunk texts),
and survives restarts. Bounded: a trim drops the rows least recently written (a hit does not
refresh `used`: reads stay read-only, so they never wait for the writer).
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

from localrank.store.sqlite.db import scalar


def cache_lookup(
    conn: apsw.Connection, fingerprint: str, hashes: Sequence[bytes]
) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for h in hashes:
        row = conn.execute(
            "SELECT embedding FROM embed_cache WHERE fingerprint = ? AND text_hash = ?",
            (fingerprint, h),
        ).fetchone()
        if row is not None:
            found[h] = row[0]
    return found


def cache_put(
    conn: apsw.Connection, fingerprint: str, rows: dict[bytes, bytes], used: float
) -> None:
    conn.executemany(
        "INSERT INTO embed_cache (fingerprint, text_hash, embedding, used) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (fingerprint, text_hash) DO UPDATE SET used = excluded.used",
        [(fingerprint, h, blob, used) for h, blob in rows.items()],
    )


def cache_size(conn: apsw.Connection) -> int:
    return int(scalar(conn, "SELECT count(*) FROM embed_cache"))


def drop_oldest_cache(conn: apsw.Connection, n: int) -> None:
    conn.execute(
        "DELETE FROM embed_cache WHERE (fingerprint, text_hash) IN "
        "(SELECT fingerprint, text_hash FROM embed_cache ORDER BY used LIMIT ?)",
        (n,),
    )
