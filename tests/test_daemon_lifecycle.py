"""A real `localrank serve` process: READY=1 to systemd, and SIGTERM drains in-flight work."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


@pytest.fixture
def notify_socket(tmp_path: Path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    yield sock, path
    sock.close()


def test_ready_notification_and_sigterm_drain(
    minilm: Path, tmp_path: Path, notify_socket: tuple[socket.socket, Path]
) -> None:
    sock, sock_path = notify_socket
    port = free_port()
    env = {**os.environ, "LOCALRANK_HOME": str(tmp_path / "home"), "NOTIFY_SOCKET": str(sock_path)}
    proc = subprocess.Popen(
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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        messages = sock.recv(4096).decode()
        assert "READY=1" in messages
        status, health = get(f"{base}/health")
        assert status == 200 and health["status"] == "ok"

        # A request big enough to still be running when SIGTERM arrives.
        texts = [f"document {i} " + "lorem ipsum dolor sit amet " * 45 for i in range(48)]
        result: dict = {}

        def call() -> None:
            result["status"], result["body"] = post(f"{base}/v1/embeddings", {"input": texts})

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.4)
        assert t.is_alive(), "the request finished before SIGTERM: make it bigger"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        elapsed = time.monotonic() - sent
        t.join(timeout=5)
        assert code == 0
        assert elapsed < 10
        assert result["status"] == 200  # the in-flight request was finished, not dropped
        assert len(result["body"]["data"]) == len(texts)
        assert "STOPPING=1" in sock.recv(4096).decode()
        with pytest.raises(urllib.error.URLError):
            get(f"{base}/health", timeout=2)  # no longer listening
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        output = proc.stdout.read().decode() if proc.stdout else ""
        print(output)


def test_explicit_missing_model_exits_with_reason(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "localrank",
            "serve",
            "--model",
            str(tmp_path / "missing"),
            "--port",
            str(free_port()),
        ],
        env={**os.environ, "LOCALRANK_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr


# The daemon as `localrank serve` runs it (`asyncio.run(serve(settings))`), with a model loader
# stuck in I/O: it opens a FIFO no one writes, as a read from a hung network mount would hang.
STUCK_DAEMON = """
import asyncio, sys
from localrank.config import load_settings
from localrank.logs import setup_logging
from localrank.serve.run import serve

def stuck_loader(settings):
    with open(sys.argv[3], "rb") as f:
        f.read()
    raise AssertionError("the FIFO was opened")

settings = load_settings({"home": sys.argv[1], "port": int(sys.argv[2])}, environ={})
setup_logging(settings)
sys.exit(asyncio.run(serve(settings, loader=stuck_loader)))
"""


def test_sigterm_exits_within_10_s_with_a_thread_stuck_in_io(tmp_path: Path) -> None:
    """Issue 20, reproduction 2: after SIGTERM the daemon logged "stopped" and was still alive
    minutes later, waiting for a worker thread blocked reading a FIFO."""
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_DAEMON, str(tmp_path / "home"), str(port), str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # listening (503 while "loading": the loader never returns)
            assert time.monotonic() < deadline and proc.poll() is None, "never listened"
            try:
                status, _ = get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        assert status == 503
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=12)
        elapsed = time.monotonic() - sent
        assert proc.poll() is not None and elapsed < 10, f"alive {elapsed:.1f} s after SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):  # let the stuck reader of a failed run go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "threads still busy" in output, output[-3000:]
