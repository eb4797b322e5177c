"""Local security: Host and Origin allow-lists, an optional bearer token, and body rules.

Local AI daemons have shipped DNS-rebinding CVEs: a web page on evil.com re-points its own name
at 127.0.0.1 and then talks to the daemon as "same origin". The Host header still says evil.com,
so checking Host against a short allow-list closes that hole; refusing browser Origins closes
the plain cross-site one. Both checks run before anything else, including the token check.
The rules themselves (`SecurityPolicy`) live in `ops.access`, shared with `localrank mcp --http`.

Wiring (`serve.app.make_app`; the error middleware formats the errors raised here):

    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[
        request_id_middleware, error_middleware, *make_security_middlewares(settings)])
    setup_security(app, settings)

`/health` without a valid token (when one is set) still answers, for supervisors and
`localrank doctor`, but with the status code and `{"status": ...}` only: what is loaded, where,
and on what hardware is for token holders.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import socket
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from localrank.config import Settings
from localrank.errors import (
    ConfigError,
    Forbidden,
    LocalrankError,
    RequestTimeout,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
    http_status,
)
from localrank.ops.access import (
    SecurityPolicy,
    browser_refusal,
    check_bind_safety,
    host_refusal,
)
from localrank.serve.connections import ACCEPT_BACKLOG
from localrank.serve.state import DIALECTS_KEY

# check_bind_safety lives with the other rules (ops.access); the daemon's modules import it here.
__all__ = [
    "bind_unix_socket",
    "check_bind_safety",
    "make_security_middlewares",
    "setup_security",
    "start_unix_site",
]
OPEN_PATHS = frozenset({"/health"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CORS_ALLOW_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
_CORS_EXPOSE_HEADERS = "X-Request-ID, Retry-After"
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
# A header name as RFC 9110 defines a token: what a preflight may echo back.
_HEADER_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
WWW_AUTHENTICATE = 'Bearer realm="localrank"'


def preflight_headers(request: web.Request) -> dict[str, str]:
    """The answer to an allowed origin's CORS preflight: the methods, the request headers it
    asked for (any well-formed names: browser SDKs send their own, such as openai-node's
    X-Stainless-*), and Private Network Access consent when Chrome asks for it."""
    asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
    names = [h.strip() for h in asked.split(",") if h.strip()]
    headers: dict[str, str] = {
        hdrs.ACCESS_CONTROL_ALLOW_METHODS: _CORS_ALLOW_METHODS,
        hdrs.ACCESS_CONTROL_ALLOW_HEADERS: (
            ", ".join(h for h in names if _HEADER_TOKEN.match(h)) or _CORS_ALLOW_HEADERS
        ),
        hdrs.ACCESS_CONTROL_MAX_AGE: "600",
        hdrs.VARY: _PREFLIGHT_VARY,
    }
    if request.headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
        headers["Access-Control-Allow-Private-Network"] = "true"
    return headers


def _listener_port(request: web.Request) -> int | None:
    """The TCP port this request came in on (None on a unix socket)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return None


