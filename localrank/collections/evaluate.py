"""Retrieval quality on a BEIR-format dataset: nDCG@10, recall@100 and MRR@10 for keyword,
vector, hybrid (RRF) and hybrid+rerank, computed at the document level (a document's rank is
that of its best chunk).

BEIR layout: `corpus.jsonl` ({"_id", "title", "text"}), `queries.jsonl` ({"_id", "text"}),
`qrels/test.tsv` (header, then `query-id  corpus-id  score`).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrank.collections.documents import DocumentIn
from localrank.collections.search import SearchRequest
from localrank.collections.service import CollectionService
from localrank.errors import InvalidInput

CONFIGS: dict[str, dict[str, Any]] = {
    "keyword": {"mode": "keyword", "rerank": False},
    "vector": {"mode": "vector", "rerank": False},
    "hybrid": {"mode": "hybrid", "rerank": False},
    "hybrid+rerank": {"mode": "hybrid", "rerank": True, "rerank_method": "cosine"},
}
# With a cross-encoder: hybrid retrieval, its top candidates rescored by the reranker.
CROSS_ENCODER = {"mode": "hybrid", "rerank": True, "rerank_method": "cross-encoder"}


@dataclass(frozen=True)
class Dataset:
    """A BEIR dataset in memory: only queries with judgements are kept."""

    name: str
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


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


async def index_dataset(service: CollectionService, dataset: Dataset, collection: str) -> int:
    """(Re)create `collection` holding the corpus; returns the chunk count."""
    existing = {c["name"] for c in await service.list_collections()}
    if collection in existing:
        await service.delete_collection(collection)
    await service.create_collection(collection)
    docs = [
        DocumentIn(doc_id, f"{title}\n\n{text}" if title else text)
        for doc_id, (title, text) in dataset.corpus.items()
        if text.strip() or title.strip()
    ]
    chunks = 0
    for s in range(0, len(docs), 256):
        chunks += int((await service.upsert(collection, docs[s : s + 256]))["chunks"])
    return chunks


async def evaluate(
    service: CollectionService, dataset: Dataset, collection: str, *, depth: int = 100
) -> dict[str, dict[str, float]]:
    """Metrics per configuration over the already indexed `collection` (a hybrid +
    cross-encoder row when the service has a reranker)."""
    report: dict[str, dict[str, float]] = {}
    configs = dict(CONFIGS)
    if service.get_reranker() is not None:
        configs["hybrid+cross-encoder"] = CROSS_ENCODER
    for name, config in configs.items():
        totals = {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
        start = time.perf_counter()
        for qid, text in dataset.queries.items():
            req = SearchRequest(collection, text, top_k=depth, **config)
            out = await service.search(req)
            ranked: list[str] = []
            for r in out["results"]:
                if r["document_id"] not in ranked:
                    ranked.append(r["document_id"])
            rels = dataset.qrels[qid]
            totals["ndcg@10"] += ndcg_at_k(ranked, rels, 10)
            totals["recall@100"] += recall_at_k(ranked, rels, 100)
            totals["mrr@10"] += mrr_at_k(ranked, rels, 10)
        n = max(1, len(dataset.queries))
        metrics = {k: round(v / n, 4) for k, v in totals.items()}
        metrics["ms_per_query"] = round((time.perf_counter() - start) * 1000 / n, 2)
        report[name] = metrics
    return report
