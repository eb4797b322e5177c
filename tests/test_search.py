"""Search: modes, fusion, citations, FTS escaping, filters, evaluation and the CLI commands
(run in-process, with the fake embedder passed in through the CLI's Runtime)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from pathlib import Path

import pytest
from fake_embedder import HashEmbedder

from localrank.cli import main
from localrank.cli.common import Runtime
from localrank.collections import CollectionService, DocumentIn, SearchRequest
from localrank.collections.evaluate import (
    evaluate,
    index_set,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)
from localrank.collections.fusion import rrf
from localrank.collections.search import WARM_UP_SEARCHES
from localrank.collections.search_threads import SEARCH_THREADS
from localrank.errors import InvalidInput
from localrank.store import SQLiteStore

FIXTURE = Path(__file__).parent / "fixtures" / "beir_tiny"

NOTES = {
    "cooking.md": (
        "# Cooking\n\nSourdough needs a starter.\nKnead the dough well.\n\n"
        "## Pasta\n\nBoil salted water for the pasta.\n"
    ),
    "garden.md": "# Garden\n\nTomatoes need sun and water.\nPrune the basil often.\n",
    "code.md": (
        "# Code\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
        "The add function sums numbers.\n"
    ),
}


@pytest.fixture
async def service(tmp_path: Path):
    store = SQLiteStore(tmp_path / "db.sqlite")
    svc = CollectionService(store, lambda: HashEmbedder())
    await svc.create_collection("notes")
    docs = [
        DocumentIn(k, v, {"kind": k.split(".")[0], "year": 2020 + i}, f"/notes/{k}")
        for i, (k, v) in enumerate(NOTES.items())
    ]
    await svc.add_documents("notes", docs, background=False)
    yield svc
    store.close()


def test_rrf() -> None:
    fused = rrf([[1, 2, 3], [3, 1, 4]])
    assert [c for c, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


async def test_modes_scores_and_citations(service: CollectionService) -> None:
    for mode in ("hybrid", "vector", "keyword"):
        out = await service.search(
            SearchRequest("notes", "boil salted water pasta", mode=mode, top_k=3)
        )
        top = out["results"][0]
        assert top["document_id"] == "cooking.md", mode
        c = top["citation"]
        text = NOTES["cooking.md"]
        assert text[c["char_start"] : c["char_end"]] == top["text"]
        assert c["line_start"] == text.count("\n", 0, c["char_start"]) + 1
        assert c["source"] == "/notes/cooking.md"
        assert set(out["timings_ms"]) == {"embed", "keyword", "vector", "rerank", "total"}
        scores = [r["score"] for r in out["results"]]
        assert scores == sorted(scores, reverse=True)
    kw = await service.search(SearchRequest("notes", "basil", mode="keyword"))
    assert kw["timings_ms"]["embed"] == 0 and kw["results"][0]["document_id"] == "garden.md"
    hy = await service.search(SearchRequest("notes", "basil", mode="hybrid", rerank=False))
    assert hy["results"][0]["score"] == pytest.approx(2 / 61, rel=1e-3)  # first in both lists


@pytest.mark.parametrize(
    "query",
    [
        '"unbalanced',
        "a -b",
        "star*",
        "x NEAR y",
        "NEAR(a b)",
        "AND OR NOT",
        "col:val ^x",
        "(((",
        "-",
        "*",
    ],
)
async def test_fts_syntax_never_errors(service: CollectionService, query: str) -> None:
    out = await service.search(SearchRequest("notes", query, mode="keyword"))
    assert isinstance(out["results"], list)
    out = await service.search(SearchRequest("notes", query))
    assert isinstance(out["results"], list)


async def test_filters(service: CollectionService) -> None:
    req = SearchRequest.from_json(
        {"collection": "notes", "query": "water", "filter": {"kind": "garden"}}
    )
    out = await service.search(req)
    assert {r["document_id"] for r in out["results"]} == {"garden.md"}
    req = SearchRequest.from_json(
        {"collection": "notes", "query": "water", "filter": {"year": [2020, 2022]}}
    )
    assert {r["document_id"] for r in (await service.search(req))["results"]} <= {
        "cooking.md",
        "code.md",
    }
    req = SearchRequest.from_json(
        {"collection": "notes", "query": "water", "filter": {"kind": "none"}}
    )
    assert (await service.search(req))["results"] == []
    for bad in (
        {"filter": "kind=garden"},
        {"filter": {"kind": {"$ne": 1}}},
        {"top_k": 0},
        {"mode": "fuzzy"},
        {"query": ""},
        {"rerank": "yes"},
    ):
        with pytest.raises(InvalidInput):
            SearchRequest.from_json({"collection": "notes", "query": "water", **bad})


def test_metric_functions() -> None:
    rels = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b", "c"], rels) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "b", "a"], rels) < 0.8
    assert recall_at_k(["x", "b"], rels, 100) == 0.5
    assert mrr_at_k(["x", "y", "a"], rels) == pytest.approx(1 / 3)


async def test_evaluate_tiny_beir(tmp_path: Path) -> None:
    ds = load_beir(FIXTURE)
    assert len(ds.corpus) == 32 and len(ds.queries) == 15
    store = SQLiteStore(tmp_path / "eval.db")
    try:
        svc = CollectionService(store, lambda: HashEmbedder(dim=256))
        assert await index_set(svc, ds, "eval") >= 32
        report = await evaluate(svc, ds, "eval")
    finally:
        store.close()
    assert set(report) == {"keyword", "vector", "hybrid", "hybrid+cosine"}
    for metrics in report.values():
        assert 0.0 <= metrics["ndcg@10"] <= 1.0 and 0.0 <= metrics["mrr@10"] <= 1.0
    # keyword overlap between queries and their documents is strong in this fixture
    assert report["keyword"]["ndcg@10"] > 0.6 and report["hybrid"]["recall@100"] > 0.9


# -- CLI ------------------------------------------------------------------------------------


# In-process: never the daemon some other process may run on the default port.
FAKE = Runtime(embedder_factory=lambda settings: HashEmbedder(), find_daemon=lambda settings: None)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv, FAKE)
    return code, capsys.readouterr().out


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path / "home"))
    return tmp_path


def test_cli_index_search_and_friends(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = cli_home / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "node_modules").mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text)
    (folder / "sub" / "deep.md").write_text("# Deep\n\nVolcanoes erupt lava.\n")
    (folder / ".git" / "x.md").write_text("ignored lava")
    (folder / "node_modules" / "y.md").write_text("ignored lava")
    (folder / "skip.md").write_text("excluded lava")
    (folder / "image.png").write_bytes(b"\x89PNG\x00")

    code, out = run_cli(
        ["index", str(folder), "--collection", "notes", "--exclude", "skip.md", "--json"], capsys
    )
    res = json.loads(out)
    assert code == 0 and res["files"] == 4 and res["changed"] == 4 and res["state"] == "done"
    code, out = run_cli(
        ["index", str(folder), "--collection", "notes", "--exclude", "skip.md", "--json"], capsys
    )
    assert json.loads(out)["unchanged"] == 4 and json.loads(out)["job_id"] is None

    code, out = run_cli(["search", "lava volcanoes", "--collection", "notes"], capsys)
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith(f"{folder / 'sub' / 'deep.md'}:1-3  score ")
    code, out = run_cli(
        ["search", "lava", "--collection", "notes", "--json", "--mode", "keyword"], capsys
    )
    # A file's id is its absolute path (unique whatever folders share the collection).
    deep = (folder / "sub" / "deep.md").resolve().as_posix()
    assert [r["document_id"] for r in json.loads(out)["results"]] == [deep]

    code, out = run_cli(["collections", "--json"], capsys)
    assert json.loads(out)["collections"][0]["documents"] == 4
    code, out = run_cli(["jobs", "--json"], capsys)
    assert json.loads(out)["jobs"][0]["state"] == "done"
    code, out = run_cli(["compact", "--json"], capsys)
    assert code == 0 and "bytes_after" in json.loads(out)
    code, out = run_cli(["eval", str(FIXTURE), "--json"], capsys)
    assert code == 0 and set(json.loads(out)["sets"][0]["metrics"]) == {
        "keyword",
        "vector",
        "hybrid",
        "hybrid+cosine",
    }
    assert (cli_home / "home" / "data" / "localrank.db").exists()


class RecordingStore(SQLiteStore):
    """Notes which thread asked for vector candidates, and with which keyword query."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.vector_threads: list[str] = []
        self.keyword_queries: list[str] = []

    def vector_candidates(self, collection, query, limit, *, candidates, flt=None):  # type: ignore[no-untyped-def]
        self.vector_threads.append(threading.current_thread().name)
        return super().vector_candidates(collection, query, limit, candidates=candidates, flt=flt)

    def keyword_candidates(self, collection, query, limit, flt=None):  # type: ignore[no-untyped-def]
        self.keyword_queries.append(query)
        return super().keyword_candidates(collection, query, limit, flt)


