"""Settings: one frozen value, built once at the edge (flags > env > TOML > defaults).

`load_settings` is the only function in localrank that reads environment variables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from localrank.errors import ConfigError
from localrank.paths import Paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# "torch" is torch on its best device (MPS, then CUDA, then CPU): embed-rerank's BACKEND value.
BACKENDS = ("auto", "mlx", "torch", "mps", "cuda", "cpu")
LOG_LEVELS = ("debug", "info", "warning", "error")
# An origin as browsers send it: scheme://host[:port], any scheme (app://obsidian.md,
# chrome-extension://id), no path, no wildcard.
_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#@*\s]+/?$", re.IGNORECASE)
DEFAULT_MCP_PORT = 8766
WATCH_POLLING = ("auto", "always", "never")
STORE_SCHEMES = ("postgresql://", "postgres://", "sqlite:///")


def redact_url(url: str) -> str:
    """A connection URL without its password: what logs, /health and messages may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that only this machine can reach (localhost, 127/8, ::1).

    Wildcards (0.0.0.0, ::) and other names are not loopback: they may be reachable from the
    network, so binding them needs a token (see serve.security.check_bind_safety).
    """
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    home: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    unix_socket: str | None = None
    model: str = DEFAULT_MODEL
    backend: str = "auto"
    dtype: str = "auto"
    # Compute threads for the CPU backend (0: one per physical core this process may use).
    threads: int = 0
    max_tokens: int = 8192
    # Padded tokens per forward pass (0: the backend's default), and rows per forward pass.
    max_batch_tokens: int = 0
    max_batch_size: int = 128
    # How long the scheduler waits for more requests to merge into a batch.
    batch_wait_ms: float = 2.0
    # How long a request that arrives while the model is busy waits before its own pass starts:
    # a pass pauses between layers for it, and passes are sized (by the measured cost of recent
    # ones) so that the stretch between two pauses takes about this long. 0: passes are sized by
    # max_batch_tokens only.
    preempt_ms: float = 25.0
    # Requests (not texts) waiting for the model before new ones get 429.
    queue_size: int = 1024
    max_inputs: int = 2048
    max_body_bytes: int = 64 * 1024 * 1024
    # A connection that has not sent a whole request this long after connecting (or after its
    # last response) is closed: idle keep-alives, stalled and slow-drip headers alike.
    idle_timeout_s: float = 15.0
    # The longest a request body may take to arrive.
    body_timeout_s: float = 20.0
    # Open connections at once (0: just below the process's open-file limit).
    max_connections: int = 0
    cache_size: int = 8192
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    log_format: str = "text"
    log_level: str = "info"
    default_instruction: str = DEFAULT_INSTRUCTION
    # Extra names the served model answers to and lists (vLLM's and infinity's
    # --served-model-name), besides its Hugging Face id and aliases.
    served_model_names: tuple[str, ...] = ()
    # `localrank mcp --http` listens here (on `host`), beside the daemon's own port.
    mcp_port: int = DEFAULT_MCP_PORT
    # Watched folders: how long a burst of file changes is gathered before it is applied, and
    # whether to poll instead of native events (auto: poll network / FUSE file systems only).
    watch_debounce_ms: int = 1000
    watch_polling: str = "auto"
    # Where the collections live: unset for the SQLite file under the data directory, or
    # postgresql://user@host/db for a PostgreSQL + pgvector database several daemons share
    # (sqlite:///path names another SQLite file).
    store_url: str | None = None
    # How long a daemon holds a job claimed from a shared store without renewing its lease: a
    # job whose daemon died is resumed by another one this long after its last renewal.
    job_lease_s: float = 30.0
    # How long a job's store operations may keep failing (the database down, or refusing its
    # writes) before the job ends failed with the reason; `POST /v1/jobs/{id}/retry` (or
    # `localrank jobs retry ID`) resumes it where it stopped. Shorter failures are retried.
    job_failure_timeout_s: float = 300.0
    # The cross-encoder reranker (a folder, a Hugging Face id): None for the embedding model's
    # cosine. Loaded on the first request that needs it (or at startup with preload_reranker),
    # unloaded after reranker_idle_unload_s without use (0: never).
    reranker: str | None = None
    preload_reranker: bool = False
    reranker_idle_unload_s: float = 900.0
    # How many fused candidates `/v1/search` with rerank gives the cross-encoder.
    rerank_candidates: int = 50
    # Where each field's value came from: "default", "file:<path>", "env:<NAME>" or "flag".
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def paths(self) -> Paths:
        return Paths.resolve(self.home)

    @property
    def store_location(self) -> Path | str:
        """What `localrank.store.open_store` opens: the store URL, or the SQLite file."""
        return self.store_url or self.paths.database

    @property
    def store_display(self) -> str:
        """The store's location as it may be shown (no password)."""
        return redact_url(self.store_url) if self.store_url else str(self.paths.database)

    @property
    def binds_loopback(self) -> bool:
        """True when the TCP listener is reachable from this machine only."""
        return is_loopback_host(self.host)

    def source_of(self, name: str) -> str:
        """Where a setting's value came from, as a user would write it: "--dtype",
        "LOCALRANK_DTYPE", "dtype in /path/config.toml" or "the default"."""
        source = self.sources.get(name, "default")
        if source == "flag":
            return "--" + name.replace("_", "-")
        if source.startswith("env:"):
            return source.removeprefix("env:")
        if source.startswith("file:"):
            return f"{name} in {source.removeprefix('file:')}"
        return "the default"

    @property
    def model_is_default(self) -> bool:
        """True when the user did not name a model: only then may localrank fall back."""
        return self.sources.get("model", "default") == "default"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        if out.get("token"):
            out["token"] = "***"
        if out.get("store_url"):
            out["store_url"] = redact_url(out["store_url"])
        return out


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "sources"}


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML, env or flag value into the field's type, or raise ConfigError."""
    default = _FIELDS[name].default
    try:
        if value is None:
            return None
        if name == "home":
            return Path(str(value)).expanduser()
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r} ({exc})", param=name) from exc


