"""A local stand-in for the Hugging Face hub: the endpoints huggingface_hub's `model_info`,
`snapshot_download` and `hf_hub_download` call (read from huggingface_hub's own source), over
model folders on disk. Point huggingface_hub at it with `endpoint=` (in-process) or
`HF_ENDPOINT` (a subprocess). Tests never touch the network.

  GET  /api/models/{repo}[/revision/{rev}]   model info: sha, siblings (size with ?blobs=true)
  GET  /api/models/{repo}/tree/{rev}          the file list (one page, no Link header)
  HEAD /{repo}/resolve/{rev}/{path}           X-Repo-Commit, ETag / X-Linked-Etag (LFS), size
  GET  /{repo}/resolve/{rev}/{path}           the bytes (Range honoured), optionally throttled

`mode` "refuse" answers every request 401 as the hub does for a private or missing repository;
`missing` lists repositories answered 404 RepoNotFound.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"  # the one commit every repo is at


@dataclass
class Hub:
    repos: dict[str, Path]  # repo id -> model folder
    mode: str = "serve"  # "serve" | "refuse"
    missing: set[str] = field(default_factory=set)
    bytes_per_s: float | None = None  # throttle file bodies (to watch progress)
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {
            p.relative_to(root).as_posix(): p
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }


def _oid(path: Path) -> tuple[str, str]:
    """(git blob sha1, sha256) of a file, as the hub reports them."""
    data = path.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return blob, hashlib.sha256(data).hexdigest()


def _is_lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin"))


API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?P<path>/.*)?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def make_handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def send_json(self, status: int, body: object, headers: dict[str, str] | None = None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def refused(self, repo: str | None) -> bool:
            if hub.mode == "refuse":
                self.send_json(
                    401,
                    {"error": "Invalid username or password."},
                    {"X-Error-Code": "RepoNotFound"},
                )
                return True
            if repo is None or repo in hub.missing or repo not in hub.repos:
                self.send_json(
                    404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                )
                return True
            return False

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            hub.requests.append(f"{self.command} {path}")
            for pattern, handler in ((TREE, self.tree), (API, self.info), (RESOLVE, self.resolve)):
                m = pattern.match(path)
                if m:
                    if not self.refused(m["repo"]):
                        handler(m, url.query)
                    return
            self.refused(None)

        def info(self, m: re.Match[str], query: str) -> None:
            repo = m["repo"]
            siblings = []
            for name, p in hub.files(repo).items():
                blob, sha256 = _oid(p)
                s: dict[str, object] = {"rfilename": name}
                if "blobs=" in query:
                    s.update(size=p.stat().st_size, blobId=blob)
                    if _is_lfs(name):
                        s["lfs"] = {"size": p.stat().st_size, "sha256": sha256, "pointerSize": 134}
                siblings.append(s)
            self.send_json(
                200,
                {"id": repo, "modelId": repo, "sha": SHA, "private": False, "siblings": siblings},
            )

        def tree(self, m: re.Match[str], query: str) -> None:
            entries = []
            for name, p in hub.files(m["repo"]).items():
                blob, sha256 = _oid(p)
                e: dict[str, object] = {
                    "type": "file",
                    "path": name,
                    "size": p.stat().st_size,
                    "oid": blob,
                }
                if _is_lfs(name):
                    e["lfs"] = {"oid": sha256, "size": p.stat().st_size, "pointerSize": 134}
                entries.append(e)
            self.send_json(200, entries)

        def resolve(self, m: re.Match[str], query: str) -> None:
            f = hub.files(m["repo"]).get(m["path"])
            if f is None:
                self.send_json(
                    404,
                    {"error": "Entry not found"},
                    {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": SHA},
                )
                return
            data = f.read_bytes()
            blob, sha256 = _oid(f)
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng.removeprefix("bytes=").split("-")[0] or 0)
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Repo-Commit", SHA)
            self.send_header("ETag", f'"{blob}"')
            if _is_lfs(m["path"]):
                self.send_header("X-Linked-Etag", f'"{sha256}"')
                self.send_header("X-Linked-Size", str(len(data)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            chunk = 256 * 1024
            for i in range(0, len(body), chunk):
                self.wfile.write(body[i : i + chunk])
                if hub.bytes_per_s:
                    time.sleep(chunk / hub.bytes_per_s)

    return Handler


@contextmanager
def running(hub: Hub) -> Iterator[Hub]:
    """Serve `hub` on a free loopback port in a background thread; hub.url is its endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


def unreachable_endpoint() -> str:
    """A loopback URL nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
