"""Hybrid retrieval over a collection: the request and the pipeline.

Pipeline (each stage timed):
  embed     the query, instructed, as an interactive (not bulk) request;
  keyword   the store's keyword candidates (FTS5 BM25 in SQLite), filter applied inside;
  vector    the store's vector candidates (a binary-code scan in SQLite, filter as a scan
            mask), rescored by exact cosine on the float32 vectors;
  rerank    (default in hybrid) exact cosine of every candidate against the query, fused
            with the keyword evidence (`fusion.cosine_fusion`); without rerank, reciprocal-rank
            fusion (k=60) of the two lists;
  collapse  near-duplicate chunks into the best-ranked one, which lists the others
            (`duplicates`).
Scores: the cosine fusion when reranked, cosine in vector mode, the RRF score in hybrid without
rerank, BM25 (higher is better) in keyword mode.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, cast

import numpy as np

from localrank.collections.duplicates import Collapser, Group
from localrank.collections.fusion import Fusion, cosine_fusion, rank_fusion
from localrank.declare import Choices, Convert, Len, NonBlank, Range, arg, parse, parse_value
from localrank.store import Store
from localrank.store.filters import Filter, Scalar, as_scalar
from localrank.store.records import Collection, StoredText

MODES = ("hybrid", "vector", "keyword")
MAX_TOP_K = 1000
MAX_QUERY_CHARS = 32_768
MAX_FILTER_KEYS = 32
MAX_FILTER_VALUES = 1024
# Searches per thread and collection that warm a search thread: measured at 1M chunks, one left
# the first real searches ~1.3x slower than the rest, four made them as fast.
WARM_UP_SEARCHES = 4
# Candidates read at least, when collapsing near-duplicates: a small top_k still lists where
# else its results appear.
COLLAPSE_WINDOW = 50
_WORDS = re.compile(r"\w+")


# A filter's values: metadata scalars (true matches 1, false 0: SQLite has no boolean).
FilterValue = StoredText | int | float | bool
FilterJson = Annotated[
    dict[
        Annotated[StoredText, Len(1, message="filter keys must be non-empty strings")],
        FilterValue | Annotated[list[FilterValue], Len(1, MAX_FILTER_VALUES)],
    ],
    Len(max=MAX_FILTER_KEYS, message=f"filter has more than {MAX_FILTER_KEYS} keys"),
]


def to_filter(raw: Mapping[str, Any]) -> Filter | None:
    """A validated `filter` as the store's Filter; {} means no filter."""
    terms = tuple(
        (
            key,
            tuple(
                cast(Scalar, as_scalar(v)) for v in (value if isinstance(value, list) else [value])
            ),
        )
        for key, value in raw.items()
    )
    return Filter(terms) if terms else None


def parse_filter(raw: Any) -> Filter | None:
    """A `filter` checked as a search declares it; None or {} means no filter."""
    return None if raw is None else to_filter(parse_value(FilterJson, raw, "filter"))


