"""API-key check: keys from the database (``oasis keys``), or the one ``--api-key``."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from fastapi import Request

from oasis.errors import AuthenticationError, PermissionDeniedError


def _is_loopback_name(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``), without the port."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_of(value: str) -> str:
    """The host name of a ``Host`` header (``name:port``, ``[v6]:port``)."""
    value = value.strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _check_local(request: Request) -> None:
    """Without keys (``--no-auth``, loopback only) the server must not be reachable through a
    web page of another site: a ``Host`` that is not a loopback name (DNS rebinding: a name the
    attacker's DNS points at 127.0.0.1) or an ``Origin`` that is not loopback (a cross-site
    fetch or form post) is refused."""
    if not _is_loopback_name(_host_of(request.headers.get("host", ""))):
        raise PermissionDeniedError(
            "This server runs without keys (--no-auth) and answers only requests addressed to "
            "localhost or a loopback address; the Host header named another host."
        )
    origin = request.headers.get("origin")
    if origin is not None:
        try:
            host = urlsplit(origin).hostname
        except ValueError:  # not a URL ("null" from a sandboxed frame parses to no host)
            host = None
        if host is None or not _is_loopback_name(host):
            raise PermissionDeniedError(
                "This server runs without keys (--no-auth) and refuses requests from web pages "
                "of other sites (the Origin header was not a loopback address)."
            )


def _mask(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * 8}{key[-4:]}"


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 in OpenAI's envelope unless the bearer token is a valid key.

    The key that matched (a database key's ``KeyInfo``, or None for ``--api-key``) is left in
    ``request.state.api_key`` for limits and metering; ``request.state.is_admin`` says whether
    it may call the admin API (admin keys and the operator's ``--api-key``).
    """
    state = request.app.state.oasis
    request.state.api_key = None
    request.state.is_admin = False
    if state.settings.no_auth:
        _check_local(request)
        request.state.is_admin = True  # loopback-only tinkering
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    static = state.settings.api_key
    if static is not None and hmac.compare_digest(
        token.encode(), static.get_secret_value().encode()
    ):
        request.state.is_admin = True
        return
    info = await state.gateway.key_cache.verify(token) if state.gateway else None
    if info is None:
        raise AuthenticationError(
            f"Incorrect API key provided: {_mask(token)}. Create keys with `oasis keys create`; "
            "revoked and expired keys no longer work."
        )
    request.state.api_key = info
    request.state.is_admin = info.is_admin


async def require_admin(request: Request) -> None:
    """FastAPI dependency for the admin API: a valid key that is an admin key, else 403."""
    await require_api_key(request)
    if not request.state.is_admin:
        raise PermissionDeniedError(
            "You have insufficient permissions for this operation: it needs an admin key "
            "(`oasis keys create --admin`)."
        )
