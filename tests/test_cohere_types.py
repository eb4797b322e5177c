"""Cohere embed with each embedding type, through the cohere SDK (ClientV2 and the v1 Client)
against the real app with all-MiniLM-L6-v2: every type equals what its definition makes of the
engine's float vectors (serve/dialects/embedding_types.py), written out here independently."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import cohere
import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from localrank.config import Settings, load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine
from localrank.serve.app import make_app
from localrank.serve.state import STATE_KEY

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOCS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France.",
    "Bananas are yellow.",
]
QUERY = "What is the capital of France?"
TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


@pytest.fixture(scope="module")
def settings(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("home")
    return load_settings({"model": str(minilm), "backend": "cpu", "home": str(home)}, environ={})


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[Engine]:
    e = load_engine(settings)
    yield e
    e.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(settings: Settings) -> AsyncIterator[TestClient]:
    app = make_app(settings)
    async with TestClient(TestServer(app)) as c:
        await app[STATE_KEY].ready.wait()
        assert app[STATE_KEY].models is not None, app[STATE_KEY].load_error
        yield c


def expected(floats: np.ndarray, kind: str) -> list[list[int]]:
    """The definitions, element by element."""
    out = []
    for v in floats.astype(np.float64):
        if kind in ("int8", "uint8"):
            peak = max(abs(x) for x in v)
            q = [int(round(x * 127 / peak)) for x in v]
            out.append(q if kind == "int8" else [x + 128 for x in q])
        else:
            bits = [1 if x > 0 else 0 for x in v]
            packed = [
                sum(bit << (7 - j) for j, bit in enumerate(bits[i : i + 8]))
                for i in range(0, len(bits), 8)
            ]
            out.append(packed if kind == "ubinary" else [b - 128 for b in packed])
    return out


def cosines(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return a @ a.T


async def test_client_v2_every_type(server: TestClient, engine: Engine) -> None:
    client = cohere.AsyncClientV2(api_key="x", base_url=str(server.make_url("")))
    result = await client.embed(
        model="default", texts=DOCS, input_type="search_document", embedding_types=TYPES
    )
    floats = engine.embed(DOCS).vectors
    e = result.embeddings
    np.testing.assert_allclose(np.asarray(e.float_, dtype=np.float32), floats, atol=1e-5)
    decoded = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in e.base64 or []])
    np.testing.assert_allclose(decoded, floats, atol=1e-5)
    # Recomputed from the floats the server sent (equal to the engine's within 1e-5; a last-bit
    # difference could move a rounding), each type matches exactly.
    sent = np.asarray(e.float_, dtype=np.float32)
    for kind in ("int8", "uint8", "binary", "ubinary"):
        assert getattr(e, kind) == expected(sent, kind), kind
    assert np.asarray(e.int8).min() >= -128 and np.asarray(e.uint8).max() <= 255
    assert np.asarray(e.binary).shape == (len(DOCS), floats.shape[1] // 8)
    # What the types are for: int8 keeps the cosines; binary's Hamming distance follows them.
    np.testing.assert_allclose(cosines(np.asarray(e.int8)), cosines(floats), atol=2e-3)
    bits = np.unpackbits(np.asarray(e.ubinary, dtype=np.uint8), axis=1)
    assert np.array_equal(bits.astype(bool), floats > 0)


async def test_client_v2_query_dimensions_and_one_type(server: TestClient, engine: Engine) -> None:
    client = cohere.AsyncClientV2(api_key="x", base_url=str(server.make_url("")))
    result = await client.embed(
        model="default",
        texts=[QUERY],
        input_type="search_query",
        embedding_types=["ubinary"],
        output_dimension=128,
    )
    assert result.embeddings.float_ is None and result.embeddings.int8 is None
    q = engine.embed([QUERY], query=True, dimensions=128).vectors
    assert result.embeddings.ubinary == expected(q, "ubinary")


async def test_client_v1_embedding_types(server: TestClient, engine: Engine) -> None:
    client = cohere.AsyncClient(api_key="x", base_url=str(server.make_url("")))
    result = await client.embed(
        texts=DOCS,
        model="default",
        input_type="search_document",
        embedding_types=["int8", "binary", "float"],
    )
    assert result.response_type == "embeddings_by_type"
    sent = np.asarray(result.embeddings.float_, dtype=np.float32)
    np.testing.assert_allclose(sent, engine.embed(DOCS).vectors, atol=1e-5)
    assert result.embeddings.int8 == expected(sent, "int8")
    assert result.embeddings.binary == expected(sent, "binary")
    plain = await client.embed(texts=DOCS, model="default", input_type="search_document")
    assert plain.response_type == "embeddings_floats"


async def test_unknown_type_is_a_cohere_422(server: TestClient) -> None:
    r = await server.post("/v2/embed", json={"texts": DOCS, "embedding_types": ["int4"]})
    body = await r.json()
    assert r.status == 422 and "ubinary" in body["message"] and "int4" in body["message"]
