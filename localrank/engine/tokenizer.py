"""Text -> model input ids, by the recipe: special tokens, EOS, truncation that is counted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from localrank.engine.types import Recipe
from localrank.errors import InvalidInput, ModelError


@dataclass(frozen=True)
class Encoded:
    """One input ready for the model: its ids (special tokens included) and whether it was cut."""

    ids: list[int]
    truncated: bool
    original_tokens: int


@dataclass(frozen=True)
class Token:
    """One token as TEI's /tokenize shows it: special tokens have no character span."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


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

    def _wrap(self, content: Sequence[int]) -> Encoded:
        n = len(content)
        truncated = n > self.content_limit
        body = list(content[: self.content_limit])
        return Encoded(
            self.prefix + body + self.suffix, truncated, n + len(self.prefix) + len(self.suffix)
        )

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Encode texts; inputs over max_tokens are cut to fit (Encoded.truncated says so)."""
        encodings = self.raw.encode_batch(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids) for e in encodings]

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
                    "Token ids are the served model's tokenizer's; a client that sends OpenAI "
                    "tiktoken ids must send text instead (LangChain: "
                    "check_embedding_ctx_length=False; LibreChat's RAG API: "
                    "RAG_CHECK_EMBEDDING_CTX_LENGTH=false)",
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

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each content token (used for token-aware chunking)."""
        return list(self.raw.encode(text, add_special_tokens=False).offsets)

    def describe(self, text: str, *, add_special_tokens: bool = True) -> list[Token]:
        """The tokens of `text` with their character spans, wrapped in the special tokens the
        recipe adds when `add_special_tokens`."""
        enc = self.raw.encode(text, add_special_tokens=False)
        content = [
            Token(i, text[a:b], False, a, b) for i, (a, b) in zip(enc.ids, enc.offsets, strict=True)
        ]
        if not add_special_tokens:
            return content

        def special(ids: list[int]) -> list[Token]:
            return [Token(i, self.raw.id_to_token(i) or "", True, None, None) for i in ids]

        return [*special(self.prefix), *content, *special(self.suffix)]

    def cut(self, text: str, limit: int) -> str:
        """`text` cut after its first `limit` content tokens (unchanged if it has fewer)."""
        offsets = self.offsets(text)
        return text[: offsets[limit - 1][1]] if len(offsets) > limit else text


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1
