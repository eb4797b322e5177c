"""Hybrid search keeps its keyword evidence, near-duplicate chunks collapse into one result, and
`localrank eval` measures every mode on labelled sets.

The fusion test uses the real all-MiniLM-L6-v2 (what it asserts depends on real cosines); the
duplicate and eval tests are about plumbing and use the fake embedder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_embedder import HashEmbedder

from localrank.cli import main
from localrank.cli.common import Runtime
from localrank.collections import CollectionService, DocumentIn, SearchRequest
from localrank.collections.duplicates import Collapser
from localrank.collections.known_items import heading_key, load_known_items, sections
from localrank.collections.models import local_embedding_model
from localrank.config import load_settings
from localrank.errors import InvalidInput
from localrank.store import SQLiteStore
from localrank.store.records import Chunk, StoredChunk

FIXTURE = Path(__file__).parent / "fixtures" / "beir_tiny"
FAKE = Runtime(embedder_factory=lambda settings: HashEmbedder(), find_daemon=lambda settings: None)


def zebrafinch(i: int) -> str:
    return (
        "Field notes from the aviary, morning round. The birds were fed seed and fresh water, "
        f"the perches were cleaned, and the ring on the new bird reads zebrafinch{i}. "
        "Nothing else of note today."
    )


async def test_a_keyword_only_one_document_has_wins_among_near_identical_ones(
    tmp_path: Path, minilm: Path
) -> None:
    """400 near-identical documents, each naming one unique word: the query naming one of
    them finds it first in keyword mode, and now in the default hybrid search too (it used to
    re-sort every candidate by cosine alone, and the cosines of near-identical documents say
    nothing about which one names the word)."""
    settings = load_settings({"model": str(minilm), "dtype": "float32"}, environ={})
    embedder = local_embedding_model(settings)
    store = SQLiteStore(tmp_path / "db.sqlite")
    try:
        svc = CollectionService(store, lambda: embedder)
        await svc.create_collection("birds")
        docs = [DocumentIn(f"d{i}", zebrafinch(i)) for i in range(400)]
        await svc.add_documents("birds", docs, background=False)
        for mode in ("keyword", "hybrid"):
            out = await svc.search(SearchRequest("birds", "zebrafinch377", mode=mode, top_k=3))
            assert out["results"][0]["document_id"] == "d377", mode
        # The vector evidence is kept too: a paraphrase with no keyword in common still finds
        # the documents (all of them alike: any is right), and documents that differ by one
        # word in thirty are not near-duplicates.
        out = await svc.search(SearchRequest("birds", "cleaning the bird cages", top_k=3))
        assert len({r["document_id"] for r in out["results"]}) == 3
    finally:
        store.close()
        embedder.close()


PARAGRAPH = (
    "Calibrate the flux gauge before every run: hold the reset button for five seconds, "
    "wait for the green light, then zero the needle with the brass screw."
)


def page(name: str, paragraph: str) -> str:
    return (
        f"# {name}\n\nThis page is about the {name} module and nothing else. It covers the "
        f"{name} settings in depth.\n\n## Calibration\n\n{paragraph}\n\n## Notes\n\n"
        f"The {name} module was added in version {len(name)}.\n"
    )


@pytest.fixture
async def pages(tmp_path: Path):
    store = SQLiteStore(tmp_path / "db.sqlite")
    svc = CollectionService(store, lambda: HashEmbedder())
    await svc.create_collection("manual")
    near = PARAGRAPH.replace("five seconds", "five  seconds,").upper()  # case, spacing, comma
    docs = [
        DocumentIn("alpha.md", page("alpha", PARAGRAPH), source="/manual/alpha.md"),
        DocumentIn("beta.md", page("beta", PARAGRAPH), source="/manual/beta.md"),
        DocumentIn("gamma.md", page("gamma", near), source="/manual/gamma.md"),
        DocumentIn("delta.md", page("delta", "Calibrate the pump with the blue dial.")),
    ]
    await svc.add_documents("manual", docs, background=False)
    yield svc
    store.close()


async def test_the_same_paragraph_on_several_pages_is_one_result(
    pages: CollectionService,
) -> None:
    for mode in ("hybrid", "keyword", "vector"):
        for rerank in (True, False):
            req = SearchRequest("manual", "calibrate the flux gauge", mode=mode, rerank=rerank)
            results = (await pages.search(req))["results"]
            texts = [" ".join(r["text"].casefold().split()) for r in results]
            assert len(texts) == len(set(texts)), (mode, rerank)
            calibration = [r for r in results if "flux gauge" in r["text"].casefold()]
            assert len(calibration) == 1, (mode, rerank)
            top = calibration[0]
            where = {top["document_id"], *(c["document_id"] for c in top["also_in"])}
            assert where == {"alpha.md", "beta.md", "gamma.md"}, (mode, rerank)
            for c in top["also_in"]:
                doc = (await pages.get_document("manual", c["document_id"]))["text"]
                assert "flux gauge" in doc[c["char_start"] : c["char_end"]].casefold()
                assert c["chunk_id"] != top["chunk_id"] and c["line_start"] >= 1
            # Every other result stands alone, and top_k still counts distinct results.
            assert all(r["also_in"] == [] for r in results if r is not top)
    req = SearchRequest("manual", "calibrate the flux gauge", top_k=4)
    assert len((await pages.search(req))["results"]) == 4


def test_the_cli_lists_where_else_a_result_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path / "home"))
    folder = tmp_path / "manual"
    folder.mkdir()
    for name in ("alpha", "beta"):
        (folder / f"{name}.md").write_text(page(name, PARAGRAPH))
    assert main(["index", str(folder), "-c", "manual"], FAKE) == 0
    capsys.readouterr()
    assert main(["search", "flux gauge brass screw", "-c", "manual", "--top-k", "1"], FAKE) == 0
    lines = capsys.readouterr().out.splitlines()
    first, other = sorted(str((folder / f"{n}.md").resolve()) for n in ("alpha", "beta"))
    assert lines[0].split(":")[0] in (first, other)
    also = next(line for line in lines if line.strip().startswith("also in:"))
    assert (other if lines[0].startswith(first) else first) + ":5-" in also
    for name in ("gamma", "delta", "epsilon", "zeta"):
        (folder / f"{name}.md").write_text(page(name, PARAGRAPH))
    assert main(["index", str(folder), "-c", "manual"], FAKE) == 0
    capsys.readouterr()
    assert main(["search", "flux gauge brass screw", "-c", "manual", "--top-k", "1"], FAKE) == 0
    also = next(line for line in capsys.readouterr().out.splitlines() if "also in:" in line)
    assert also.count(".md:5-") == 3 and also.endswith(" and 2 more")


def chunk(cid: int, text: str) -> StoredChunk:
    return StoredChunk(cid, cid, f"d{cid}", None, Chunk(0, text, 0, len(text), 1, 1), {})


def test_near_duplicates_need_close_cosines_and_shared_trigrams() -> None:
    words = " ".join(f"word{i}" for i in range(80))
    edited = words.replace("word40", "changed")  # 3 of 78 trigrams differ: Jaccard 75/81
    other = " ".join(f"other{i}" for i in range(80))
    ranked = [chunk(1, words), chunk(2, edited), chunk(3, other), chunk(4, edited + " word0")]
    collapser = Collapser({1: 0.80, 2: 0.79, 3: 0.795, 4: 0.70})
    for c in ranked:
        collapser.add(c, 1.0)
    # 2 is 1 edited (close cosine); 4 shares as many trigrams with 1 but its cosine is far.
    assert [(g.chunk.id, [d.id for d in g.duplicates]) for g in collapser.groups] == [
        (1, [2]),
        (3, []),
        (4, []),
    ]
    without_cosine = Collapser({})
    for c in (chunk(1, "Same text."), chunk(2, "same  TEXT"), chunk(3, words), chunk(4, edited)):
        without_cosine.add(c, 1.0)
    # No cosine (keyword mode without rerank): only equal texts collapse.
    assert [len(g.duplicates) for g in without_cosine.groups] == [1, 0, 0]


# -- eval -----------------------------------------------------------------------------------


def test_sections_follow_heading_levels_and_skip_code() -> None:
    text = "# A\n\nintro\n\n## `b` [link](x)\n\nbody\n\n```\n# not a heading\n```\n\n# C\n"
    found = {key: text[s:e] for key, s, e in sections(text)}
    assert set(found) == {"a", "b link", "c"}
    assert found["a"].startswith("# A") and found["a"].endswith("```\n\n")
    assert found["b link"].startswith("## `b`") and "# not a heading" in found["b link"]
    assert (
        heading_key("Keeping files *out* of your `Package`") == "keeping files out of your package"
    )


def known_item_set(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "guide" / "bread.md").write_text(
        "# Bread\n\n## Sourdough\n\nA starter of flour and water ferments for days.\n\n"
        "## Baguette\n\nA long thin loaf with a crisp crust.\n"
    )
    (docs / "coffee.md").write_text("# Coffee\n\nEspresso is brewed under nine bars.\n")
    spec = {
        "name": "tiny-known",
        "folder": str(docs),
        "queries": [
            {
                "id": "a",
                "query": "wild yeast starter",
                "relevant": [{"file": "guide/*.md", "heading": "Sourdough"}],
            },
            {"id": "b", "query": "espresso pressure", "relevant": [{"file": "coffee.md"}]},
        ],
    }
    path = tmp_path / "set.json"
    path.write_text(json.dumps(spec))
    return path


def test_a_known_item_set_reads_its_folder_and_checks_its_judgements(tmp_path: Path) -> None:
    path = known_item_set(tmp_path)
    loaded = load_known_items(path)
    assert loaded.name == "tiny-known" and {d.id for d in loaded.documents} == {
        "guide/bread.md",
        "coffee.md",
    }
    doc, start, end = loaded.spans["a"][0]
    text = next(d.text for d in loaded.documents if d.id == doc)
    assert text[start:end].startswith("## Sourdough") and "Baguette" not in text[start:end]
    spec = json.loads(path.read_text())
    spec["queries"][0]["relevant"][0]["heading"] = "Rye"
    path.write_text(json.dumps(spec))
    with pytest.raises(InvalidInput, match="no section 'Rye'"):
        load_known_items(path)
    with pytest.raises(InvalidInput, match="not a folder"):
        load_known_items(known_item_set(tmp_path / "x"), tmp_path / "missing")


def test_eval_prints_a_table_per_set_and_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path / "home"))
    path = known_item_set(tmp_path)
    assert main(["eval", str(FIXTURE), str(path), "--json"], FAKE) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["dataset"] for s in out["sets"]] == ["beir_tiny", "tiny-known"]
    assert out["default"] == "hybrid+cosine"
    known = out["sets"][1]
    assert known["documents"] == 2 and known["queries"] == 2
    modes = ("keyword", "vector", "hybrid", "hybrid+cosine")
    for s in out["sets"]:
        assert tuple(s["metrics"]) == modes
        for m in s["metrics"].values():
            assert all(0.0 <= m[k] <= 1.0 for k in ("ndcg@10", "mrr@10", "recall@5", "recall@100"))
    # Both queries share words with their section only: keyword mode finds each first.
    assert known["metrics"]["keyword"]["mrr@10"] == 1.0
    assert main(["eval", str(FIXTURE), str(path)], FAKE) == 0
    text = capsys.readouterr().out
    assert "tiny-known: 2 documents" in text and "hybrid+cosine *" in text
    assert main(["eval", str(FIXTURE), "--docs", str(tmp_path)], FAKE) == 2  # InvalidInput
