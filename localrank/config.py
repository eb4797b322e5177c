"""Settings: one frozen value, built once at the edge (flags > env > TOML > defaults).

`load_settings` is the only function in localrank that reads environment variables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from localrank.declare import Check, Choices, NonBlank, Pattern, Range, arg, problem, record_of
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
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# An origin as browsers send it: scheme://host[:port], any scheme (app://obsidian.md,
# chrome-extension://id), no path, no wildcard.
_ORIGIN = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@*\s]+/?$"
DEFAULT_MCP_PORT = 8766
WATCH_POLLING = ("auto", "always", "never")
STORE_SCHEMES = ("postgresql://", "postgres://", "sqlite:///")
# Bind addresses that listen on every interface: a client reaches them through loopback, and a
# browser never sends one as its Host unless under attack.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


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


def _store_url_message(url: str) -> str:
    return (
        "store_url must be postgresql://user@host/database (PostgreSQL + pgvector) or "
        f"sqlite:///path/to/file.db, not {redact_url(url)!r}"
    )


def _plain(text: str) -> bool:
    """Printable, without surrounding white space: what a header (the daemon strips what it
    receives) or a model list carries as it is."""
    return text == text.strip() and text.isprintable()


PORT = Range(1, 65535, message="{name} must be 1..65535, not {value}")
Origin = Annotated[
    str,
    # A wildcard would let any web page drive the daemon from the user's browser; "null" is
    # what sandboxed frames and file:// pages send, so it would admit any of them.
    Pattern(
        _ORIGIN,
        message="allowed_origins entries are origins (scheme://host[:port]) such as "
        "http://localhost:3000 or app://obsidian.md, not {value!r}",
    ),
]
ModelName = Annotated[
    str,
    NonBlank("served_model_names entries must not be empty"),
    Check(
        _plain,
        "served_model_names entries must be non-empty names without surrounding spaces, "
        "not {value!r}",
    ),
]


@dataclass(frozen=True)
class Settings:
    """Every setting, each declared once: its type, default, bounds or choices and meaning.
    `LOCALRANK_<NAME>` sets it from the environment, `name = ...` from config.toml."""

    home: Path | None = arg("The folder holding all state (LOCALRANK_HOME).", default=None)
    host: str = arg(
        "The address to listen on.", NonBlank("host must not be empty"), default=DEFAULT_HOST
    )
    port: int = arg("The TCP port.", PORT, default=DEFAULT_PORT)
    unix_socket: str | None = arg("Listen on this unix socket instead.", default=None)
    model: str = arg(
        "The embedding model: a name, a Hugging Face id or a folder.", default=DEFAULT_MODEL
    )
    backend: str = arg("Where the model runs.", Choices(BACKENDS), default="auto")
    dtype: str = arg("The weights' precision (auto: per device).", Choices(DTYPES), default="auto")
    threads: int = arg(
        "Compute threads for the CPU backend (0: one per physical core this process may use).",
        Range(0, message="threads must be positive, or 0 for one per physical core"),
        default=0,
    )
    max_tokens: int = arg("Tokens per input (longer ones are cut).", Range(1), default=8192)
    max_batch_tokens: int = arg(
        "Padded tokens per forward pass (0: the backend's default).",
        Range(0, message="max_batch_tokens must be positive, or 0 for the backend's default"),
        default=0,
    )
    max_batch_size: int = arg("Rows per forward pass.", Range(1), default=128)
    batch_wait_ms: float = arg(
        "How long the scheduler waits for more requests to merge into a batch.",
        Range(0.0),
        default=2.0,
    )
    preempt_ms: float = arg(
        "How long a request that arrives while the model is busy waits before its own pass "
        "starts: a pass pauses between layers for it, and passes are sized (by the measured "
        "cost of recent ones) so that the stretch between two pauses takes about this long. "
        "0: passes are sized by max_batch_tokens only.",
        Range(0.0),
        default=25.0,
    )
    queue_size: int = arg(
        "Requests (not texts) waiting for the model before new ones get 429.",
        Range(1),
        default=1024,
    )
    max_inputs: int = arg("Inputs per request.", Range(1), default=2048)
    max_body_bytes: int = arg("The largest request body.", Range(1), default=64 * 1024 * 1024)
    idle_timeout_s: float = arg(
        "A connection that has not sent a whole request this long after connecting (or after "
        "its last response) is closed: idle keep-alives, stalled and slow-drip headers alike.",
        Range(0.0, above=True),
        default=15.0,
    )
    body_timeout_s: float = arg(
        "The longest a request body may take to arrive.", Range(0.0, above=True), default=20.0
    )
    max_connections: int = arg(
        "Open connections at once (0: just below the process's open-file limit).",
        Range(0, message="max_connections must be positive, or 0 for automatic"),
        default=0,
    )
    cache_size: int = arg(
        "Vectors kept in memory (0: no cache).",
        Range(0, message="cache_size must be 0 (no cache) or more"),
        default=8192,
    )
    token: str | None = arg(
        "The bearer token clients must send.",
        NonBlank("token must not be blank: no client could send it"),
        Check(
            _plain,
            "token must not start or end with white space or hold control characters: "
            "clients could not send it in an Authorization header",
        ),
        default=None,
    )
    allowed_hosts: tuple[str, ...] = arg("More Host names to accept.", default=())
    allowed_origins: tuple[Origin, ...] = arg(
        "Browser origins allowed to call the daemon.", default=()
    )
    log_format: str = arg("text or json lines.", Choices(LOG_FORMATS), default="text")
    log_level: str = arg(
        "debug, info, warning or error.", Choices(LOG_LEVELS, fold_case=True), default="info"
    )
    default_instruction: str = arg("The task given to queries.", default=DEFAULT_INSTRUCTION)
    served_model_names: tuple[ModelName, ...] = arg(
        "Extra names the served model answers to and lists (vLLM's and infinity's "
        "--served-model-name), besides its Hugging Face id and aliases.",
        default=(),
    )
    mcp_port: int = arg(
        "Where `localrank mcp --http` listens (on `host`), beside the daemon's own port.",
        PORT,
        default=DEFAULT_MCP_PORT,
    )
    watch_debounce_ms: int = arg(
        "Watched folders: how long a burst of file changes is gathered before it is applied.",
        Range(50, 60_000),
        default=1000,
    )
    watch_polling: str = arg(
        "Poll instead of native file events (auto: poll network / FUSE file systems only).",
        Choices(WATCH_POLLING),
        default="auto",
    )
    store_url: str | None = arg(
        "Where the collections live: unset for the SQLite file under the data directory, or "
        "postgresql://user@host/db for a PostgreSQL + pgvector database several daemons share "
        "(sqlite:///path names another SQLite file).",
        Check(lambda url: url.startswith(STORE_SCHEMES), _store_url_message),
        default=None,
    )
    job_lease_s: float = arg(
        "How long a daemon holds a job claimed from a shared store without renewing its "
        "lease: a job whose daemon died is resumed by another one this long after its last "
        "renewal.",
        Range(2.0, 3600.0, message="{name} must be 2..3600 seconds, not {value}"),
        default=30.0,
    )
    job_failure_timeout_s: float = arg(
        "How long a job's store operations may keep failing (the database down, or refusing "
        "its writes) before the job ends failed with the reason; `POST /v1/jobs/{id}/retry` (or "
        "`localrank jobs retry ID`) resumes it where it stopped. Shorter failures are retried.",
        Range(1.0, 86400.0, message="{name} must be 1..86400 seconds, not {value}"),
        default=300.0,
    )
    reranker: str | None = arg(
        "The cross-encoder reranker (a folder, a Hugging Face id): none for the embedding "
        "model's cosine. Loaded on the first request that needs it (or at startup with "
        "preload_reranker), unloaded after reranker_idle_unload_s without use.",
        NonBlank("reranker must name a model or a folder"),
        default=None,
    )
    preload_reranker: bool = arg("Load the reranker at startup.", default=False)
    reranker_idle_unload_s: float = arg(
        "Unload the reranker after this long unused (0: never).",
        Range(0.0, message="reranker_idle_unload_s must be 0 (never unload) or more"),
        default=900.0,
    )
    rerank_candidates: int = arg(
        "How many fused candidates `/v1/search` with rerank gives the cross-encoder.",
        Range(1, 1000),
        default=50,
    )
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


_FIELDS = {f.attr: f for f in record_of(Settings).fields if f.attr != "sources"}


def choices(name: str) -> tuple[str, ...]:
    """The values a setting takes (for the CLI's flags)."""
    for c in _FIELDS[name].constraints:
        if isinstance(c, Choices) and isinstance(c.values, tuple):
            return c.values
    raise KeyError(f"{name} has no choices")


def describe_setting(name: str) -> str:
    """What a setting means, and its default (for the CLI's help)."""
    f = _FIELDS[name]
    return f"{f.doc} Default: {json.dumps(f.default)}."


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML, env or flag value into the field's type, or raise ConfigError."""
    kind = _FIELDS[name].kind
    try:
        if value is None:
            return None
        if kind.base == "path":
            return Path(str(value)).expanduser()
        if kind.base == "boolean":
            return _boolean(name, value)
        if kind.base == "integer":
            return int(value)
        if kind.base == "number":
            return float(value)
        if kind.base == "array":
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {value!r} ({exc})", param=name) from exc


_BOOLEANS = dict.fromkeys(("true", "1", "yes", "on"), True) | dict.fromkeys(
    ("false", "0", "no", "off"), False
)


def _boolean(name: str, value: Any) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); anything else is a mistake to report, not
    a silent false."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word not in _BOOLEANS:
        raise ConfigError(
            f"setting {name!r}: {value!r} is not a boolean (true/false, 1/0, yes/no, on/off)",
            param=name,
        )
    return _BOOLEANS[word]


def _validate(s: Settings) -> None:
    """Every setting against its declaration."""
    for name, f in _FIELDS.items():
        value = getattr(s, name)
        message = None if value is None else problem(f.kind, name, value)
        if message is not None:
            raise ConfigError(message, param=name)


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
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"cannot read config file {path}: it is not UTF-8 text (byte {exc.start}: "
                f"{exc.object[exc.start : exc.start + 1]!r}); TOML files are UTF-8"
            ) from exc
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
