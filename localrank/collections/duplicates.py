"""Near-duplicate chunks collapsed into one search result.

Documentation repeats itself: the same option described on every command's page, the same
notice in every chapter. Without this, one paragraph takes several places of a top 5 with the
same score. A chunk is a near-duplicate of a better-ranked one when their texts are equal once
case, punctuation and spacing are ignored, or when their cosines to the query are within
`COSINE_SLACK` and their word trigrams overlap by `MIN_JACCARD` or more (the cosine test keeps
the trigram comparison to the few chunks that could match).
"""

from __future__ import annotations

import bisect
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from localrank.store.records import StoredChunk

# 0.8 merged short documents that differ by one word in thirty, each naming a different thing
# (tests/test_search_fusion.py); at 0.9 one changed word merges paragraphs of 60 words or more.
MIN_JACCARD = 0.9
COSINE_SLACK = 0.02
# ASCII punctuation as spaces: words are what is left (str.translate: ~4x faster than a regex).
_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, " "))


def _words(text: str) -> list[str]:
    return text.casefold().translate(_PUNCTUATION).split()


def _trigrams(words: list[str]) -> frozenset[tuple[str, ...]]:
    if len(words) < 3:
        return frozenset([tuple(words)])
    return frozenset(zip(words, words[1:], words[2:], strict=False))


@dataclass
class Group:
    """A result's chunk and the chunks collapsed into it, in rank order."""

    chunk: StoredChunk
    score: float
    duplicates: list[StoredChunk] = field(default_factory=list)


class Collapser:
    """Groups chunks, fed best first, with the better-ranked chunk they duplicate."""

    def __init__(self, cosine: Mapping[int, float]) -> None:
        self.cosine = cosine
        self.groups: list[Group] = []
        self._by_text: dict[str, Group] = {}
        # (cosine, index into groups, word count), sorted by cosine; trigrams made when needed
        self._by_cosine: list[tuple[float, int, int]] = []
        self._words: dict[int, list[str]] = {}
        self._grams: dict[int, frozenset[tuple[str, ...]]] = {}

    def add(self, chunk: StoredChunk, score: float) -> None:
        words = _words(chunk.text)
        key = " ".join(words)
        group = self._by_text.get(key) if key else None
        cos = self.cosine.get(chunk.id)
        if group is None and cos is not None and words:
            group = self._similar(cos, words)
        if group is not None:
            group.duplicates.append(chunk)
            return
        self.groups.append(Group(chunk, score))
        if key:
            self._by_text[key] = self.groups[-1]
        if cos is not None and words:
            index = len(self.groups) - 1
            self._words[index] = words
            bisect.insort(self._by_cosine, (cos, index, len(words)))

    def _similar(self, cos: float, words: list[str]) -> Group | None:
        lo = bisect.bisect_left(self._by_cosine, (cos - COSINE_SLACK,))
        grams: frozenset[tuple[str, ...]] | None = None
        for other_cos, index, count in self._by_cosine[lo:]:
            if other_cos > cos + COSINE_SLACK:
                break
            # Jaccard >= MIN_JACCARD needs lengths within that ratio: most pairs stop here.
            if min(count, len(words)) < MIN_JACCARD * max(count, len(words)):
                continue
            grams = grams or _trigrams(words)
            other = self._grams.get(index)
            if other is None:
                other = self._grams[index] = _trigrams(self._words[index])
            if len(grams & other) >= MIN_JACCARD * len(grams | other):
                return self.groups[index]
        return None
