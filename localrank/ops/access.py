"""Who may talk to a localrank server on this machine: the Host allow-list (DNS-rebinding
defence), browser Origins (refused unless allow-listed or the server's own page), and the
optional bearer token. Pure rules over header values, shared by the daemon's middlewares
(`serve.security`) and the MCP server's Streamable HTTP transport (`localrank mcp --http`), so
both answer the same requests the same way.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from localrank.config import Settings
from localrank.errors import ConfigError

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Wildcard bind addresses are never a valid Host: a browser would only send one under attack.
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def split_host(value: str) -> tuple[str, str | None] | None:
    """Split a Host header into (lowercase name, port or None); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name, rest[1:] or None
    name, sep, port = value.partition(":")
    if sep and not port.isdigit():
        return None  # also rejects bare IPv6 without brackets
    return name, port or None


def normalize_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


@dataclass(frozen=True)
class SecurityPolicy:
    """The allow-lists and limits of one daemon, precomputed from Settings."""

    hosts: frozenset[str]
    origins: frozenset[str]
    token: bytes | None
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityPolicy:
        hosts = set(LOOPBACK_HOSTS)
        for entry in settings.allowed_hosts:  # names; a port given with one is ignored
            entry = entry.strip()
            if entry.count(":") > 1 and not entry.startswith("["):
                entry = f"[{entry}]"  # a bare IPv6 address
            parsed = split_host(entry)
            if parsed is not None:
                hosts.add(parsed[0])
        # A daemon bound to one specific address (e.g. a LAN IP, with a token) is addressed by it.
        bound = settings.host.strip().lower().strip("[]")
        if bound not in _WILDCARDS:
            hosts.add(bound)
        return cls(
            hosts=frozenset(hosts - _WILDCARDS),
            origins=frozenset(normalize_origin(o) for o in settings.allowed_origins),
            token=settings.token.encode("utf-8") if settings.token else None,
            max_body_bytes=settings.max_body_bytes,
        )

    def host_allowed(self, header: str) -> bool:
        parsed = split_host(header)
        return parsed is not None and parsed[0] in self.hosts

    def origin_allowed(self, origin: str) -> bool:
        return normalize_origin(origin) in self.origins

    def token_ok(self, authorization: str) -> bool:
        if self.token is None:
            return True
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant-time: the comparison must not reveal how many leading bytes matched.
        return hmac.compare_digest(credentials.strip().encode("utf-8"), self.token)


def same_origin(origin: str, host_header: str) -> bool:
    """A page the daemon served itself (e.g. /docs) calling back into it: not cross-site."""
    origin = normalize_origin(origin)
    return origin == f"http://{host_header.strip().lower()}"


def refusal(
    policy: SecurityPolicy, *, host: str, origin: str | None, authorization: str
) -> tuple[int, str] | None:
    """(status, message) for the first rule a request breaks, in the daemon's order (Host,
    Origin, token); None when it may proceed."""
    if not policy.host_allowed(host):
        return 403, (
            f"Host {host!r} is not allowed: localrank answers only to localhost names "
            "(add others with the allowed_hosts setting)"
        )
    if origin is not None and not same_origin(origin, host) and not policy.origin_allowed(origin):
        return 403, (
            f"requests from web pages ({origin}) are refused; allow an origin with the "
            "allowed_origins setting"
        )
    if not policy.token_ok(authorization):
        if not authorization:
            return 401, "a bearer token is required (Authorization: Bearer <token>)"
        return 401, "the bearer token is not valid"
    return None


def check_bind_safety(settings: Settings) -> None:
    """Refuse to start on a non-loopback address without a token: anyone on the network
    could otherwise use the daemon (and read every collection)."""
    if not settings.binds_loopback and not settings.token:
        raise ConfigError(
            f"refusing to listen on {settings.host} without a token: set "
            "LOCALRANK_TOKEN (or token in config.toml), or bind 127.0.0.1",
            param="host",
        )
