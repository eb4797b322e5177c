"""Persistent collections behind a narrow protocol. Knows nothing of HTTP or models.

`protocol.Store` is the contract (collections bound to fingerprints, documents and chunks with
citations, durable jobs, keyword and vector candidates, the embedding cache; see its docstring for
the guarantees); `records` and `filters` are the values that cross it. `sqlite.SQLiteStore` is
the implementation on one SQLite file with sqlite-vec, the default. The application layer
(`localrank.collections`) talks to the protocol only, so a second implementation on a server
engine can be added without touching it.
"""

from __future__ import annotations

from pathlib import Path

from localrank.store.protocol import Store
from localrank.store.sqlite import SQLiteStore


def open_store(path: Path | str) -> Store:
    """The store for a database location (today: an SQLite file path)."""
    return SQLiteStore(path)


__all__ = ["SQLiteStore", "Store", "open_store"]
