"""Retrieval quality on labelled query sets: nDCG@10, MRR@10, recall@5 and recall@100 per search
configuration (keyword, vector, hybrid fused by rank, hybrid + cosine, which is the default,
and hybrid + cross-encoder when a reranker is configured).

Two kinds of set: a BEIR folder, judged at the document level (a document's rank is that of its
best chunk): `corpus.jsonl` ({"_id", "title", "text"}), `queries.jsonl` ({"_id", "text"}),
`qrels/test.tsv` (header, then `query-id  corpus-id  score`); and a known-item set over a folder
of Markdown files, judged by section (`known_items`).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from localrank.collections.documents import DocumentIn
from localrank.collections.known_items import load_known_items
from localrank.collections.search import SearchRequest
from localrank.collections.service import CollectionService
from localrank.errors import InvalidInput

CONFIGS: dict[str, dict[str, Any]] = {
    "keyword": {"mode": "keyword", "rerank": False},
    "vector": {"mode": "vector", "rerank": False},
    "hybrid": {"mode": "hybrid", "rerank": False},
    "hybrid+cosine": {"mode": "hybrid", "rerank": True, "rerank_method": "cosine"},
}
# With a cross-encoder: hybrid retrieval, its top candidates rescored by the reranker.
CROSS_ENCODER = {"mode": "hybrid", "rerank": True, "rerank_method": "cross-encoder"}
METRICS = ("ndcg@10", "mrr@10", "recall@5", "recall@100")


class EvalSet(Protocol):
    """Labelled queries over documents, and how to judge a query's results."""

    @property
    def name(self) -> str: ...

    @property
    def documents(self) -> list[DocumentIn]: ...

    @property
    def queries(self) -> dict[str, str]: ...

    def judge(self, qid: str, results: list[dict[str, Any]]) -> tuple[list[str], dict[str, int]]:
        """(judged items in rank order, without repeats; each relevant item's gain)."""
        ...


@dataclass(frozen=True)
class Dataset:
    """A BEIR dataset in memory: only queries with judgements are kept."""

    name: str
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def documents(self) -> list[DocumentIn]:
        return [
            DocumentIn(doc_id, f"{title}\n\n{text}" if title else text)
            for doc_id, (title, text) in self.corpus.items()
            if text.strip() or title.strip()
        ]

    def judge(self, qid: str, results: list[dict[str, Any]]) -> tuple[list[str], dict[str, int]]:
        ranked: list[str] = []
        for r in results:
            if r["document_id"] not in ranked:
                ranked.append(r["document_id"])
        return ranked, self.qrels[qid]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_beir(folder: Path | str, split: str = "test") -> Dataset:
    """Read a BEIR folder; InvalidInput if a file is missing or malformed."""
    root = Path(folder)
    paths = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv"]
    for p in paths:
        if not p.is_file():
            raise InvalidInput(f"{p} not found: is {root} a BEIR dataset folder?")
    try:
        corpus = {
            str(d["_id"]): (str(d.get("title") or ""), str(d["text"])) for d in _jsonl(paths[0])
        }
        queries = {str(d["_id"]): str(d["text"]) for d in _jsonl(paths[1])}
        qrels: dict[str, dict[str, int]] = {}
        with paths[2].open(encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{root}: malformed BEIR file: {exc}") from exc
    judged = {q: t for q, t in queries.items() if q in qrels}
    return Dataset(root.name, corpus, judged, qrels)


def ndcg_at_k(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    """Normalised discounted cumulative gain (graded, log2 discount)."""
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: list[str], rels: dict[str, int], k: int = 100) -> float:
    """Fraction of relevant documents found in the top k."""
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document in the top k."""
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def load_set(path: Path | str, docs: Path | str | None = None) -> EvalSet:
    """A BEIR folder, or a known-item set (a .json file; `docs` overrides its folder)."""
    p = Path(path)
    if p.is_file():
        return load_known_items(p, docs)
    if docs is not None:
        raise InvalidInput(f"--docs is for a known-item set (a .json file), not {p}")
    return load_beir(p)


async def index_set(service: CollectionService, dataset: EvalSet, collection: str) -> int:
    """(Re)create `collection` holding the set's documents; returns the chunk count."""
    existing = {c["name"] for c in await service.list_collections()}
    if collection in existing:
        await service.delete_collection(collection)
    await service.create_collection(collection)
    docs = dataset.documents
    chunks = 0
    for s in range(0, len(docs), 256):
        chunks += int((await service.upsert(collection, docs[s : s + 256]))["chunks"])
    return chunks


def configurations(service: CollectionService) -> dict[str, dict[str, Any]]:
    """The configurations to measure: CONFIGS, and hybrid + cross-encoder with a reranker."""
    configs = dict(CONFIGS)
    if service.get_reranker() is not None:
        configs["hybrid+cross-encoder"] = CROSS_ENCODER
    return configs


async def evaluate(
    service: CollectionService, dataset: EvalSet, collection: str, *, depth: int = 100
) -> dict[str, dict[str, float]]:
    """Metrics per configuration (`configurations`) over the already indexed `collection`."""
    report: dict[str, dict[str, float]] = {}
    for name, config in configurations(service).items():
        totals = dict.fromkeys(METRICS, 0.0)
        start = time.perf_counter()
        for qid, text in dataset.queries.items():
            req = SearchRequest(collection, text, top_k=depth, **config)
            out = await service.search(req)
            ranked, rels = dataset.judge(qid, out["results"])
            totals["ndcg@10"] += ndcg_at_k(ranked, rels, 10)
            totals["mrr@10"] += mrr_at_k(ranked, rels, 10)
            totals["recall@5"] += recall_at_k(ranked, rels, 5)
            totals["recall@100"] += recall_at_k(ranked, rels, 100)
        n = max(1, len(dataset.queries))
        metrics = {k: round(v / n, 4) for k, v in totals.items()}
        metrics["ms_per_query"] = round((time.perf_counter() - start) * 1000 / n, 2)
        report[name] = metrics
    return report
