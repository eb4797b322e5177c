"""The store protocol on PostgreSQL + pgvector: one database shared by several daemons.

Imported only when a `postgresql://` store_url is configured (it brings psycopg).
"""

from localrank.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
