"""How a hybrid search orders its candidates: reciprocal-rank fusion of the keyword and vector
lists, and the default, which fuses the embedding model's cosine with the keyword evidence.

A fusion takes the two candidate lists, best first ((chunk id, BM25 score) and (chunk id,
cosine)), and the exact cosine of every candidate in either list; it returns (chunk id, score)
best first. `bench/fusion_variants.py` measures the alternatives that were tried.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

RRF_K = 60
# The cosine's weight in `cosine_fusion`; the keyword evidence has the rest (chosen on the eval
# sets, docs/search.md#how-a-search-runs).
COSINE_WEIGHT = 0.8

Ranked = list[tuple[int, float]]
Fusion = Callable[
    [Sequence[tuple[int, float]], Sequence[tuple[int, float]], Mapping[int, float]], Ranked
]


def rrf(lists: Sequence[Sequence[int]], k: int = RRF_K) -> Ranked:
    """Reciprocal-rank fusion: sum of 1 / (k + rank) over the lists each id appears in."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, cid in enumerate(ranked, start=1):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def rank_fusion(
    keyword: Sequence[tuple[int, float]],
    vector: Sequence[tuple[int, float]],
    cosine: Mapping[int, float],
) -> Ranked:
    """Hybrid without rerank: RRF of the two lists (the cosine is not used)."""
    return rrf([[c for c, _ in keyword], [c for c, _ in vector]])


def cosine_fusion(
    keyword: Sequence[tuple[int, float]],
    vector: Sequence[tuple[int, float]],
    cosine: Mapping[int, float],
    weight: float = COSINE_WEIGHT,
) -> Ranked:
    """The default hybrid order without a cross-encoder: `weight` x cosine + (1 - weight) x
    the BM25 score relative to the best keyword match (0 for a chunk with no keyword match).

    Re-sorting by cosine alone throws the keyword evidence away (the top results were vector
    mode's); this keeps it in proportion to its strength: a chunk that alone names a rare
    query word stays ahead of near-identical chunks that do not, and weak keyword matches
    hardly move the cosine order."""
    best = max((s for _, s in keyword), default=0.0)
    bm25 = {c: s / best for c, s in keyword} if best > 0 else {}
    fused = {c: weight * cos + (1.0 - weight) * bm25.get(c, 0.0) for c, cos in cosine.items()}
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
