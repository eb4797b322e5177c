"""First run: the default model is downloaded from the hub when it answers, with progress in the
log and in /health, then served; the offline fallback only when the download cannot happen
(offline, hub refused, unreachable), saying why. A named model is downloaded the same way or
fails with the reason. Against a local stand-in for the hub (tests/hub_standin.py), never the
network.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hub_standin import SHA, Hub, running, unreachable_endpoint

from localrank.config import DEFAULT_MODEL
from localrank.engine.download import DownloadError, download_snapshot
from localrank.engine.progress import LoadProgress
from localrank.engine.resolve import FALLBACK_MODEL, resolve_model
from localrank.errors import ModelError

MLX_REPO = "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ"


@pytest.fixture
def repo(tiny_qwen3: Path, tmp_path: Path) -> Path:
    """The tiny Qwen3 as a hub repository, with files a download must leave alone."""
    d = tmp_path / "repo"
    shutil.copytree(tiny_qwen3, d)
    (d / "pytorch_model.bin").write_bytes(b"a pickle: never downloaded")
    (d / "onnx").mkdir()
    (d / "onnx" / "model.onnx").write_bytes(b"an export: never downloaded")
    (d / "README.md").write_text("# tiny")
    return d


def test_download_fetches_the_model_files_with_progress(repo: Path, tmp_path: Path) -> None:
    hub = Hub({DEFAULT_MODEL: repo}, bytes_per_s=40e6)  # ~1 s for the 39 MB of weights
    progress = LoadProgress()
    seen: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(progress.snapshot())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    with running(hub):
        watcher.start()
        try:
            path = download_snapshot(
                DEFAULT_MODEL, progress=progress, endpoint=hub.url, cache_dir=tmp_path / "cache"
            )
        finally:
            done.set()
            watcher.join()
    assert path.name == SHA and path.is_relative_to(tmp_path / "cache")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"):
        assert (path / name).read_bytes() == (repo / name).read_bytes(), name
    assert not (path / "pytorch_model.bin").exists()
    assert not (path / "onnx").exists() and not (path / "README.md").exists()
    total = sum(
        f.stat().st_size for f in repo.rglob("*") if f.suffix in (".json", ".safetensors", ".txt")
    )
    final = progress.snapshot()["download"]
    assert final == {"bytes_done": total, "bytes_total": total, "percent": 100.0}
    partway = [s["download"]["bytes_done"] for s in seen if "download" in s]
    assert any(0 < d < total for d in partway), "progress never showed a partial download"
    assert partway == sorted(partway)


def test_refused_and_unreachable_hubs_say_why(repo: Path, tmp_path: Path) -> None:
    with running(Hub({DEFAULT_MODEL: repo}, mode="refuse")) as hub:
        with pytest.raises(DownloadError, match="refused Qwen/Qwen3-Embedding-0.6B.*HTTP 401") as e:
            download_snapshot(DEFAULT_MODEL, endpoint=hub.url, cache_dir=tmp_path / "c")
        assert not e.value.hub_down
    with pytest.raises(DownloadError, match="cannot be reached") as e:
        download_snapshot(DEFAULT_MODEL, endpoint=unreachable_endpoint(), cache_dir=tmp_path / "c")
    assert e.value.hub_down


def test_default_model_falls_back_only_when_the_download_cannot_happen(
    repo: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with running(Hub({DEFAULT_MODEL: repo}, mode="refuse")) as hub:
        fb = resolve_model(
            DEFAULT_MODEL,
            allow_fallback=True,
            download=partial(download_snapshot, endpoint=hub.url, cache_dir=cache),
        )
    assert fb.model_id == FALLBACK_MODEL
    assert fb.fallback_reason is not None
    assert "refused" in fb.fallback_reason and DEFAULT_MODEL in fb.fallback_reason
    offline = resolve_model(
        DEFAULT_MODEL,
        allow_fallback=True,
        download=partial(download_snapshot, endpoint=unreachable_endpoint(), cache_dir=cache),
    )
    assert offline.model_id == FALLBACK_MODEL
    assert offline.fallback_reason and "cannot be reached" in offline.fallback_reason
    with running(Hub({DEFAULT_MODEL: repo})) as hub:
        got = resolve_model(
            DEFAULT_MODEL,
            allow_fallback=True,
            download=partial(download_snapshot, endpoint=hub.url, cache_dir=cache),
        )
    assert (got.model_id, got.revision, got.fallback_reason) == (DEFAULT_MODEL, SHA[:12], None)
    assert (got.path / "model.safetensors").is_file()


def test_a_named_model_downloads_or_fails_with_the_reason(repo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with running(Hub({DEFAULT_MODEL: repo}, missing={"Qwen/Qwen3-Embedding-4B"})) as hub:
        download = partial(download_snapshot, endpoint=hub.url, cache_dir=cache)
        with pytest.raises(ModelError, match=r"cannot be downloaded \(.*refused.*HTTP 404"):
            resolve_model("qwen3-4b", allow_fallback=False, download=download)
        named = resolve_model("qwen3-0.6b", allow_fallback=False, download=download)
    assert named.model_id == DEFAULT_MODEL and named.fallback_reason is None
    with pytest.raises(ModelError, match="cannot be reached"):
        resolve_model(
            "Qwen/Qwen3-Embedding-8B",
            allow_fallback=False,
            download=partial(download_snapshot, endpoint=unreachable_endpoint(), cache_dir=cache),
        )


def test_apple_gpus_ask_for_the_mlx_weights_first(repo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    hub = Hub({DEFAULT_MODEL: repo, MLX_REPO: repo})
    with running(hub):
        download = partial(download_snapshot, endpoint=hub.url, cache_dir=cache)
        got = resolve_model(DEFAULT_MODEL, allow_fallback=True, prefer_mlx=True, download=download)
        assert got.model_id == MLX_REPO
        # The MLX repository refused: the model's own weights instead.
        hub.missing.add(MLX_REPO)
        fresh = partial(download_snapshot, endpoint=hub.url, cache_dir=tmp_path / "other")
        got = resolve_model(DEFAULT_MODEL, allow_fallback=True, prefer_mlx=True, download=fresh)
    assert got.model_id == DEFAULT_MODEL
    assert any(MLX_REPO in r for r in hub.requests)


# ----------------------------------------------------------------------------- the daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


class Serve:
    """`localrank serve` with the default model, against a given hub endpoint."""

    def __init__(self, tmp_path: Path, endpoint: str, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCALRANK_", "HF_"))}
        env.update(
            HF_ENDPOINT=endpoint,
            HF_HOME=str(tmp_path / "hf"),
            LOCALRANK_HOME=str(tmp_path / "home"),
        )
        self.log = tmp_path / f"serve-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "localrank", "serve", "--port", str(self.port), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def health_until_ready(self, timeout: float = 240) -> list[tuple[int, dict]]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = get(self.base + "/health")
            if status:
                seen.append((status, body))
            if status == 200 or self.proc.poll() is not None:
                return seen
            time.sleep(0.05)
        raise AssertionError("not ready in time:\n" + self.log.read_text()[-3000:])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        return self.log.read_text()


def test_first_run_downloads_the_default_model_then_serves_it(repo: Path, tmp_path: Path) -> None:
    hub = Hub({DEFAULT_MODEL: repo}, bytes_per_s=20e6)  # ~2 s: long enough to watch
    with running(hub):
        serve = Serve(tmp_path, hub.url)
        try:
            seen = serve.health_until_ready()
            info = get(serve.base + "/info")[1]
        finally:
            log = serve.stop()
    status, body = seen[-1]
    assert status == 200, log[-3000:]
    assert body["model_id"] == DEFAULT_MODEL and body["fallback"] is False
    assert body["revision"] == SHA[:12]
    assert body["dtype"] in ("bfloat16", "float32", "int8") and body["dtype_reason"]
    assert info["model_dtype"] == body["dtype"] and info["dtype_reason"] == body["dtype_reason"]
    downloading = [b for s, b in seen if s == 503 and b["status"] == "downloading"]
    assert downloading, [b for _, b in seen]
    progress = [b["loading"]["download"] for b in downloading]
    assert progress[-1]["bytes_total"] > 39_000_000
    assert any(0 < p["bytes_done"] < p["bytes_total"] for p in progress)
    assert all(b["loading"]["model"] == DEFAULT_MODEL for b in downloading)
    assert "downloading Qwen/Qwen3-Embedding-0.6B" in log and "downloaded Qwen" in log
    assert f"dtype {body['dtype']}" in log  # the startup log says which dtype, and why

    # The next start finds it in the cache: no hub needed, no fallback.
    serve = Serve(tmp_path, unreachable_endpoint())
    try:
        status, body = serve.health_until_ready()[-1]
    finally:
        serve.stop()
    assert status == 200 and body["model_id"] == DEFAULT_MODEL and body["fallback"] is False


def test_a_refusing_hub_means_the_fallback_saying_why(repo: Path, tmp_path: Path) -> None:
    with running(Hub({DEFAULT_MODEL: repo}, mode="refuse")) as hub:
        serve = Serve(tmp_path, hub.url)
        try:
            status, body = serve.health_until_ready()[-1]
        finally:
            log = serve.stop()
    assert status == 200, log[-3000:]
    assert body["model_id"] == FALLBACK_MODEL and body["fallback"] is True
    assert "refused" in body["fallback_reason"] and "HTTP 401" in body["fallback_reason"]
    assert "FALLBACK MODEL" in log


def test_a_named_model_the_hub_does_not_have_fails_with_the_reason(
    repo: Path, tmp_path: Path
) -> None:
    with running(Hub({DEFAULT_MODEL: repo})) as hub:
        serve = Serve(tmp_path, hub.url, "--model", "Qwen/Qwen3-Embedding-4B")
        try:
            seen = serve.health_until_ready()
            code = serve.proc.wait(timeout=60)
        finally:
            log = serve.stop()
    assert code != 0
    assert "Qwen/Qwen3-Embedding-4B" in log and "HTTP 404" in log
    errors = [b for s, b in seen if b.get("status") == "error"]
    assert not errors or "HTTP 404" in errors[-1]["error"]


def test_vectors_of_a_downloaded_model_are_the_folders(repo: Path, tmp_path: Path) -> None:
    from localrank.config import load_settings
    from localrank.engine.load import load_engine

    with running(Hub({DEFAULT_MODEL: repo})) as hub:
        path = download_snapshot(DEFAULT_MODEL, endpoint=hub.url, cache_dir=tmp_path / "c")
    settings = {"backend": "cpu", "dtype": "float32"}
    a = load_engine(load_settings({"model": str(path), **settings}, environ={}))
    b = load_engine(load_settings({"model": str(repo), **settings}, environ={}))
    texts = ["hello world", "a longer sentence about downloads"]
    np.testing.assert_array_equal(a.embed(texts).vectors, b.embed(texts).vectors)
