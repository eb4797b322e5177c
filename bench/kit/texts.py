"""Deterministic benchmark texts: English-like word sequences of mixed length."""

from __future__ import annotations

import random
import re
from pathlib import Path

from bench.kit.paths import minilm


def words() -> list[str]:
    """20,000 lower-case words of three letters or more, from MiniLM's vocabulary."""
    vocab = Path(minilm()) / "vocab.txt"
    found = [w for w in vocab.read_text(encoding="utf-8").split() if re.fullmatch(r"[a-z]{3,}", w)]
    return found[:20000]


def mixed_texts(
    n: int = 1000, *, min_words: int = 5, max_words: int = 300, seed: int = 0
) -> list[str]:
    rng = random.Random(seed)
    vocabulary = words()
    return [
        " ".join(rng.choices(vocabulary, k=rng.randint(min_words, max_words))) + "."
        for _ in range(n)
    ]
