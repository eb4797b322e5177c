"""Text -> model input ids, by the recipe: special tokens, EOS, truncation that is counted.

A text longer than the model reads is cut by characters before it is tokenised, so a 30 MB
input costs what its first few thousand tokens cost. The cut is exact: the ids equal those of
the whole text tokenised and then truncated. Normalisers and pre-tokenisers work on local
context and each pre-token is split into tokens on its own, so only the tokens of the last
pre-token or two before a cut can differ from the whole text's. A prefix is therefore accepted
only when it has `CUT_MARGIN` tokens to spare past the limit AND a prefix twice as long gives
the same first `limit` ids; otherwise the bound doubles (tests/test_tokenizer.py checks both
tokenizers on multi-byte text, text without spaces and texts at the limit).

Long texts go through `encode_batch`, which releases the GIL (`encode` holds it for the whole
text: 6.6 s for 6 MB, during which no other thread runs); short ones through `encode`, which
does not wait for the library's shared thread pool (a probe request waited 5.5 s for it while
a 9 MB document was being tokenised).
The token spans of a long text (for chunking) are computed on pieces of it cut where a run of
whitespace with a line break follows a letter or digit, in parallel, as one compact array: a
9 MB document took 29 s and 1.1 GB tokenised whole. Pre-tokenisers split there (whitespace ends
a word in BERT's; in Qwen3's regex a letter run ends and a line-break pre-token starts), so the
spans are the whole text's; a probe at load checks it for the tokenizer at hand, and a text is
never cut for a tokenizer that fails it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from localrank.engine.types import Recipe
from localrank.errors import InvalidInput, ModelError

# Why token ids out of the vocabulary are refused, and what the usual senders should do.
TOKEN_IDS_ADVICE = (
    "Token ids are the served model's tokenizer's; a client that sends OpenAI tiktoken ids must "
    "send text instead (LangChain: check_embedding_ctx_length=False; LibreChat's RAG API: "
    "RAG_CHECK_EMBEDDING_CTX_LENGTH=false)"
)


@dataclass(frozen=True)
class Encoded:
    """One input ready for the model: its ids (special tokens included) and whether it was cut."""

    ids: list[int]
    truncated: bool
    # Tokens of the whole input, special tokens included; None when a long text was cut before
    # tokenising (it has more than the model reads; how many more was not counted).
    original_tokens: int | None
    # Segment ids (0 query, 1 document) of a cross-encoder's pair; None for single texts.
    type_ids: list[int] | None = None


@dataclass(frozen=True)
class Token:
    """One token as TEI's /tokenize shows it: special tokens have no character span."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


# A first character bound for `limit` tokens: 8 characters a token is more than English BPE or
# WordPiece use (4-6), so one round usually suffices; denser scripts just get more tokens. Never
# under 256, so the two compared prefixes differ by more than WordPiece's longest word (100
# characters; a longer one is a single [UNK], a prefix of it is not).
CHARS_PER_TOKEN = 8
MIN_CUT_CHARS = 256
# Tokens a prefix must have past the limit before its first `limit` are compared with a longer
# prefix's.
CUT_MARGIN = 8


# Up to this many characters in one call are tokenised on the calling thread (encode), more
# with the GIL released on the library's thread pool (encode_batch).
SMALL_CHARS = 16 * 1024
# Pieces of about this many characters when spans of a long text are computed in parallel.
SPAN_PIECE_CHARS = 64 * 1024
SPAN_PIECES_PER_CALL = 8
# Where a run of whitespace holding a line break starts, after a letter or digit (Qwen3's regex
# glues line breaks to punctuation before them: ".\n" is one pre-token).
_BREAK = re.compile(r"(?<=[^\W_])[^\S\n]*\n")
# Checked at load: cut at every break, this text must give the spans the whole text gives.
_PROBE = (
    "Title  \n\nA line, with words.\n  indented\tline \n\n\n- item one\n-item two  \r\n"
    "x=1;\ny = [2, 3]\n\nÜnïcödé café naïve.\n東京都 日本語\n🙂 emoji 🚀\n \n end"
)


