"""One clear line for every API or connection error: what failed, OpenAI's error type and
message, and what to do."""

from __future__ import annotations

from typing import Any

import openai


def error_fields(exc: openai.APIStatusError) -> dict[str, Any]:
    """OpenAI's ``{"message", "type", "param", "code"}`` of an API error (the SDK keeps either
    the envelope or its inside in ``body``)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body)
    return err if isinstance(err, dict) else {}


def describe(exc: BaseException, base_url: str) -> str:
    root = base_url.rstrip("/").removesuffix("/v1")
    if isinstance(exc, openai.APITimeoutError):
        return f"the server at {root} did not answer in time - try again, or raise --timeout"
    if isinstance(exc, openai.APIConnectionError):
        return f"no server at {root} - start one with `make serve` (or pass --base-url)"
    if isinstance(exc, openai.APIStatusError):
        err = error_fields(exc)
        etype = err.get("type") or type(exc).__name__
        code = err.get("code")
        message = err.get("message") or str(exc)
        what = f"{exc.status_code} {etype}" + (f"/{code}" if code else "")
        hint = _hint(exc)
        return f"{what}: {message}" + (f" - {hint}" if hint else "")
    return f"{type(exc).__name__}: {exc}"


def _hint(exc: openai.APIStatusError) -> str:
    if isinstance(exc, openai.AuthenticationError):
        return "check --api-key / OPENAI_API_KEY (`oasis keys create` makes a key)"
    if isinstance(exc, openai.PermissionDeniedError):
        return "this needs an admin key"
    if isinstance(exc, openai.RateLimitError):
        return "retries ran out: wait a little, or ask for higher limits (`oasis keys update`)"
    if isinstance(exc, openai.NotFoundError):
        return "list the models with `curl $OPENAI_BASE_URL/models` or pass --model"
    if exc.status_code >= 500:
        return "the server failed; see its log"
    return ""
