"""A client of the running daemon over HTTP (TCP or its unix socket), standard library only.

The CLI and the MCP server reach the daemon through it. It imports nothing heavy (no aiohttp,
numpy, torch or SQLite driver, not even `http.client`, whose `email` and `ssl` imports cost
more than a search: it speaks the little HTTP/1.1 it needs over a socket, one request per
connection), so `localrank search` against a running daemon starts in a fraction of a second.

The daemon's errors come back as the same `localrank.errors` types the in-process path raises
(mapped by the error `type` the daemon sends, else by status), with the daemon's own message:
a command fails the same way whichever path ran it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from localrank.config import WILDCARD_HOSTS, Settings
from localrank.errors import ERROR_TABLE, Conflict, LocalrankError, NotReady

HEALTH_TIMEOUT = 1.0  # a daemon that does not answer /health within this is not used
LOAD_WAIT_SECONDS = 180.0  # how long a command waits for a daemon still loading its model
SERVER_PREFIX = "localrank/"

_BY_CODE: dict[str, type[LocalrankError]] = {cls.code: cls for cls in ERROR_TABLE}
_BY_STATUS: dict[int, type[LocalrankError]] = {}
for _cls, (_status, _) in ERROR_TABLE.items():
    _BY_STATUS.setdefault(_status, _cls)


class DaemonUnreachable(LocalrankError):
    """No daemon answers at the endpoint (connection refused, timed out, socket missing)."""

    code = "daemon_unreachable"


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (names as sent) and body of one HTTP/1.1 response; the server closes
    the connection after it (`Connection: close`)."""
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    raw = b"".join(parts)
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise OSError("the connection closed before a complete response")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    lower = {k.lower(): v for k, v in headers.items()}
    if lower.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in lower:
        body = body[: int(lower["content-length"])]
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


@dataclass(frozen=True)
class Endpoint:
    """Where a daemon listens: host and port, or a unix socket."""

    host: str = "127.0.0.1"
    port: int = 8765
    unix_socket: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoint:
        """The configured daemon, as a client reaches it (a wildcard bind via loopback)."""
        if settings.unix_socket:
            return cls(unix_socket=settings.unix_socket)
        host = settings.host.strip()
        return cls("127.0.0.1" if host in WILDCARD_HOSTS else host.strip("[]"), settings.port)

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """`http://host:port` or `unix:/path/to/socket`."""
        if url.startswith("unix:"):
            return cls(unix_socket=url[len("unix:") :])
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise LocalrankError(f"a daemon URL is http://host:port or unix:/path, not {url!r}")
        return cls(parts.hostname, parts.port or 80)

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def connect(self, timeout: float) -> socket.socket:
        if self.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.unix_socket)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((self.host, self.port), timeout=timeout)

    @property
    def host_header(self) -> str:
        if self.unix_socket:
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _error(status: int, raw: bytes) -> LocalrankError:
    """The daemon's error body (any dialect's shape) as a localrank error."""
    message, code = "", ""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            message = str(inner.get("message") or "")
            code = str(inner.get("type") or "")
        elif isinstance(inner, str):
            message = inner
        message = message or str(body.get("detail") or body.get("message") or "")
        code = code or str(body.get("code") or "")
    if not message:
        message = raw.decode("utf-8", "replace").strip() or f"HTTP {status}"
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, LocalrankError)
    return cls(message)


