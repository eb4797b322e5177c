"""Cutting long texts before tokenising is exact: the same ids as tokenising the whole text and
truncating, on the real Qwen3 BPE tokenizer and MiniLM's WordPiece. And it is what makes a long
text cheap: only a prefix is ever tokenised."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from tokenizers import Encoding, Tokenizer, normalizers, pre_tokenizers

import localrank.engine.tokenizer as tokenizer_module
from localrank.engine.recipe import load_recipe
from localrank.engine.tokenizer import TextTokenizer, load_raw_tokenizer

WORDS = ["the", "of", "and", "model", "token", "naïve", "café", "straße", "Ελληνικά", "русский"]
WORDS += ["東京", "日本語", "🙂", "e\u0301", "x"]
SCRIPTS = [
    "abcdefghijklmnopqrstuvwxyz",  # Latin letters, no spaces: one long pre-token
    "0123456789",  # digits: Qwen3 splits them one by one
    "東京日本語中文漢字測試文本",  # CJK without punctuation: one long pre-token
    "é\u0301ñü",  # combining marks and precomposed letters: NFC / accent stripping
    "🙂🚀👍🏽",  # 4-byte characters, byte-level tokens
    "аб вг\n\n  де",  # Cyrillic with whitespace runs and blank lines
]


class Spy:
    """The raw tokenizer, counting the characters handed to it."""

    def __init__(self, raw: Tokenizer) -> None:
        self.raw = raw
        self.chars = 0

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool) -> list[Encoding]:
        self.chars += sum(len(t) for t in texts)
        return self.raw.encode_batch(texts, add_special_tokens=add_special_tokens)

    def encode(self, text: str, add_special_tokens: bool) -> Encoding:
        self.chars += len(text)
        return self.raw.encode(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name: str) -> object:
        return getattr(self.raw, name)


def tokenizer(model_dir: Path, max_tokens: int) -> TextTokenizer:
    raw = load_raw_tokenizer(model_dir)
    recipe = load_recipe(model_dir, raw, max_tokens=max_tokens, default_instruction="x")
    return TextTokenizer(raw, dataclasses.replace(recipe, max_tokens=max_tokens))


def reference(tok: TextTokenizer, text: str) -> tuple[list[int], bool]:
    """The whole text tokenised, then truncated: what the cut must reproduce."""
    content = tok.raw.encode(text, add_special_tokens=False).ids
    body = content[: tok.content_limit]
    return tok.prefix + body + tok.suffix, len(content) > tok.content_limit


def random_text(rng: random.Random, n: int) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # words and spaces
        return " ".join(rng.choice(WORDS) for _ in range(n))
    if kind == 1:  # one script, no spaces at all
        alphabet = rng.choice(SCRIPTS)
        return "".join(rng.choice(alphabet) for _ in range(n * 2))
    if kind == 2:  # a repeated character: the longest pre-token there is
        return rng.choice("a1東🙂 \n") * (n * 3)
    # a mixture, with whitespace runs that a cut may split
    parts = [rng.choice(WORDS) + " " * rng.randrange(4) for _ in range(n)]
    return "".join(parts) + rng.choice(["", "   ", "\n\n", "!!!"])


@pytest.fixture(params=["qwen3", "minilm"])
def model_dir(request: pytest.FixtureRequest, tiny_qwen3: Path, minilm: Path) -> Path:
    return tiny_qwen3 if request.param == "qwen3" else minilm


@pytest.mark.parametrize("max_tokens", [8, 33, 200])
def test_cut_equals_whole_text_truncated(model_dir: Path, max_tokens: int) -> None:
    tok = tokenizer(model_dir, max_tokens)
    rng = random.Random(max_tokens)
    texts = [
        random_text(rng, rng.choice([1, 5, max_tokens, 4 * max_tokens, 40 * max_tokens]))
        for _ in range(150)
    ]
    got = tok.encode(texts)
    for text, enc in zip(texts, got, strict=True):
        ids, truncated = reference(tok, text)
        assert enc.ids == ids, text[:80]
        assert enc.truncated == truncated
    # Long ones really were cut (not counted) rather than tokenised whole.
    assert any(e.original_tokens is None for e in got)


def test_texts_right_at_the_limit(model_dir: Path) -> None:
    """Texts of limit-2 .. limit+2 tokens, built by cutting a longer text at token ends, and
    then padded with long tails so that the cut path is taken for the longer ones."""
    tok = tokenizer(model_dir, 40)
    limit = tok.content_limit
    rng = random.Random(1)
    for _ in range(20):
        base = random_text(rng, 400)
        enc = tok.raw.encode(base, add_special_tokens=False)
        for n in range(limit - 2, limit + 3):
            if n > len(enc.offsets):
                continue
            text = base[: enc.offsets[n - 1][1]]
            for tail in ("", " " * 5000, "x" * 5000, " more words" * 500):
                ids, truncated = reference(tok, text + tail)
                got = tok.encode([text + tail])[0]
                assert got.ids == ids
                assert got.truncated == truncated


def test_a_huge_text_tokenises_only_a_prefix(model_dir: Path) -> None:
    tok = tokenizer(model_dir, 256)
    spy = Spy(tok.raw)
    tok.raw = spy  # type: ignore[assignment]
    text = "lorem ipsum dolor sit amet " * 400_000  # ~10.8 M characters
    got = tok.encode([text])[0]
    assert got.truncated and len(got.ids) == 256
    tok.raw = spy.raw
    assert got.ids == reference(tok, text[:100_000])[0]
    # A handful of prefixes of a few thousand characters each, not 10 M.
    assert spy.chars < 50 * 256 * 8


def test_cut_to_tokens_matches_offsets(model_dir: Path) -> None:
    tok = tokenizer(model_dir, 512)
    rng = random.Random(2)
    texts = [random_text(rng, rng.choice([3, 60, 3000])) for _ in range(40)]
    for limit in (1, 7, 50):
        for text, cut in zip(texts, tok.cut(texts, limit), strict=True):
            offsets = tok.raw.encode(text, add_special_tokens=False).offsets
            want = text[: offsets[limit - 1][1]] if len(offsets) > limit else text
            assert cut == want


def test_spans_of_a_long_text_are_the_whole_texts(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans for chunking are computed on pieces cut at line breaks: with pieces as small as
    they get (a cut at every break), they equal the whole text's."""
    tok = tokenizer(model_dir, 512)
    assert tok.cuts_at_breaks
    monkeypatch.setattr(tokenizer_module, "SPAN_PIECE_CHARS", 1)
    rng = random.Random(3)
    for _ in range(30):
        lines = [random_text(rng, rng.randint(0, 12)) for _ in range(rng.randint(1, 40))]
        seps = ["\n", "\n\n", " \n", "  \r\n", ".\n", "!\n\n", "\t\n ", ":\n-"]
        text = "".join(line + rng.choice(seps) for line in lines)
        whole = tok.raw.encode(text, add_special_tokens=False).offsets
        assert tok.offsets(text).tolist() == [list(o) for o in whole]


def test_a_tokenizer_that_cannot_be_cut_is_tokenised_whole(minilm: Path) -> None:
    """Metaspace pre-tokenisation (sentencepiece-style) splits on spaces only, so a line break
    sits inside a pre-token, and each piece gets a space marker prepended: the probe at load
    sees that and the text is never cut."""
    raw = load_raw_tokenizer(minilm)
    raw.normalizer = normalizers.Lowercase()  # not BERT's, which turns line breaks to spaces
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    recipe = load_recipe(minilm, raw, max_tokens=512, default_instruction="x")
    tok = TextTokenizer(raw, recipe)
    assert not tok.cuts_at_breaks
    text = "first line\nsecond line\n\nthird\n" * 5000
    whole = raw.encode(text, add_special_tokens=False).offsets
    assert tok.offsets(text).tolist() == [list(o) for o in whole]
