"""API-key check: keys from the database (``oasis keys``), or the one ``--api-key``."""

from __future__ import annotations

import hmac

from anyio import to_thread
from fastapi import Request

from oasis.errors import AuthenticationError


def _mask(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * 8}{key[-4:]}"


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 in OpenAI's envelope unless the bearer token is a valid key.

    The key that matched (a database key's ``KeyInfo``, or None for ``--api-key``) is left in
    ``request.state.api_key`` for limits and metering.
    """
    state = request.app.state.oasis
    request.state.api_key = None
    if state.settings.no_auth:
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
        return
    info = await to_thread.run_sync(state.keys.verify, token) if state.keys else None
    if info is None:
        raise AuthenticationError(
            f"Incorrect API key provided: {_mask(token)}. Create keys with `oasis keys create`; "
            "revoked and expired keys no longer work."
        )
    request.state.api_key = info