class DaemonClient:
    """Requests to one daemon. Thread-safe: each request opens its own connection."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        token: str | None = None,
        timeout: float = 600.0,
        health: Mapping[str, Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.token = token
        self.timeout = timeout
        self.health: dict[str, Any] = dict(health or {})

    def __repr__(self) -> str:
        return f"DaemonClient({self.endpoint.url})"

    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body bytes); DaemonUnreachable when nothing answers."""
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        head = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.endpoint.host_header}",
            "Accept: application/json",
            "Connection: close",
            f"Content-Length: {len(data)}",
        ]
        if body is not None:
            head.append("Content-Type: application/json")
        if self.token:
            head.append(f"Authorization: Bearer {self.token}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data
        try:
            with self.endpoint.connect(timeout or self.timeout) as sock:
                sock.sendall(message)
                return _read_response(sock)
        except (OSError, ValueError) as exc:
            raise DaemonUnreachable(
                f"no localrank daemon answers at {self.endpoint.url}: {exc}"
            ) from exc

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The JSON answer of a request; the daemon's errors raised as localrank errors."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        status, _, raw = self.raw(method, path, body, timeout=timeout)
        if status >= 400:
            raise _error(status, raw)
        return json.loads(raw) if raw else None

    # --- the API, as the CLI and the MCP server use it --------------------------------------

    def search(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/search", dict(body)))

    def collections(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/collections")["collections"])

    def jobs(self, *, limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/jobs", query={"limit": limit, "state": state})["jobs"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/jobs/{quote(job_id, safe='')}"))

    def retry_job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/jobs/{quote(job_id, safe='')}/retry"))

    def index(self, collection: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Index a folder into `collection`, created first when it does not exist."""
        with contextlib.suppress(Conflict):  # it exists
            self.request("POST", "/v1/collections", {"name": collection})
        path = f"/v1/collections/{quote(collection, safe='')}/index"
        return dict(self.request("POST", path, dict(body)))

    def watches(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/watches")["watches"])

    def add_watch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/watches", dict(body)))

    def remove_watch(self, watch_id: int) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/v1/watches/{int(watch_id)}"))

    def document(self, collection: str, doc_id: str) -> dict[str, Any]:
        path = f"/v1/collections/{quote(collection, safe='')}/documents/{quote(doc_id, safe='')}"
        return dict(self.request("GET", path))

    def document_from(self, collection: str, source: str) -> dict[str, Any]:
        """The document read from the file `source`."""
        path = f"/v1/collections/{quote(collection, safe='')}/documents"
        found = self.request("GET", path, query={"source": source})["documents"]
        return self.document(collection, found[0]["id"])

    def embed(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/api/v1/embed", dict(body)))

    def rerank(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/api/v1/rerank", dict(body)))

    def read_health(self) -> dict[str, Any]:
        """/health now (also when the daemon answers 503), remembered in `health`."""
        status, _, raw = self.raw("GET", "/health", timeout=HEALTH_TIMEOUT)
        body = json.loads(raw) if raw else {}
        if status >= 400 and not isinstance(body, dict):
            raise _error(status, raw)
        self.health = {**body, "http_status": status}
        return self.health


def find_daemon(
    settings: Settings,
    *,
    wait: float = LOAD_WAIT_SECONDS,
    on_wait: Callable[[str], None] | None = None,
) -> DaemonClient | None:
    """The daemon configured by `settings` (host/port or unix socket, token) when one answers
    and serves this configuration's database; None when there is none (or it cannot serve:
    its model failed to load). A daemon still loading its model is waited for, up to `wait`
    seconds (`on_wait` is told once), rather than loading a second copy of the model here."""
    client = DaemonClient(Endpoint.from_settings(settings), token=settings.token)
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            status, headers, raw = client.raw("GET", "/health", timeout=HEALTH_TIMEOUT)
        except DaemonUnreachable:
            return None
        if not headers.get("Server", "").startswith(SERVER_PREFIX):
            return None  # something else listens there
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        database = body.get("database")
        if database is not None and database != settings.store_display:
            return None  # a daemon of another LOCALRANK_HOME: its collections are not ours
        if status == 200:
            client.health = {**body, "http_status": status}
            return client
        if body.get("status") != "loading" or time.monotonic() > deadline:
            return None
        if on_wait is not None and not told:
            on_wait(f"waiting for the daemon at {client.endpoint.url} to load its model")
            told = True
        time.sleep(0.25)


def require_daemon(settings: Settings) -> DaemonClient:
    """The configured daemon, or NotReady saying how to start one."""
    client = find_daemon(settings, wait=0)
    if client is None:
        where = Endpoint.from_settings(settings).url
        raise NotReady(
            f"no localrank daemon answers at {where}: start one with `localrank serve` "
            "(or `localrank service install`)"
        )
    return client
