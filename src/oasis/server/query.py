"""Query-string parameters, checked: integers in a range, lists, short texts. Bad values are
400s naming the parameter (``param``), never a 500."""

from __future__ import annotations

from fastapi import Request

from oasis.errors import InvalidRequestError
from oasis.store.usage import clean_text


def query_list(request: Request, name: str) -> list[str]:
    """Array parameters as ``name=a&name=b``, ``name[]=a`` or ``name=a,b``."""
    values: list[str] = []
    for k, v in request.query_params.multi_items():
        if k in (name, f"{name}[]"):
            if "\x00" in v:
                raise InvalidRequestError(
                    f"Invalid '{name}': a value contains a NUL character.",
                    param=name,
                    code="invalid_value",
                )
            values.extend(part for part in v.split(",") if part)
    return values


def query_int(request: Request, name: str, low: int, high: int, why: str = "") -> int | None:
    """An integer query parameter in ``[low, high]``, or None when it is absent or empty."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer, got {raw[:100]!r}.",
            param=name,
            code="invalid_type",
        ) from None
    if not low <= value <= high:
        raise InvalidRequestError(
            f"Invalid '{name}': expected an integer from {low} to {high}{why}, got {raw[:100]}.",
            param=name,
            code="invalid_value",
        )
    return value


def query_text(request: Request, name: str, limit: int) -> str | None:
    """A text query parameter of at most ``limit`` characters, without control characters
    (which no stored value holds: they are replaced when a record is made), or None when it
    is absent or empty."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    if len(raw) > limit:
        raise InvalidRequestError(
            f"Invalid '{name}': at most {limit} characters, got {len(raw)}.",
            param=name,
            code="invalid_value",
        )
    if clean_text(raw, limit) != raw:
        raise InvalidRequestError(
            f"Invalid '{name}': it contains a control character or a lone surrogate.",
            param=name,
            code="invalid_value",
        )
    return raw
