"""PostgreSQL statements: the embedding cache, (fingerprint, sha256(text)) -> float32 bytes
(`engine.CacheSQL`), shared by every daemon on the database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import Connection

from localrank.store.postgres.db import one

Conn = Connection[Any]


def cache_lookup(conn: Conn, fingerprint: str, hashes: Sequence[bytes]) -> dict[bytes, bytes]:
    return {
        bytes(r[0]): bytes(r[1])
        for r in conn.execute(
            "SELECT text_hash, embedding FROM embed_cache WHERE fingerprint = %s "
            "AND text_hash = ANY(%s)",
            (fingerprint, list(hashes)),
        )
    }


def cache_put(conn: Conn, fingerprint: str, rows: dict[bytes, bytes], used: float) -> None:
    """One row per text (`rows` is keyed by its hash): ON CONFLICT cannot touch the same row
    twice in one statement."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO embed_cache (fingerprint, text_hash, embedding, used) "
            "VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (fingerprint, text_hash) DO UPDATE SET used = excluded.used",
            [(fingerprint, h, blob, used) for h, blob in rows.items()],
        )


def cache_size(conn: Conn) -> int:
    return int(one(conn, "SELECT count(*) FROM embed_cache"))


def drop_oldest_cache(conn: Conn, n: int) -> None:
    conn.execute(
        "DELETE FROM embed_cache WHERE (fingerprint, text_hash) IN "
        "(SELECT fingerprint, text_hash FROM embed_cache ORDER BY used LIMIT %s)",
        (n,),
    )
