"""API-key check (a single key from settings for now; key management is the gateway's)."""

from __future__ import annotations

import hmac

from fastapi import Request

from oasis.errors import AuthenticationError


def _mask(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * 8}{key[-4:]}"


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 in OpenAI's envelope unless the bearer token matches."""
    expected = request.app.state.oasis.settings.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise AuthenticationError(
            f"Incorrect API key provided: {_mask(token)}. Check the key the server was started "
            "with (--api-key / OASIS_API_KEY)."
        )
