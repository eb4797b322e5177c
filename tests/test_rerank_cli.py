"""`localrank rerank --reranker` and `localrank eval --reranker` in this process: the
cross-encoder's scores (checked against CrossEncoder), and eval's hybrid + cross-encoder row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_embedder import HashEmbedder
from reference import cross_encoder_reference

from localrank.cli import main
from localrank.cli.common import Runtime

FIXTURE = Path(__file__).parent / "fixtures" / "beir_tiny"
# In-process: never the daemon some other process may run on the default port.
FAKE = Runtime(embedder_factory=lambda settings: HashEmbedder(), find_daemon=lambda settings: None)
QUERY = "how do I reset my password"
DOCS = [
    "The quarterly report shows revenue grew.",
    "Open the sign-in page, choose Forgot password.",
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOCALRANK_DTYPE", "float32")
    return tmp_path


def test_rerank_command_with_a_cross_encoder(home, tiny_cross_encoder, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["rerank", "--reranker", str(tiny_cross_encoder), "--json", QUERY, *DOCS], FAKE)
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["method"] == "cross-encoder"
    expected = cross_encoder_reference(tiny_cross_encoder, [(QUERY, d) for d in DOCS])
    got = {r["index"]: r["score"] for r in out["results"]}
    assert np.abs(np.array([got[0], got[1]]) - expected).max() < 1e-4


def test_eval_adds_a_hybrid_cross_encoder_row(home, tiny_cross_encoder, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["eval", str(FIXTURE), "--reranker", str(tiny_cross_encoder), "--json"], FAKE)
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["reranker"] == str(tiny_cross_encoder)
    assert out["default"] == "hybrid+cross-encoder"
    metrics = out["sets"][0]["metrics"]
    assert set(metrics) == {
        "keyword",
        "vector",
        "hybrid",
        "hybrid+cosine",
        "hybrid+cross-encoder",
    }
    row = metrics["hybrid+cross-encoder"]
    assert 0.0 <= row["ndcg@10"] <= 1.0 and row["ms_per_query"] > 0
