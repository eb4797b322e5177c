"""Hybrid retrieval over a collection: the request, the pipeline, and reciprocal-rank fusion.

Pipeline (each stage timed):
  embed     the query, instructed, as an interactive (not bulk) request;
  keyword   the store's keyword candidates (FTS5 BM25 in SQLite), filter applied inside;
  vector    the store's vector candidates (a binary-code scan in SQLite, filter as a scan
            mask), rescored by exact cosine on the float32 vectors;
  fuse      reciprocal-rank fusion (k=60) of the two lists (hybrid);
  rerank    exact cosine of every fused candidate against the query (default in hybrid).
Scores: cosine when reranked or in vector mode, the RRF score in hybrid without rerank, BM25
(higher is better) in keyword mode.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, cast

import numpy as np

from localrank.declare import Choices, Convert, Len, NonBlank, Range, arg, parse, parse_value
from localrank.store import Store
from localrank.store.filters import Filter, Scalar, as_scalar
from localrank.store.records import Collection

MODES = ("hybrid", "vector", "keyword")
RRF_K = 60
MAX_TOP_K = 1000
MAX_QUERY_CHARS = 32_768
MAX_FILTER_KEYS = 32
MAX_FILTER_VALUES = 1024
# Searches per thread and collection that warm a search thread: measured at 1M chunks, one left
# the first real searches ~1.3x slower than the rest, four made them as fast.
WARM_UP_SEARCHES = 4
_WORDS = re.compile(r"\w+")


# A filter's values: metadata scalars (true matches 1, false 0: SQLite has no boolean).
FilterValue = str | int | float | bool
FilterJson = Annotated[
    dict[
        Annotated[str, Len(1, message="filter keys must be non-empty strings")],
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
        "Rerank the fused candidates (default: on for hybrid, off for keyword: no model needed).",
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


def rrf(lists: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: sum of 1 / (k + rank) over the lists each id appears in."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, cid in enumerate(ranked, start=1):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def run_search(
    store: Store,
    collection: Collection,
    req: SearchRequest,
    query_vector: np.ndarray | None,
    timings: dict[str, float],
) -> list[dict[str, Any]]:
    """The synchronous part of a search (call it in a worker thread)."""
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
    if req.mode == "hybrid":
        ranked = rrf([[c for c, _ in keyword], [c for c, _ in vector]])
    elif req.mode == "vector":
        ranked = vector
    else:
        ranked = keyword
    if req.reranked and req.mode != "vector":
        assert query_vector is not None
        t = time.perf_counter()
        missing = [c for c, _ in ranked if c not in cosine]
        cosine.update(store.exact_scores(missing, query_vector))
        ranked = sorted(
            ((c, cosine[c]) for c, _ in ranked if c in cosine), key=lambda kv: (-kv[1], kv[0])
        )
        timings["rerank"] = _ms(t)
    top = ranked[: req.top_k]
    kw_rank = {c: i for i, (c, _) in enumerate(keyword, start=1)}
    chunks = store.fetch_chunks([c for c, _ in top])
    score = dict(top)
    return [
        {
            "document_id": ch.document_id,
            "chunk_id": ch.id,
            "text": ch.text,
            "score": round(float(score[ch.id]), 6),
            "citation": ch.citation(),
            "metadata": ch.metadata,
            "ranks": {"keyword": kw_rank.get(ch.id), "vector_cosine": cosine.get(ch.id)},
        }
        for ch in chunks
    ]


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
