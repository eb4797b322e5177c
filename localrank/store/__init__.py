"""SQLite + sqlite-vec storage. Knows nothing of HTTP or models: takes and returns arrays.

`Store` owns the database file and the in-memory binary indexes; the operations live in
small modules (`documents`, `jobs`, `cache`, `retrieve`, `maintenance`) as functions of a
connection or of the `Database`.
"""

from __future__ import annotations

from pathlib import Path

from localrank.store.db import Database, connect
from localrank.store.schema import migrate
from localrank.store.vector_index import IndexRegistry


class Store:
    """One database file, migrated on open, plus the per-collection vector indexes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.db = Database(self.path)
        try:
            migrate(self.db)
        except BaseException:
            self.db.close()
            raise
        self.indexes = IndexRegistry(self.db)

    def close(self) -> None:
        """Close every connection."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Database", "IndexRegistry", "Store", "connect", "migrate"]
