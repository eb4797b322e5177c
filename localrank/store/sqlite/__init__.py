"""The store protocol on SQLite with sqlite-vec: one file under the user data directory."""

from localrank.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
