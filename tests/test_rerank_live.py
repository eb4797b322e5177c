"""Done means: `localrank serve --reranker <tiny Qwen3-Reranker folder>` answers `/v2/rerank`
(here through the official cohere SDK) with the cross-encoder's scores, and `/v1/search` with
`rerank: true` uses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cohere
import numpy as np
import pytest
from daemons import LiveDaemon, request, running
from reference import qwen3_reranker_reference

QUERY = "how do I reset my password"
DOCS = [
    "The quarterly report shows revenue grew by twelve percent.",
    "To reset a forgotten password, open the sign-in page and choose Forgot password.",
    "Reset links expire after one hour; ask an administrator if none arrives.",
]


@pytest.fixture(scope="module")
def daemon(
    minilm: Path, tiny_reranker: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveDaemon]:
    home = tmp_path_factory.mktemp("rerank-daemon")
    args = ("--reranker", str(tiny_reranker), "--dtype", "float32")
    with running(home, minilm, *args) as live:
        yield live


def test_cohere_sdk_gets_the_cross_encoder_scores(daemon: LiveDaemon, tiny_reranker: Path):
    client = cohere.ClientV2(api_key="x", base_url=daemon.url)
    result = client.rerank(model="tiny-qwen3-reranker", query=QUERY, documents=DOCS)
    expected = qwen3_reranker_reference(tiny_reranker, [(QUERY, d) for d in DOCS])
    got = {r.index: r.relevance_score for r in result.results}
    assert np.abs(np.array([got[i] for i in range(len(DOCS))]) - expected).max() < 1e-4
    assert [r.index for r in result.results] == list(np.argsort(-expected))


def test_search_with_rerank_uses_the_cross_encoder(daemon: LiveDaemon, tiny_reranker: Path):
    status, _ = request(f"{daemon.url}/v1/collections", {"name": "kb"})
    assert status == 201
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)]
    status, _ = request(f"{daemon.url}/v1/collections/kb/documents", {"documents": docs})
    assert status == 200
    status, body = request(
        f"{daemon.url}/v1/search", {"collection": "kb", "query": QUERY, "rerank": True}
    )
    assert status == 200 and body["rerank_method"] == "cross-encoder"
    texts = [r["text"] for r in body["results"]]
    expected = qwen3_reranker_reference(tiny_reranker, [(QUERY, t) for t in texts])
    assert np.abs(np.array([r["score"] for r in body["results"]]) - expected).max() < 1e-4
    status, health = request(f"{daemon.url}/health")
    assert health["reranker"]["loaded"] is True and health["rerank_method"] == "cross-encoder"
