"""Chunking: token budget, overlap, markdown structure, spans, determinism."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from chunking_reference import chunk_text as reference_chunk_text
from fake_embedder import HashEmbedder

from localrank.collections.chunking import chunk_text
from localrank.collections.ingest import chunk_budget
from localrank.engine.recipe import load_recipe
from localrank.engine.tokenizer import TextTokenizer, load_raw_tokenizer

EMB = HashEmbedder()


def chunks_of(text: str, target: int = 40, overlap: int = 8):
    return chunk_text(text, EMB.token_offsets(text), target_tokens=target, overlap_tokens=overlap)


def ntokens(s: str) -> int:
    return len(EMB.token_offsets(s))


def prose(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}." if i % 6 == 5 else f"{tag}{i}" for i in range(n))


def test_budget_spans_and_lines_are_exact() -> None:
    text = "# Title\n\n" + prose(200) + "\n\nTail line.\n"
    chunks = chunks_of(text)
    assert len(chunks) > 4
    for c in chunks:
        assert ntokens(c.text) <= 40
        assert text[c.char_start : c.char_end] == c.text
        assert c.line_start == text.count("\n", 0, c.char_start) + 1
        assert c.line_end == text.count("\n", 0, c.char_end - 1) + 1
        assert c.text == c.text.strip()
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    # Everything is covered: the first chunk starts at 0, the last ends at the text's end.
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text.rstrip())


def test_overlap_between_size_split_chunks() -> None:
    chunks = chunks_of(prose(300), target=40, overlap=8)
    overlaps = [b.char_start < a.char_end for a, b in zip(chunks, chunks[1:], strict=False)]
    assert all(overlaps)
    for a, b in zip(chunks, chunks[1:], strict=False):
        shared = ntokens(a.text[b.char_start - a.char_start :])
        assert 1 <= shared <= 8


def test_no_overlap_when_zero() -> None:
    chunks = chunks_of(prose(300), target=40, overlap=0)
    assert all(b.char_start >= a.char_end for a, b in zip(chunks, chunks[1:], strict=False))


def test_headings_start_chunks() -> None:
    text = "# A\n\nalpha beta.\n\n## B\n\ngamma delta.\n\n### C\nepsilon.\n"
    chunks = chunks_of(text, target=200)
    assert [c.text.splitlines()[0] for c in chunks] == ["# A", "## B", "### C"]
    assert [c.line_start for c in chunks] == [1, 5, 9]


def test_code_block_kept_whole_when_it_fits() -> None:
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(6)) + "\n```"
    text = prose(25, "p") + "\n\n" + code + "\n\n" + prose(10, "q")
    assert ntokens(code) <= 40
    chunks = chunks_of(text, target=40, overlap=8)
    holders = [c for c in chunks if "```python" in c.text]
    assert len(holders) == 1 and code in holders[0].text
    # No chunk holds part of the block without holding all of it.
    assert all(code in c.text or "x3 = 3" not in c.text for c in chunks)


def test_oversized_code_block_is_split_on_lines() -> None:
    code = "```\n" + "\n".join(f"value_{i} = compute({i})" for i in range(60)) + "\n```"
    chunks = chunks_of("intro.\n\n" + code, target=40, overlap=8)
    inside = [c for c in chunks if "value_" in c.text]
    assert len(inside) > 2
    for c in inside:
        assert ntokens(c.text) <= 40
        # split between lines: each piece ends at the end of a code line
        assert c.text.endswith(")") or c.text.endswith("```")


def test_deterministic_and_pages() -> None:
    text = "page one text.\fpage two text.\fpage three " + prose(80)
    a, b = chunks_of(text), chunks_of(text)
    assert a == b
    assert a[0].page == 1 and a[-1].page == 3


def test_empty_text_gives_no_chunks() -> None:
    assert chunks_of("   \n  ") == []


def awkward_markdown(seed: int = 3) -> str:
    """Text whose pieces tokenize differently alone than in context: long identifiers split
    into sub-words, unbroken runs, multi-byte characters, URLs and code."""
    rng = random.Random(seed)
    pieces = ["snake_case_identifier_numero_", "ÜberStraße", "日本語のテキスト", "🙂🚀",
              "https://example.org/a/b?c=d&e=f", "0x3fa9c2d1e8b7", "aaaaaaaaaaaaaaaaaaaaaaaa",
              "tokenization", "re-embedding", "    indented(code, line);"]  # fmt: skip
    parts = []
    for p in range(40):
        if p % 7 == 0:
            parts.append(f"## Section {p}")
        words = [rng.choice(pieces) + str(rng.randint(0, 99)) for _ in range(rng.randint(30, 90))]
        parts.append(" ".join(words) + ".")
        if p % 9 == 4:
            parts.append("```\n" + "\n".join(rng.choice(pieces) for _ in range(30)) + "\n```")
    return "\n\n".join(parts)


@pytest.mark.parametrize("model,max_tokens", [("minilm", 8192), ("tiny_qwen3", 64)])
def test_chunks_fit_the_real_tokenizers_limit(
    model: str, max_tokens: int, request: pytest.FixtureRequest
) -> None:
    # Chunks are cut from the whole document's tokens but embedded alone, with special tokens:
    # with the ingestion budget, none may come back over the model's limit (silently cut).
    path: Path = request.getfixturevalue(model)
    raw = load_raw_tokenizer(path)
    recipe = load_recipe(path, raw, max_tokens=max_tokens, default_instruction="")
    tokenizer = TextTokenizer(raw, recipe)
    text = awkward_markdown()
    budget = chunk_budget(512, recipe.max_tokens)
    assert budget < 512 and budget < recipe.max_tokens
    chunks = chunk_text(text, tokenizer.offsets(text), target_tokens=budget, overlap_tokens=64)
    assert len(chunks) > 5
    encoded = tokenizer.encode([c.text for c in chunks])
    assert not [e.original_tokens for e in encoded if e.truncated]
    assert max(len(e.ids) for e in encoded) <= recipe.max_tokens


def test_source_code_is_not_cut_at_comments() -> None:
    """`# comment` lines are headings in Markdown (forced cuts) but not in code."""
    code = "".join(
        f"# step {i}: explain what follows\ndef f{i}(x):\n    return x + {i}\n\n" for i in range(12)
    )
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", code)]
    as_markdown = chunk_text(code, spans, target_tokens=60, overlap_tokens=0)
    as_code = chunk_text(code, spans, target_tokens=60, overlap_tokens=0, markdown=False)
    assert len(as_markdown) == 12  # one chunk per "heading"
    assert len(as_code) < len(as_markdown)
    # Code chunks end between functions (a blank line), never inside one.
    for c in as_code[:-1]:
        assert c.text.rstrip().split("\n")[-1].startswith("    return")


def markdown(rng: random.Random, paragraphs: int) -> str:
    """Random markdown: headings, prose with sentences, lists, fenced code (with '#' lines that
    are not headings), blank-line runs, form feeds and trailing spaces."""
    words = ["alpha", "beta", "gamma", "delta", "café", "東京", "x1", "(note)", '"quoted"']
    out = []
    for _ in range(paragraphs):
        kind = rng.randrange(6)
        if kind == 0:
            out.append("#" * rng.randint(1, 6) + " " + " ".join(rng.choices(words, k=3)))
        elif kind == 1:
            body = "\n".join(
                rng.choice(["# not a heading", "x = 1", "  return x", ""]) for _ in range(6)
            )
            out.append(f"```python\n{body}\n```")
        elif kind == 2:
            out.append("\n".join("- " + " ".join(rng.choices(words, k=4)) for _ in range(3)))
        else:
            sentences = [
                " ".join(rng.choices(words, k=rng.randint(2, 12)))
                + rng.choice([".", "!", "?", ".)", ""])
                for _ in range(rng.randint(1, 8))
            ]
            out.append(" ".join(sentences) + rng.choice(["", "  ", "\f"]))
    return "".join(p + rng.choice(["\n\n", "\n", "\n\n\n", " \n\n"]) for p in out)


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_chunker_agrees_with_the_reference(seed: int, tiny_qwen3: Path) -> None:
    rng = random.Random(seed)
    raw = load_raw_tokenizer(tiny_qwen3)
    tokenizer = TextTokenizer(
        raw, load_recipe(tiny_qwen3, raw, max_tokens=512, default_instruction="x")
    )
    for _ in range(5):
        text = markdown(rng, rng.randint(1, 60))
        target, overlap = rng.choice([(8, 2), (40, 8), (120, 30), (512, 64)])
        for spans in (EMB.token_offsets(text), tokenizer.offsets(text)):
            for as_markdown in (True, False):
                want = reference_chunk_text(
                    text,
                    [tuple(map(int, s)) for s in spans],
                    target_tokens=target,
                    overlap_tokens=overlap,
                    markdown=as_markdown,
                )
                got = chunk_text(
                    text, spans, target_tokens=target, overlap_tokens=overlap, markdown=as_markdown
                )
                assert got == want