def make_security_middlewares(settings: Settings) -> list[Middleware]:
    """The middlewares, outermost first: Host, Origin/CORS, token, body rules."""
    policy = SecurityPolicy.from_settings(settings)

    @web.middleware
    async def host_allowlist(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The raw header: request.host falls back to the machine's name when Host is absent.
        refused = host_refusal(policy, request.headers.get(hdrs.HOST, ""))
        if refused is not None:
            raise Forbidden(refused)
        return await handler(request)

    @web.middleware
    async def origin_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        refused = browser_refusal(
            policy,
            origin=origin,
            fetch_site=request.headers.get("Sec-Fetch-Site", ""),
            host_header=request.headers.get(hdrs.HOST, ""),
            port=_listener_port(request),
        )
        if refused is not None:
            raise Forbidden(refused)
        if (
            origin is not None
            and policy.origin_allowed(origin)
            and request.method == hdrs.METH_OPTIONS
            and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
        ):
            # Preflight: answered here, before the token check (browsers send no credentials).
            return web.Response(status=204, headers=preflight_headers(request))
        return await handler(request)

    @web.middleware
    async def bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if policy.token_ok(request.headers.get(hdrs.AUTHORIZATION, "")):
            return await handler(request)
        if request.path in OPEN_PATHS:
            status = "unavailable"
            try:
                response = await handler(request)
                code = response.status
                if code < 400:
                    # "ok", or "degraded" (its store is down): a supervisor may know that much.
                    text = response.text if isinstance(response, web.Response) else None
                    full = json.loads(text or "{}")
                    status = "degraded" if full.get("status") == "degraded" else "ok"
            except LocalrankError as exc:  # e.g. NotReady while the model loads
                code = http_status(exc)
            return web.json_response({"status": status}, status=code)
        missing = hdrs.AUTHORIZATION not in request.headers
        raise Unauthorized(
            "a bearer token is required (Authorization: Bearer <token>)"
            if missing
            else "the bearer token is not valid"
        )

    @web.middleware
    async def body_rules(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in _BODY_METHODS and request.body_exists:
            length = request.content_length
            if length is not None and length > policy.max_body_bytes:
                raise TooLarge(
                    f"request body of {length} bytes is over the "
                    f"{policy.max_body_bytes}-byte limit (max_body_bytes)"
                )
            accepted = request.app[DIALECTS_KEY].for_request(request).body_types
            if request.content_type not in accepted:
                raise UnsupportedMediaType(
                    f"request bodies must be application/json, "
                    f"not {request.content_type or 'unspecified'}"
                )
            # Read the whole body now, against the clock (aiohttp caches the bytes for the
            # handler): a client dripping its body cannot hold the connection, and a chunked
            # body over client_max_size turns into our own error type.
            try:
                await asyncio.wait_for(request.read(), policy.body_timeout_s)
            except asyncio.TimeoutError:
                raise RequestTimeout(
                    f"the request body did not arrive within {policy.body_timeout_s:g} s "
                    "(body_timeout_s)"
                ) from None
            except web.HTTPRequestEntityTooLarge as exc:
                raise TooLarge(
                    f"request body is over the {policy.max_body_bytes}-byte limit (max_body_bytes)"
                ) from exc
        return await handler(request)

    middlewares: list[Middleware] = [host_allowlist, origin_check]
    if policy.token is not None:
        middlewares.append(bearer_token)
    middlewares.append(body_rules)
    return middlewares


def setup_security(app: web.Application, settings: Settings) -> None:
    """Register the response hook that adds CORS headers (allowed origins only) and
    WWW-Authenticate on 401s, whichever middleware produced the response."""
    policy = SecurityPolicy.from_settings(settings)

    # A signal rather than a middleware: it also reaches responses that an outer error
    # middleware (or aiohttp itself) built from an exception.
    async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and policy.origin_allowed(origin):
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = _CORS_EXPOSE_HEADERS
            vary = ",".join(response.headers.getall(hdrs.VARY, [])).lower()
            if "origin" not in vary:  # a preflight carries its own, fuller Vary
                response.headers.add(hdrs.VARY, "Origin")
        if response.status == 401 and hdrs.WWW_AUTHENTICATE not in response.headers:
            response.headers[hdrs.WWW_AUTHENTICATE] = WWW_AUTHENTICATE

    app.on_response_prepare.append(on_response_prepare)


def bind_unix_socket(path: str | Path) -> socket.socket:
    """A listening-ready AF_UNIX socket at `path` that only this user can connect to (0600).

    A stale socket file left by a crash is replaced; a live one (another daemon) is an error.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise ConfigError(f"{path} exists and is not a socket", param="unix_socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise
            else:
                raise ConfigError(
                    f"another process is already serving on {path}", param="unix_socket"
                )
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # umask around bind: the file never exists with wider permissions, not even briefly.
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


async def start_unix_site(runner: web.AppRunner, path: str | Path) -> web.SockSite:
    """Serve `runner` on a 0600 unix socket at `path` (the web.UnixSite equivalent).

    The caller removes the socket file at shutdown (`Path(path).unlink(missing_ok=True)`).
    """
    site = web.SockSite(runner, bind_unix_socket(path), backlog=ACCEPT_BACKLOG)
    await site.start()
    return site
