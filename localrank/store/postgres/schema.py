"""PostgreSQL's schema: its named, ordered migrations (applied by `store.migrations`).

Several daemons may start at once on a new database: each migration's transaction first takes a
transaction-level advisory lock, so exactly one applies it and the others find it recorded.

One shared `chunks` table holds every collection's chunks with their float32 vector (pgvector's
`vector`, no fixed dimension: collections differ) and a generated `tsvector` (GIN) for keyword
search. Each collection gets its own partial HNSW index over an expression that fixes its
dimension (`vector_index.py`), so collections of different models share the table.
Metadata filter values are typed columns: a string equals only the same string, numbers compare
as numbers (`numeric`: 1 = 1.0, no float rounding), JSON true is stored as 1.
Identifiers that compare as strings (`name`, `doc_id`, `source`) use the "C" collation: byte
order, the order SQLite uses, so keyset paging and the path ranges of watched folders agree.
"""

from __future__ import annotations

from typing import Any

import psycopg

from localrank.errors import StoreError
from localrank.store import migrations
from localrank.store.migrations import Migration
from localrank.store.postgres.db import Database, describe

MIGRATION_LOCK = 0x6C72_5374  # pg_advisory_xact_lock key: "lrSt"
LOCK_SQL = f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"
DIALECT = migrations.Dialect(
    placeholder="%s",
    table_exists="SELECT 1 WHERE to_regclass(%s) IS NOT NULL",
    lock=LOCK_SQL,
)

MIGRATIONS: list[Migration] = [
    Migration(
        "0001_collections_documents_chunks",
        """
        CREATE TABLE collections (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text COLLATE "C" NOT NULL UNIQUE,
            fingerprint text NOT NULL,
            model_id text NOT NULL,
            dim integer NOT NULL CHECK (dim > 0),
            -- how its vectors are indexed: vector | halfvec | bit (see vector_index.py)
            index_type text NOT NULL,
            created text NOT NULL,
            settings text NOT NULL DEFAULT '{}',
            generation bigint NOT NULL DEFAULT 0,
            epoch bigint NOT NULL DEFAULT 0
        );
        CREATE TABLE documents (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            collection_id bigint NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
            doc_id text COLLATE "C" NOT NULL,
            text text NOT NULL,
            metadata text NOT NULL DEFAULT '{}',
            source text COLLATE "C",
            content_hash text NOT NULL,
            updated text NOT NULL,
            UNIQUE (collection_id, doc_id)
        );
        CREATE INDEX documents_source ON documents (collection_id, source);
        CREATE TABLE doc_meta (
            doc bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            collection_id bigint NOT NULL,
            key text NOT NULL,
            str_value text,
            num_value numeric
        );
        CREATE INDEX doc_meta_str ON doc_meta (collection_id, key, str_value);
        CREATE INDEX doc_meta_num ON doc_meta (collection_id, key, num_value);
        CREATE INDEX doc_meta_doc ON doc_meta (doc);
        CREATE TABLE chunks (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            doc bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            collection_id bigint NOT NULL,
            ordinal integer NOT NULL,
            text text NOT NULL,
            char_start integer NOT NULL,
            char_end integer NOT NULL,
            line_start integer NOT NULL,
            line_end integer NOT NULL,
            page integer,
            embedding vector NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
        );
        CREATE INDEX chunks_doc ON chunks (doc, ordinal);
        CREATE INDEX chunks_collection ON chunks (collection_id, id);
        CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
        """,
    ),
    Migration(
        "0002_jobs",
        """
        CREATE TABLE jobs (
            id text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            collection text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('ingest', 'reindex')),
            state text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
            total integer NOT NULL DEFAULT 0,
            done integer NOT NULL DEFAULT 0,
            failed integer NOT NULL DEFAULT 0,
            errors text NOT NULL DEFAULT '[]',
            params text NOT NULL DEFAULT '{}',
            owner text,
            -- the owner holds the job until then (server clock); renewed while it works
            lease_until timestamptz,
            created text NOT NULL,
            updated text NOT NULL
        );
        CREATE INDEX jobs_open ON jobs (created, seq) WHERE state IN ('queued', 'running');
        CREATE TABLE job_items (
            job text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            seq integer NOT NULL,
            doc_id text NOT NULL,
            payload text,
            state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
            PRIMARY KEY (job, seq)
        );
        CREATE TABLE reindex_vectors (
            job text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            chunk bigint NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
            embedding vector NOT NULL,
            PRIMARY KEY (job, chunk)
        );
        CREATE INDEX reindex_vectors_chunk ON reindex_vectors (chunk);
        """,
    ),
    Migration(
        "0003_embed_cache",
        """
        CREATE TABLE embed_cache (
            fingerprint text NOT NULL,
            text_hash bytea NOT NULL,
            embedding bytea NOT NULL,
            used double precision NOT NULL,
            PRIMARY KEY (fingerprint, text_hash)
        );
        CREATE INDEX embed_cache_used ON embed_cache (used);
        """,
    ),
    Migration(
        "0004_watched_folders",
        """
        CREATE TABLE watches (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            collection text NOT NULL,
            root text NOT NULL,
            options text NOT NULL DEFAULT '{}',
            created text NOT NULL,
            UNIQUE (collection, root)
        );
        """,
    ),
]

# Tables compact rewrites and sizes (everything the store owns).
TABLES = (
    "collections",
    "documents",
    "doc_meta",
    "chunks",
    "jobs",
    "job_items",
    "reindex_vectors",
    "embed_cache",
    "watches",
)


def ensure_vector_extension(conn: psycopg.Connection[Any], where: str) -> None:
    """pgvector installed in this database, or a StoreError saying who can install it."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
        return
    try:
        with conn.transaction():
            # Under the migration lock: two daemons creating it at once would collide.
            conn.execute(LOCK_SQL)
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.UndefinedFile as exc:
        raise StoreError(
            f"pgvector is not available on the PostgreSQL server at {where} ({describe(exc)}): "
            "install it (https://github.com/pgvector/pgvector, or a managed service's "
            "'vector' extension)"
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"pgvector is not enabled in {where} and this user may not enable it: ask the "
            "database owner to run CREATE EXTENSION vector"
        ) from exc


def applied_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Names of the migrations recorded in this database, in order."""
    return migrations.applied_migrations(DIALECT, conn)


def migrate(db: Database) -> list[str]:
    """Create pgvector if needed, then apply the missing migrations in order; return the names
    applied now."""
    with db.connection() as conn:
        ensure_vector_extension(conn, db.where)
    done_now = migrations.migrate(DIALECT, db, MIGRATIONS, where=db.where)
    db.reload_types()
    return done_now
