"""The official client libraries (openai, cohere, ollama) against a live `localrank serve`.

One daemon subprocess per module on a free port; its vectors must equal the engine's direct
output within 1e-5 and its rerank orders the engine's cosine order. The last test stops it with
SIGTERM while a request is in flight: the request completes and the process exits 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cohere
import httpx
import numpy as np
import ollama
import openai
import pytest

from localrank.config import load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine

DOCS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "The Eiffel Tower stands in Paris.",
]
QUERY = "What is the capital of France?"
MODEL = "all-minilm-l6-v2"
HEALTH_TIMEOUT = 60.0


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def daemon(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("daemon-home")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LOCALRANK_") and k != "NOTIFY_SOCKET"
    }
    env.update({"LOCALRANK_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"})
    port = free_port()
    log = home / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localrank",
                "serve",
                "--model",
                str(minilm),
                "--backend",
                "cpu",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    d = Daemon(process, port, log)
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while health_status(port) != 200:
            if process.poll() is not None:
                pytest.fail(f"localrank serve exited with {process.returncode}:\n{d.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"/health not 200 within {HEALTH_TIMEOUT}s:\n{d.log_tail()}")
            time.sleep(0.1)
        yield d
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def engine(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    home = tmp_path_factory.mktemp("engine-home")
    e = load_engine(
        load_settings({"model": str(minilm), "backend": "cpu", "home": str(home)}, environ={})
    )
    yield e
    e.close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDKs' httpx honours proxy variables; the daemon is on loopback."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def cosine_order(engine: Engine, query: str, docs: list[str]) -> tuple[list[int], np.ndarray]:
    q = engine.embed([query], query=True).vectors[0]
    scores = (engine.embed(docs).vectors @ q + 1.0) / 2.0
    return sorted(range(len(docs)), key=lambda i: -scores[i]), scores


def test_openai_sdk_default_encoding(daemon: Daemon, engine: Engine) -> None:
    sent: list[dict[str, object]] = []
    http_client = httpx.Client(
        event_hooks={"request": [lambda r: sent.append(json.loads(r.content))]}
    )
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="x", http_client=http_client)
    result = client.embeddings.create(model=MODEL, input=DOCS)
    assert sent[-1].get("encoding_format") == "base64"  # the SDK's default, decoded by it
    want = engine.embed(DOCS)
    got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
    assert np.abs(got - want.vectors).max() < 1e-5
    assert result.usage.prompt_tokens == want.prompt_tokens
    assert result.model == engine.info.display_name
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.embeddings.create(model=MODEL, input=[])
    assert err.value.body is not None


def test_cohere_client_v2_rerank(daemon: Daemon, engine: Engine) -> None:
    client = cohere.ClientV2(api_key="x", base_url=daemon.url)
    result = client.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=3)
    order, scores = cosine_order(engine, QUERY, DOCS)
    assert [r.index for r in result.results] == order[:3]
    got = np.asarray([r.relevance_score for r in result.results])
    assert np.abs(got - scores[order[:3]]).max() < 1e-5
    assert result.meta is not None and result.meta.billed_units is not None
    assert result.meta.billed_units.search_units == 1
    with pytest.raises(cohere.NotFoundError):
        client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)


def test_ollama_client_embed(daemon: Daemon, engine: Engine) -> None:
    client = ollama.Client(host=daemon.url)
    result = client.embed(model=MODEL, input=DOCS)
    want = engine.embed(DOCS)
    assert np.abs(np.asarray(result.embeddings, dtype=np.float32) - want.vectors).max() < 1e-5
    assert result.prompt_eval_count == want.prompt_tokens
    legacy = client.embeddings(model=MODEL, prompt=DOCS[0])
    assert np.abs(np.asarray(legacy.embedding) - want.vectors[0]).max() < 1e-5
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="nomic-embed-text", input="x")
    assert err.value.status_code == 404 and err.value.error == "model 'nomic-embed-text' not found"


def test_sigterm_drains_in_flight_request_and_exits_0(daemon: Daemon) -> None:
    """Runs last: the daemon finishes the request it is serving, then exits 0 within 10 s."""
    texts = [f"sentence number {i} about drains and graceful shutdowns" for i in range(200)]
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.request(
        "POST",
        "/v1/embeddings",
        body=json.dumps({"input": texts}),
        headers={"Content-Type": "application/json"},
    )
    time.sleep(0.2)  # the request is in the daemon's hands
    daemon.process.send_signal(signal.SIGTERM)
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200 and len(body["data"]) == len(texts)
    assert daemon.process.wait(10) == 0, daemon.log_tail()