async def test_prepare_search_warms_every_search_thread(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "db.sqlite")
    svc = CollectionService(store, lambda: HashEmbedder())
    try:
        for name in ("notes", "empty"):
            await svc.create_collection(name)
        docs = [DocumentIn(k, v, {}, f"/notes/{k}") for k, v in NOTES.items()]
        await svc.add_documents("notes", docs, background=False)
        assert svc.search_readiness()["ready"] is False
        await svc.prepare_search()
        assert svc.search_readiness() == {"ready": True, "loaded": 2, "total": 2}
        # Each search thread ran its own warm-up searches on the collection with chunks, with
        # words of its documents as the keyword query (the empty one needs no warming).
        threads = Counter(store.vector_threads)
        assert len(threads) == SEARCH_THREADS
        assert all(name.startswith("localrank-search") for name in threads)
        assert set(threads.values()) == {WARM_UP_SEARCHES}
        assert any(
            "Sourdough" in q or "Tomatoes" in q or "Code" in q for q in store.keyword_queries
        )
        # Real searches run on the same threads.
        out = await svc.search(SearchRequest.from_json({"collection": "notes", "query": "basil"}))
        assert out["results"][0]["document_id"] == "garden.md"
        assert store.vector_threads[-1] in threads
    finally:
        await svc.close()
        store.close()