def load_raw_tokenizer(model_dir: Path) -> Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"model folder {model_dir} has no tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        raise ModelError(f"cannot load {path}: {exc}") from exc


class TextTokenizer:
    """Builds model inputs from text or token ids.

    Content is always tokenized without special tokens and wrapped here, so the result is the
    same whether or not a tokenizer's post-processor appends Qwen3's <|endoftext|>: several
    published conversions do not, and a Qwen3 embedding pooled on the wrong token is silently
    wrong.
    """

    def __init__(self, raw: Tokenizer, recipe: Recipe) -> None:
        self.raw = raw
        self.recipe = recipe
        raw.no_padding()
        raw.no_truncation()
        self.vocab_size = raw.get_vocab_size(with_added_tokens=True)
        probe_with = raw.encode("hello", add_special_tokens=True).ids
        probe_without = raw.encode("hello", add_special_tokens=False).ids
        if recipe.eos_token_id is not None:
            # Decoder recipe: nothing before, EOS after. Record what the tokenizer does itself.
            self.tokenizer_appends_eos = bool(probe_with) and probe_with[-1] == recipe.eos_token_id
            self.prefix: list[int] = []
            self.suffix: list[int] = [recipe.eos_token_id]
        else:
            self.tokenizer_appends_eos = False
            start = _find(probe_with, probe_without)
            if start < 0:
                raise ModelError("tokenizer's special tokens wrap the text in an unexpected way")
            self.prefix = probe_with[:start]
            self.suffix = probe_with[start + len(probe_without) :]
        self.content_limit = recipe.max_tokens - len(self.prefix) - len(self.suffix)
        if self.content_limit < 1:
            raise ModelError(f"max_tokens {recipe.max_tokens} leaves no room for content")
        whole = np.asarray(self._raw([_PROBE])[0].offsets, dtype=np.int64).reshape(-1, 2)
        self.cuts_at_breaks = bool(np.array_equal(self._spans(_PROBE, piece_chars=1), whole))

    def _wrap(self, content: Sequence[int], cut: bool = False) -> Encoded:
        n = len(content)
        truncated = cut or n > self.content_limit
        body = list(content[: self.content_limit])
        total = None if cut else n + len(self.prefix) + len(self.suffix)
        return Encoded(self.prefix + body + self.suffix, truncated, total)

    def _raw(self, texts: Sequence[str]) -> list[Encoding]:
        if sum(len(t) for t in texts) <= SMALL_CHARS:
            # encode() holds the GIL, for microseconds here, and needs no thread of the
            # library's shared pool, which a long document may be keeping busy for seconds.
            return [self.raw.encode(t, add_special_tokens=False) for t in texts]
        return self.raw.encode_batch(list(texts), add_special_tokens=False)

    def _leading(self, texts: Sequence[str], limit: int) -> list[tuple[Encoding, bool]]:
        """Each text's content encoding, exact in its first `limit` tokens, and whether the
        text was cut (then it has more than `limit` tokens and only a prefix was tokenised)."""
        out: list[tuple[Encoding, bool] | None] = [None] * len(texts)
        bound = max(MIN_CUT_CHARS, (limit + CUT_MARGIN) * CHARS_PER_TOKEN)
        todo = list(range(len(texts)))
        while todo:
            whole = [i for i in todo if len(texts[i]) <= 2 * bound]
            for i, enc in zip(whole, self._raw([texts[i] for i in whole]), strict=True):
                out[i] = (enc, False)
            cut = [i for i in todo if len(texts[i]) > 2 * bound]
            pieces = [texts[i][: k * bound] for i in cut for k in (1, 2)]
            encs = self._raw(pieces)
            todo = []
            for j, i in enumerate(cut):
                short, longer = encs[2 * j], encs[2 * j + 1]
                ids = short.ids
                if len(ids) >= limit + CUT_MARGIN and ids[:limit] == longer.ids[:limit]:
                    out[i] = (short, True)
                else:
                    todo.append(i)
            bound *= 2
        return [o for o in out if o is not None]

    def work(self, text: str) -> int:
        """About how many characters `encode` tokenises for `text`: all of a short one, two
        prefixes of a long one (usually; a dense script may take another round)."""
        bound = max(MIN_CUT_CHARS, (self.content_limit + CUT_MARGIN) * CHARS_PER_TOKEN)
        return len(text) if len(text) <= 2 * bound else 3 * bound

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Encode texts; inputs over max_tokens are cut to fit (Encoded.truncated says so)."""
        return [self._wrap(enc.ids, cut) for enc, cut in self._leading(texts, self.content_limit)]

    def encode_ids(self, inputs: Sequence[Sequence[int]]) -> list[Encoded]:
        """Wrap caller-supplied token ids (OpenAI's token-array input) the same way as text."""
        out = []
        for i, ids in enumerate(inputs):
            bad = [
                t
                for t in ids
                if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.vocab_size
            ]
            if bad:
                raise InvalidInput(
                    f"input[{i}] has token ids outside 0..{self.vocab_size - 1}: {bad[:5]}. "
                    + TOKEN_IDS_ADVICE,
                    param="input",
                )
            content = list(ids)
            # Callers often send ids that already carry the special tokens: do not double them.
            if self.prefix and content[: len(self.prefix)] == self.prefix:
                content = content[len(self.prefix) :]
            if self.suffix and content[-len(self.suffix) :] == self.suffix:
                content = content[: -len(self.suffix)]
            out.append(self._wrap(content))
        return out

    def offsets(self, text: str) -> np.ndarray:
        """Character span of each content token: int64 [n, 2] (used for token-aware chunking).
        A long text is tokenised in pieces, in parallel, with the same result."""
        if not self.cuts_at_breaks:
            return np.asarray(self._raw([text])[0].offsets, dtype=np.int64).reshape(-1, 2)
        return self._spans(text, SPAN_PIECE_CHARS)

    def _spans(self, text: str, piece_chars: int) -> np.ndarray:
        cuts = [0]
        for m in _BREAK.finditer(text):
            if m.start() - cuts[-1] >= piece_chars:
                cuts.append(m.start())
        cuts.append(len(text))
        parts = []
        # A few pieces per call: parallel, and the library's own per-token objects for only
        # that much text at a time.
        for g in range(0, len(cuts) - 1, SPAN_PIECES_PER_CALL):
            ends = cuts[g + 1 : g + 1 + SPAN_PIECES_PER_CALL]
            starts = cuts[g : g + len(ends)]
            pieces = [text[a:b] for a, b in zip(starts, ends, strict=True)]
            for start, enc in zip(starts, self._raw(pieces), strict=True):
                parts.append(np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2) + start)
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    def describe(self, text: str, *, add_special_tokens: bool = True) -> list[Token]:
        """The tokens of `text` with their character spans, wrapped in the special tokens the
        recipe adds when `add_special_tokens`."""
        enc = self._raw([text])[0]
        content = [
            Token(i, text[a:b], False, a, b) for i, (a, b) in zip(enc.ids, enc.offsets, strict=True)
        ]
        if not add_special_tokens:
            return content

        def special(ids: list[int]) -> list[Token]:
            return [Token(i, self.raw.id_to_token(i) or "", True, None, None) for i in ids]

        return [*special(self.prefix), *content, *special(self.suffix)]

    def cut(self, texts: Sequence[str], limit: int) -> list[str]:
        """Each text cut after its first `limit` content tokens (unchanged if it has fewer)."""
        out = []
        for text, (enc, _) in zip(texts, self._leading(texts, limit), strict=True):
            offsets = enc.offsets
            out.append(text[: offsets[limit - 1][1]] if len(offsets) > limit else text)
        return out


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1