@dataclass(frozen=True)
class SearchRequest:
    """A search (the body of `POST /v1/search`, field names as in the API)."""

    collection: str = arg(
        "Collection name.", Len(1, message="collection must be a non-empty string")
    )
    query: str = arg(
        "The query.",
        NonBlank("query must be a non-empty string"),
        Len(max=MAX_QUERY_CHARS, message=f"query is longer than {MAX_QUERY_CHARS} characters"),
    )
    top_k: int = arg("How many results.", Range(1, MAX_TOP_K), default=10)
    mode: str = arg("hybrid, vector or keyword.", Choices(MODES), default="hybrid")
    rerank: bool | None = arg(
        "Score the candidates with the model: their cosine fused with the keyword evidence, or "
        "the cross-encoder when one is configured (default: on for hybrid; off: rank fusion; "
        "off for keyword: no model needed).",
        default=None,
    )
    filter: Filter | None = arg(
        "Metadata key -> value or list of values (any of them); every key must match.",
        Convert(to_filter),
        default=None,
        wire_type=FilterJson | None,
    )
    instruction: str | None = arg("A task instruction for instruction-tuned models.", default=None)
    candidates: int | None = arg(
        "Binary-scan candidates (default: max(400, 40 x top_k)).",
        Range(1, 100_000),
        default=None,
    )
    # How the rerank stage scores: None (the cross-encoder when the daemon has one, else the
    # cosine), "cosine", or "cross-encoder" (an error without one). Not on the wire.
    rerank_method: str | None = arg(internal=True, default=None)

    @classmethod
    def from_json(cls, body: Any) -> SearchRequest:
        """Validate a `POST /v1/search` body; raises InvalidInput."""
        return parse(cls, body)

    @property
    def reranked(self) -> bool:
        return self.mode == "hybrid" if self.rerank is None else self.rerank

    @property
    def needs_embedding(self) -> bool:
        return self.mode != "keyword" or self.reranked


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def run_search(
    store: Store,
    collection: Collection,
    req: SearchRequest,
    query_vector: np.ndarray | None,
    timings: dict[str, float],
    fusion: Fusion = cosine_fusion,
) -> list[dict[str, Any]]:
    """The synchronous part of a search (call it in a worker thread). `fusion` orders a
    reranked hybrid search's candidates (a parameter for `bench/fusion_variants.py`)."""
    pool = max(50, 4 * req.top_k)
    keyword: list[tuple[int, float]] = []
    vector: list[tuple[int, float]] = []
    if req.mode in ("hybrid", "keyword"):
        t = time.perf_counter()
        keyword = store.keyword_candidates(collection, req.query, pool, req.filter)
        timings["keyword"] = _ms(t)
    if req.mode in ("hybrid", "vector"):
        assert query_vector is not None
        t = time.perf_counter()
        n_cand = req.candidates or max(400, 40 * req.top_k)
        vector = store.vector_candidates(
            collection, query_vector, pool, candidates=n_cand, flt=req.filter
        )
        timings["vector"] = _ms(t)
    cosine = dict(vector)
    if req.mode == "vector":
        ranked = vector
    elif req.reranked:
        assert query_vector is not None
        t = time.perf_counter()
        missing = [c for c, _ in keyword if c not in cosine]
        cosine.update(store.exact_scores(missing, query_vector))
        candidates = keyword if req.mode == "keyword" else [*keyword, *vector]
        ranked = fusion(keyword, vector, {c: cosine[c] for c, _ in candidates if c in cosine})
        timings["rerank"] = _ms(t)
    elif req.mode == "hybrid":
        ranked = rank_fusion(keyword, vector, cosine)
    else:
        ranked = keyword
    groups = _top_groups(store, ranked, cosine, req.top_k)
    kw_rank = {c: i for i, (c, _) in enumerate(keyword, start=1)}
    vec_rank = {c: i for i, (c, _) in enumerate(vector, start=1)}
    return [
        {
            "document_id": g.chunk.document_id,
            "chunk_id": g.chunk.id,
            "text": g.chunk.text,
            "score": round(float(g.score), 6),
            "citation": g.chunk.citation(),
            "metadata": g.chunk.metadata,
            "ranks": {
                "keyword": kw_rank.get(g.chunk.id),
                "vector": vec_rank.get(g.chunk.id),
                "vector_cosine": cosine.get(g.chunk.id),
            },
            "also_in": [{"chunk_id": d.id, **d.citation()} for d in g.duplicates],
        }
        for g in groups
    ]


def _top_groups(
    store: Store, ranked: Sequence[tuple[int, float]], cosine: Mapping[int, float], top_k: int
) -> list[Group]:
    """The best `top_k` results of `ranked`, near-duplicates collapsed into the result they
    repeat: chunks are read a window at a time until `top_k` distinct ones are found (so a
    result lists the duplicates among the candidates read: at least COLLAPSE_WINDOW)."""
    collapser = Collapser(cosine)
    start = 0
    while start < len(ranked) and len(collapser.groups) < top_k:
        window = ranked[start : start + max(2 * top_k, COLLAPSE_WINDOW)]
        score = dict(window)
        for chunk in store.fetch_chunks([c for c, _ in window]):
            collapser.add(chunk, score[chunk.id])
        start += len(window)
    return collapser.groups[:top_k]


def warm_up(store: Store, collection: Collection, searches: int = WARM_UP_SEARCHES) -> None:
    """Throwaway hybrid searches, so the calling thread has done what every search does (see
    `search_threads`): random unit queries, with words from the collection's first documents as
    the keyword query (a word no chunk contains would leave the keyword stage cold)."""
    rng = np.random.default_rng(collection.id)
    texts = [
        chunk.text
        for doc in store.list_documents(collection, limit=searches)
        for chunk in store.get_document(collection, doc.doc_id)[1][:1]
    ]
    for i in range(searches):
        words = _WORDS.findall(texts[i % len(texts)])[:8] if texts else []
        query = rng.standard_normal(collection.dim).astype(np.float32)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        request = SearchRequest(collection.name, " ".join(words) or "warm", mode="hybrid")
        run_search(store, collection, request, query, {})