def _validate(s: Settings) -> None:
    if s.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {s.backend!r}")
    if s.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise ConfigError(f"dtype must be auto, float32, float16 or bfloat16, not {s.dtype!r}")
    for name in ("port", "mcp_port"):
        if not 0 < getattr(s, name) < 65536:
            raise ConfigError(f"{name} must be 1..65535, not {getattr(s, name)}", param=name)
    if not 50 <= s.watch_debounce_ms <= 60_000:
        raise ConfigError("watch_debounce_ms must be 50..60000", param="watch_debounce_ms")
    if s.store_url is not None and not s.store_url.startswith(STORE_SCHEMES):
        raise ConfigError(
            "store_url must be postgresql://user@host/database (PostgreSQL + pgvector) or "
            f"sqlite:///path/to/file.db, not {redact_url(s.store_url)!r}",
            param="store_url",
        )
    if not 2.0 <= s.job_lease_s <= 3600.0:
        raise ConfigError("job_lease_s must be 2..3600 seconds", param="job_lease_s")
    if not 1.0 <= s.job_failure_timeout_s <= 86400.0:
        raise ConfigError(
            "job_failure_timeout_s must be 1..86400 seconds", param="job_failure_timeout_s"
        )
    if s.watch_polling not in WATCH_POLLING:
        raise ConfigError(
            f"watch_polling must be one of {', '.join(WATCH_POLLING)}, not {s.watch_polling!r}",
            param="watch_polling",
        )
    for name in ("max_tokens", "max_batch_size", "queue_size", "max_inputs"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    for name in ("batch_wait_ms", "preempt_ms"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name} must be 0 or more")
    if s.reranker_idle_unload_s < 0:
        raise ConfigError(
            "reranker_idle_unload_s must be 0 (never unload) or more",
            param="reranker_idle_unload_s",
        )
    if not 1 <= s.rerank_candidates <= 1000:
        raise ConfigError("rerank_candidates must be 1..1000", param="rerank_candidates")
    if s.reranker is not None and not s.reranker.strip():
        raise ConfigError("reranker must name a model or a folder", param="reranker")
    if s.cache_size < 0:
        raise ConfigError("cache_size must be 0 (no cache) or more")
    if s.threads < 0:
        raise ConfigError("threads must be positive, or 0 for one per physical core")
    if s.max_batch_tokens < 0:
        raise ConfigError("max_batch_tokens must be positive, or 0 for the backend's default")
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, not {s.log_format!r}")
    if s.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {s.log_level!r}")
    if s.max_body_bytes <= 0:
        raise ConfigError("max_body_bytes must be positive")
    if s.idle_timeout_s <= 0 or s.body_timeout_s <= 0:
        raise ConfigError("idle_timeout_s and body_timeout_s must be positive")
    if s.max_connections < 0:
        raise ConfigError("max_connections must be positive, or 0 for automatic")
    if not s.host.strip():
        raise ConfigError("host must not be empty")
    for origin in s.allowed_origins:
        # A wildcard would let any web page drive the daemon from the user's browser; "null"
        # is what sandboxed frames and file:// pages send, so it would admit any of them.
        if not _ORIGIN.match(origin):
            raise ConfigError(
                f"allowed_origins entries are origins (scheme://host[:port]) such as "
                f"http://localhost:3000 or app://obsidian.md, not {origin!r}",
                param="allowed_origins",
            )
    for name in s.served_model_names:
        if not name.strip() or name != name.strip() or not name.isprintable():
            raise ConfigError(
                f"served_model_names entries must be non-empty names without surrounding "
                f"spaces, not {name!r}",
                param="served_model_names",
            )


def env_name(field_name: str) -> str:
    return "LOCALRANK_" + field_name.upper()


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge defaults, the TOML config file, LOCALRANK_* variables and flags, in that order.

    Flags whose value is None are treated as not given.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in _FIELDS}

    home_raw = (flags or {}).get("home") or env.get("LOCALRANK_HOME")
    home = Path(home_raw).expanduser() if home_raw else None
    path = config_file or Paths.resolve(home).config_file
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(f"{path}: unknown setting {key!r}", param=key)
            values[name] = _coerce(name, value)
            sources[name] = f"file:{path}"

    for name in _FIELDS:
        var = env_name(name)
        if var in env and env[var] != "":
            values[name] = _coerce(name, env[var])
            sources[name] = f"env:{var}"

    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}", param=name)
        values[name] = _coerce(name, value)
        sources[name] = "flag"

    settings = Settings(**values, sources=sources)
    _validate(settings)
    return settings
