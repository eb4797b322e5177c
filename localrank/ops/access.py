"""Who may talk to a localrank server on this machine: the Host allow-list (DNS-rebinding
defence), browser requests (refused unless their Origin is allow-listed or the server's own
page, and refused when they say Sec-Fetch-Site cross-site or same-site without one), and the
optional bearer token. Pure rules over header values, shared by the daemon's middlewares
(`serve.security`) and the MCP server's Streamable HTTP transport (`localrank mcp --http`), so
both answer the same requests the same way.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from localrank.config import WILDCARD_HOSTS, Settings
from localrank.errors import ConfigError

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


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
    body_timeout_s: float

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
        if bound not in WILDCARD_HOSTS:
            hosts.add(bound)
        return cls(
            hosts=frozenset(hosts - WILDCARD_HOSTS),
            origins=frozenset(normalize_origin(o) for o in settings.allowed_origins),
            token=settings.token.encode("utf-8") if settings.token else None,
            max_body_bytes=settings.max_body_bytes,
            body_timeout_s=settings.body_timeout_s,
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


def own_origin(origin: str, *, hosts: frozenset[str], host_header: str, port: int | None) -> bool:
    """A page the server served itself (e.g. /docs) calling back into it, under any of its host
    names: http, an allowed host, this listener's `port`. Not cross-site. Without a port (a unix
    socket) only the exact host the page was served under."""
    try:
        parts = urlsplit(normalize_origin(origin))
        origin_port = parts.port or 80
    except ValueError:
        return False
    if parts.scheme != "http" or parts.hostname not in hosts:
        return False
    if port is not None:
        return origin_port == port
    return normalize_origin(origin) == f"http://{host_header.strip().lower()}"


def browser_refusal(
    policy: SecurityPolicy,
    *,
    origin: str | None,
    fetch_site: str,
    host_header: str,
    port: int | None,
) -> str | None:
    """Why a browser request must be refused, or None. Browsers omit Origin on some cross-site
    requests (image tags, no-cors GETs) but always say where a request comes from in
    Sec-Fetch-Site; other clients send neither."""
    if origin is None:
        site = fetch_site.strip().lower()
        if site in ("cross-site", "same-site"):
            return (
                f"{site} requests from web pages are refused; allow an origin with the "
                "allowed_origins setting"
            )
        return None
    if own_origin(origin, hosts=policy.hosts, host_header=host_header, port=port):
        return None
    if not policy.origin_allowed(origin):
        return (
            f"requests from web pages ({origin}) are refused; allow an origin with the "
            "allowed_origins setting"
        )
    return None


def host_refusal(policy: SecurityPolicy, host: str) -> str | None:
    """Why a Host header must be refused (DNS rebinding), or None."""
    if policy.host_allowed(host):
        return None
    return (
        f"Host {host!r} is not allowed: localrank answers only to localhost names "
        "(add others with the allowed_hosts setting)"
    )


def refusal(
    policy: SecurityPolicy,
    *,
    host: str,
    origin: str | None,
    authorization: str,
    fetch_site: str = "",
    port: int | None = None,
) -> tuple[int, str] | None:
    """(status, message) for the first rule a request breaks, in the daemon's order (Host,
    browser, token); None when it may proceed."""
    refused = host_refusal(policy, host) or browser_refusal(
        policy, origin=origin, fetch_site=fetch_site, host_header=host, port=port
    )
    if refused is not None:
        return 403, refused
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
