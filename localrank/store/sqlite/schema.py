"""SQLite's schema: its named, ordered migrations (applied by `store.migrations`).

Vectors live in ordinary tables, not in vec0: `vectors` holds the float32 blobs, `codes` the
binary code of each, with the chunk's collection and document, so loading a collection's index
reads nothing else (`vectors.code` is a copy kept from the first schema, see 0005). Search scans
the codes in memory with numpy (see `vector_index.py` for the measurements behind that choice),
rescoring reads a few hundred float blobs by primary key, and an ordinary table reclaims deleted
pages with VACUUM and supports upsert, which vec0 0.1.9 does not. The codes have the byte format
of sqlite-vec's `vec_quantize_binary` (the extension's own bit vector, usable with
`vec_distance_hamming`).
"""

from __future__ import annotations

import apsw

from localrank.store import migrations
from localrank.store.migrations import Migration
from localrank.store.sqlite.db import Database

DIALECT = migrations.Dialect(
    placeholder="?",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    # Each migration's transaction is BEGIN IMMEDIATE (`Database.write`): the database's lock.
    lock=None,
    legacy_table="migrations",
)

MIGRATIONS: list[Migration] = [
    Migration(
        "0001_collections_documents_chunks",
        """
        CREATE TABLE collections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            fingerprint TEXT NOT NULL,
            model_id TEXT NOT NULL,
            dim INTEGER NOT NULL CHECK (dim > 0),
            created TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            -- bumped by every write that adds or removes chunks: in-memory indexes catch up
            generation INTEGER NOT NULL DEFAULT 0,
            -- bumped when vectors change in place (reindex, compact): indexes reload fully
            epoch INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE documents (
            id INTEGER PRIMARY KEY,
            collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
            doc_id TEXT NOT NULL,
            text TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            source TEXT,
            content_hash TEXT NOT NULL,
            updated TEXT NOT NULL,
            UNIQUE (collection_id, doc_id)
        );
        -- One row per filterable metadata value (list values: one row per element), so a
        -- filter is an index lookup instead of json_extract over every document.
        CREATE TABLE doc_meta (
            doc INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            collection_id INTEGER NOT NULL,
            key TEXT NOT NULL,
            value ANY
        );
        CREATE INDEX doc_meta_lookup ON doc_meta (collection_id, key, value);
        CREATE INDEX doc_meta_doc ON doc_meta (doc);
        CREATE TABLE chunks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            doc INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            collection_id INTEGER NOT NULL,
            ordinal INTEGER NOT NULL,
            text TEXT NOT NULL,
            char_start INTEGER NOT NULL,
            char_end INTEGER NOT NULL,
            line_start INTEGER NOT NULL,
            line_end INTEGER NOT NULL,
            page INTEGER
        );
        CREATE INDEX chunks_doc ON chunks (doc, ordinal);
        CREATE INDEX chunks_collection ON chunks (collection_id, id);
        CREATE TABLE vectors (
            chunk INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
            embedding BLOB NOT NULL,
            code BLOB NOT NULL
        );
        -- Deleted chunk ids, so an in-memory index in another process can catch up without a
        -- full reload. Cleared by compact (which bumps the epoch).
        CREATE TABLE tombstones (
            collection_id INTEGER NOT NULL,
            chunk INTEGER NOT NULL,
            generation INTEGER NOT NULL
        );
        CREATE INDEX tombstones_gen ON tombstones (collection_id, generation);
        CREATE VIRTUAL TABLE chunks_fts USING fts5(
            text, content='chunks', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
        END;
        CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
        END;
        """,
    ),
    Migration(
        "0002_jobs",
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            collection TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('ingest', 'reindex')),
            state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
            total INTEGER NOT NULL DEFAULT 0,
            done INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            errors TEXT NOT NULL DEFAULT '[]',
            params TEXT NOT NULL DEFAULT '{}',
            owner TEXT,
            heartbeat REAL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
        CREATE INDEX jobs_state ON jobs (state, created);
        -- The payload of each pending document: written before the API acknowledges the job,
        -- cleared (payload NULL) in the same transaction that stores the document.
        CREATE TABLE job_items (
            job TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            doc_id TEXT NOT NULL,
            payload TEXT,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
            PRIMARY KEY (job, seq)
        ) WITHOUT ROWID;
        CREATE INDEX job_items_pending ON job_items (job, state, seq);
        -- Reindex writes new vectors here and swaps them in at the end, in one transaction.
        CREATE TABLE reindex_vectors (
            job TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            chunk INTEGER NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
            embedding BLOB NOT NULL,
            code BLOB NOT NULL,
            PRIMARY KEY (job, chunk)
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        "0003_embed_cache",
        """
        CREATE TABLE embed_cache (
            fingerprint TEXT NOT NULL,
            text_hash BLOB NOT NULL,
            embedding BLOB NOT NULL,
            used REAL NOT NULL,
            PRIMARY KEY (fingerprint, text_hash)
        ) WITHOUT ROWID;
        CREATE INDEX embed_cache_used ON embed_cache (used);
        """,
    ),
    Migration(
        # doc_meta.value was declared ANY, which in an ordinary table means NUMERIC affinity:
        # "1.10" was stored as 1.1 and "01234" as 1234, so filters matched the wrong documents.
        # A column with no declared type converts nothing: a string equals only the same
        # string, numbers compare as numbers. Rebuilt from documents.metadata, the source of
        # truth, because the coerced values cannot be turned back.
        "0004_exact_metadata_values",
        """
        CREATE TABLE doc_meta_exact (
            doc INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            collection_id INTEGER NOT NULL,
            key TEXT NOT NULL,
            value
        );
        INSERT INTO doc_meta_exact (doc, collection_id, key, value)
            SELECT d.id, d.collection_id, j.key, j.value
            FROM documents d, json_each(d.metadata) j
            WHERE j.type IN ('text', 'integer', 'real', 'true', 'false');
        INSERT INTO doc_meta_exact (doc, collection_id, key, value)
            SELECT d.id, d.collection_id, j.key, e.value
            FROM documents d, json_each(d.metadata) j, json_each(j.value) e
            WHERE j.type = 'array' AND e.type IN ('text', 'integer', 'real', 'true', 'false');
        DROP TABLE doc_meta;
        ALTER TABLE doc_meta_exact RENAME TO doc_meta;
        CREATE INDEX doc_meta_lookup ON doc_meta (collection_id, key, value);
        CREATE INDEX doc_meta_doc ON doc_meta (doc);
        """,
    ),
    Migration(
        "0005_watched_folders",
        """
        -- Folders the daemon keeps indexed: registered by `localrank index --watch`, so the
        -- watch survives a restart. One row per (collection, folder).
        CREATE TABLE watches (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            collection TEXT NOT NULL,
            root TEXT NOT NULL,
            options TEXT NOT NULL DEFAULT '{}',
            created TEXT NOT NULL,
            UNIQUE (collection, root)
        );
        -- Documents read from files are found by where they came from (prune, watch, get by path).
        CREATE INDEX documents_source ON documents (collection_id, source);
        """,
    ),
    Migration(
        # Each chunk's binary code gets its own narrow table, with the chunk's collection and
        # document. Loading a collection's search index then reads ~150 bytes a row instead of
        # walking every 4 KB vector's overflow pages (and every chunk's text, for its
        # document): at 1M chunks x 1024-d, 1.2-1.7 s instead of 2.7 s from the page cache,
        # ~3 s instead of 6-12 s from disk. `vectors.code` stays, written and never read:
        # dropping it rewrites every vector (100 s at 1M chunks on a busy 2-core machine, in
        # the one transaction of a daemon's start: past a supervisor's start timeout on a
        # bigger store, which would then restart it into the same migration forever).
        "0006_vector_codes",
        """
        CREATE TABLE codes (
            chunk INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
            collection_id INTEGER NOT NULL,
            doc INTEGER NOT NULL,
            code BLOB NOT NULL
        );
        CREATE INDEX codes_collection ON codes (collection_id);
        INSERT INTO codes (chunk, collection_id, doc, code)
            SELECT c.id, c.collection_id, c.doc, v.code
            FROM chunks c JOIN vectors v ON v.chunk = c.id;
        """,
    ),
]


def applied_migrations(conn: apsw.Connection) -> list[str]:
    """Names of the migrations recorded in this database, in order."""
    return migrations.applied_migrations(DIALECT, conn)


def migrate(db: Database) -> list[str]:
    """Apply the missing migrations in order; return the names applied now."""
    return migrations.migrate(DIALECT, db, MIGRATIONS, where=str(db.path))
