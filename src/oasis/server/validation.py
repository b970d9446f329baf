"""Parsing request bodies into protocol models, with OpenAI's 400 messages."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from oasis.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

_TYPE_NAMES = {
    "float": "a decimal",
    "int": "an integer",
    "bool": "a boolean",
    "string": "a string",
    "list": "an array",
    "dict": "an object",
    "model": "an object",
}


def _param(loc: tuple[Any, ...], body: Any, named_last: bool) -> str:
    """The parameter an error's location names, as OpenAI writes it (``messages.[0].content``).

    pydantic's locations also hold the tags of union members (``str``, ``list[int]``,
    ``TextPart``, ``text`` for a part of type text...); walking the request body alongside
    keeps only the keys and indexes that are in it, plus, for a missing or an unrecognized
    field (``named_last``), its name. A tag that happens to be a key of the body (a text part's
    ``text``) is skipped when the location goes on past a value that holds nothing more.
    """
    parts: list[str] = []
    node = body
    last = len(loc) - 1
    for i, item in enumerate(loc):
        if isinstance(node, dict) and isinstance(item, str) and item in node:
            if i < last and not isinstance(node[item], dict | list) and loc[i + 1] in node:
                continue  # a union tag equal to a key: the location goes on at this level
            parts.append(item)
            node = node[item]
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            parts.append(f"[{item}]")
            node = node[item]
        elif named_last and i == last and isinstance(node, dict):
            parts.append(str(item))
    return ".".join(parts)


def _got(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _message(err: Any, param: str) -> tuple[str, str | None]:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", None
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", "missing_required_parameter"
    if kind in ("greater_than_equal", "greater_than"):
        return (
            f"Invalid '{param}': value below minimum. Expected a value >= "
            f"{_num(ctx.get('ge', ctx.get('gt')))}, but got {_num(value)} instead.",
            "invalid_value",
        )
    if kind in ("less_than_equal", "less_than"):
        return (
            f"Invalid '{param}': value above maximum. Expected a value <= "
            f"{_num(ctx.get('le', ctx.get('lt')))}, but got {_num(value)} instead.",
            "invalid_value",
        )
    if kind == "too_long":
        return (
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ctx.get('max_length')}, but got an array with length "
            f"{ctx.get('actual_length')} instead.",
            "array_above_max_length",
        )
    if kind == "too_short":
        return (
            f"Invalid '{param}': empty array. Expected an array with minimum length "
            f"{ctx.get('min_length')}, but got an empty array instead.",
            "empty_array",
        )
    if kind == "string_too_short":
        return (
            f"Invalid '{param}': string too short. Expected a string with minimum length "
            f"{ctx.get('min_length')}, but got a string with length {len(value or '')} "
            "instead.",
            "string_below_min_length",
        )
    if kind == "string_too_long":
        return (
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{ctx.get('max_length')}, but got a string with length {len(value or '')} "
            "instead.",
            "string_above_max_length",
        )
    if kind == "string_pattern_mismatch":
        return (
            f"Invalid '{param}': string does not match pattern. Expected a string that "
            f"matches the pattern '{ctx.get('pattern')}'.",
            "invalid_value",
        )
    if kind in ("literal_error", "enum"):
        return (
            f"Invalid value for '{param}': expected one of "
            f"{ctx.get('expected')}, but got {json.dumps(value)} instead.",
            "invalid_value",
        )
    if kind == "value_error":
        msg = str(ctx.get("error", err.get("msg", "")))
        if ": " in msg and msg.split(": ", 1)[0].isidentifier():
            name, text = msg.split(": ", 1)
            return f"Invalid '{name}': {text}", "invalid_value"
        return f"Invalid '{param}': {msg}", "invalid_value"
    for suffix, name in _TYPE_NAMES.items():
        if kind.startswith(suffix) or kind == f"{suffix}_type":
            return (
                f"Invalid type for '{param}': expected {name}, but got {_got(value)} instead.",
                "invalid_type",
            )
    return f"Invalid value for '{param}': {err.get('msg', 'invalid')}.", "invalid_value"


_INVALID_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
    "but what was sent was not valid JSON.)"
)


def parse_json_body(raw: bytes, *, max_depth: int = 64) -> dict[str, Any]:
    """The body as a JSON object, or OpenAI's 400.

    Nesting deeper than ``max_depth`` and lone surrogates (``"\\ud800"``: valid JSON, but not
    Unicode, and no text containing one can be encoded, stored or tokenized) are refused here,
    once, so nothing after this point meets them.
    """
    try:
        # strictly UTF-8: json.loads(bytes) would let encoded surrogates through
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise _too_deep(max_depth) from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError(_INVALID_JSON, code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"Invalid request body: expected a JSON object, but got {_got(data)} instead.",
            code="invalid_type",
        )
    # decoded strictly, so a lone surrogate can only arrive as a \\uD800-\\uDFFF escape
    check_json(data, max_depth=max_depth, surrogates=b"\\ud" in raw.lower())
    return data


def _too_deep(limit: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid request body: JSON nested more than {limit} levels deep (OASIS_MAX_JSON_DEPTH).",
        code="invalid_value",
    )


def check_json(data: Any, *, max_depth: int, surrogates: bool = True) -> None:
    """Walk ``data`` without recursion: depth within ``max_depth``, no lone surrogates (in keys
    and values; the 400 names where)."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(data, 0, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            if depth >= max_depth:
                raise _too_deep(max_depth)
            for key, value in node.items():
                if surrogates and _has_surrogate(key):
                    raise _surrogate_error((*path, key))
                if isinstance(value, dict | list) or (surrogates and isinstance(value, str)):
                    stack.append((value, depth + 1, (*path, key) if surrogates else ()))
        elif isinstance(node, list):
            if depth >= max_depth:
                raise _too_deep(max_depth)
            for i, value in enumerate(node):
                if isinstance(value, dict | list) or (surrogates and isinstance(value, str)):
                    stack.append((value, depth + 1, (*path, i) if surrogates else ()))
        elif isinstance(node, str) and _has_surrogate(node):
            raise _surrogate_error(path)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_error(path: tuple[str | int, ...]) -> InvalidRequestError:
    param = ".".join(f"[{p}]" if isinstance(p, int) else _printable(p) for p in path) or None
    return InvalidRequestError(
        f"Invalid value for '{param}': the string contains a lone surrogate (a \\uD800-"
        "\\uDFFF escape that is not part of a pair), which is not valid Unicode.",
        param=param,
        code="invalid_value",
    )


def _printable(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)

        # Unions report one error per branch: a range or length error says more than "wrong
        # type" for the other branches, and the branch that got furthest into the value
        # (the deepest location) is the one the client meant.
        def rank(err: Any) -> tuple[int, int]:
            if err["type"] in ("extra_forbidden", "missing"):
                return 0, -len(err["loc"])
            return (2 if err["type"].endswith("_type") else 1), -len(err["loc"])

        first = min(errors, key=rank)
        param = _param(tuple(first["loc"]), data, first["type"] in ("missing", "extra_forbidden"))
        if first["type"] == "value_error" and not param:
            msg = str((first.get("ctx") or {}).get("error", first.get("msg", "")))
            name = msg.split(": ", 1)[0] if ": " in msg else None
            text, code = _message(first, param)
            raise InvalidRequestError(text, param=name, code=code) from None
        text, code = _message(first, param)
        raise InvalidRequestError(text, param=param or None, code=code) from None
