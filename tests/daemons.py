"""A real `localrank serve` process for tests that need one (the CLI's daemon path, the MCP
server): started on a free loopback port with its own LOCALRANK_HOME, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # where `localrank` is installed (the venv's bin)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    url: str, body: Any = None, *, method: str | None = None, timeout: float = 60
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@dataclass
class LiveDaemon:
    home: Path
    port: int
    model: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client configured for this daemon (as a user's shell is)."""
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "LOCALRANK_HOME": str(self.home),
            "LOCALRANK_PORT": str(self.port),
            "LOCALRANK_MODEL": str(self.model),
            "LOCALRANK_BACKEND": "cpu",
            **self.extra_env,
        }

    def start(self, timeout: float = 180) -> LiveDaemon:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localrank", "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                status, _ = request(f"{self.url}/health", timeout=2)
            except OSError:
                status = 0
            if status == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("daemon did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a counter's samples whose labels include `labels`."""
        status, text = request(f"{self.url}/metrics")
        assert status == 200
        total = 0.0
        for line in str(text).splitlines():
            if not line.startswith(name):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, job = request(f"{self.url}/v1/jobs/{job_id}")
            if job["state"] in ("done", "failed"):
                return dict(job)
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish")


def write_notes(folder: Path) -> dict[str, str]:
    """A small notes folder with distinct topics (real semantics for MiniLM)."""
    files = {
        "bread.md": "# Bread\n\nSourdough bread needs flour, water, salt\nand a lively starter.\n"
        "Bake it in a hot oven.\n",
        "volcano.md": "# Volcanoes\n\nA volcano erupts molten lava and ash.\nMagma rises "
        "from the mantle.\n",
        "tides.md": "# Tides\n\nThe moon's gravity pulls the oceans,\nwhich makes the tides "
        "rise and fall twice a day.\n",
        "sub/python.md": "# Python\n\nUse a virtual environment for each project.\n"
        "pip installs packages into it.\n",
    }
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files