class ListingGate(SQLiteStore):
    """`list_collections` waits for the test's go-ahead (or fails, when told to)."""

    def __init__(self, path: Path, *, fail: bool = False) -> None:
        super().__init__(path)
        self.fail = fail
        self.entered = threading.Event()
        self.go = threading.Event()

    def list_collections(self):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.go.wait(10)
        if self.fail:
            raise RuntimeError("the disk went away")
        return super().list_collections()


async def test_shutting_down_while_search_is_being_prepared_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The daemon stops while the startup preload is between two of its steps: the service's
    # threads are released and the store is closed before the preload's next store call runs.
    # That call fails (the store is closed) and the preload must end quietly, not raise into
    # the shutdown (CI once failed a test's teardown on exactly this).
    store = ListingGate(tmp_path / "db.sqlite")
    svc = CollectionService(store, lambda: HashEmbedder())
    await svc.create_collection("notes")
    preload = asyncio.create_task(svc.prepare_search())
    assert await asyncio.to_thread(store.entered.wait, 10)
    await svc.close()
    store.close()
    store.go.set()
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(preload, 10)
    assert not caplog.records


async def test_a_failed_preload_is_logged_and_searches_still_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ListingGate(tmp_path / "db.sqlite", fail=True)
    store.go.set()
    svc = CollectionService(store, lambda: HashEmbedder())
    try:
        await svc.create_collection("notes")
        docs = [DocumentIn(k, v, {}, f"/notes/{k}") for k, v in NOTES.items()]
        await svc.add_documents("notes", docs, background=False)
        with caplog.at_level(logging.WARNING):
            await svc.prepare_search()
        assert "preparing for search failed" in caplog.text
        out = await svc.search(SearchRequest.from_json({"collection": "notes", "query": "basil"}))
        assert out["results"][0]["document_id"] == "garden.md"
    finally:
        await svc.close()
        store.close()
