"""A batch's input file: JSONL, one request per line, checked before any line runs.

Each line is ``{"custom_id": "...", "method": "POST", "url": "<the batch's endpoint>",
"body": {...}}``. The whole file is checked first, as OpenAI does: any bad line fails the
batch (status ``failed``) with ``errors`` naming the line (1-based) and what is wrong, and no
line runs. The bodies themselves are validated when their line runs (a bad body is that
line's 400 in the error file, as OpenAI answers it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oasis.errors import OasisError
from oasis.server.validation import parse_json_body

MAX_REQUESTS = 50_000  # OpenAI's limit per batch
MAX_CUSTOM_ID_CHARS = 512
MAX_ERRORS = 100  # errors listed on a failed batch (the first ones)
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


@dataclass(frozen=True)
class BatchRequest:
    """One line of the input: its index (0-based), custom_id, and the line as read. The body
    is parsed again when the line runs: a batch holds its file's bytes, not every body as
    Python objects (several times the size)."""

    index: int
    custom_id: str
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.raw)["body"]  # checked by read_input
        return body


class InvalidInputError(Exception):
    """The input file is not a valid batch: ``errors`` in OpenAI's BatchError shape."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"] if errors else "invalid input file")
        self.errors = errors


def _error(
    code: str, message: str, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check(entry: Any, number: int, endpoint: str) -> tuple[str, dict[str, Any]] | dict[str, Any]:
    """(custom_id, body) of a parsed line, or the error naming what is wrong with it."""
    if not isinstance(entry, dict):
        return _error("invalid_request", "Each line must be a JSON object.", number)
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _error(
            "missing_required_parameter",
            "Each line needs a non-empty string custom_id.",
            number,
            "custom_id",
        )
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return _error(
            "invalid_value",
            f"custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters.",
            number,
            "custom_id",
        )
    if entry.get("method") != "POST":
        return _error("invalid_value", "method must be 'POST'.", number, "method")
    url = entry.get("url")
    if url != endpoint:
        return _error(
            "invalid_url",
            f"url must be the batch's endpoint {endpoint!r}; got {str(url)[:100]!r}.",
            number,
            "url",
        )
    body = entry.get("body")
    if not isinstance(body, dict):
        return _error("invalid_value", "body must be a JSON object.", number, "body")
    if body.get("stream") is True:
        return _error(
            "invalid_value", "Streaming is not supported in a batch: remove stream.", number, "body"
        )
    extra = sorted(set(entry) - {"custom_id", "method", "url", "body"})
    if extra:
        return _error(
            "invalid_request",
            f"Unknown field {extra[0][:64]!r} in the line.",
            number,
            extra[0][:64],
        )
    return custom_id, body


def read_input(path: Path, endpoint: str, *, max_depth: int = 64) -> list[BatchRequest]:
    """Every request of the input file, or InvalidInputError naming the bad lines (up to
    MAX_ERRORS of them). Blank lines are skipped; a line's number counts every line."""
    requests: list[BatchRequest] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                entry = parse_json_body(raw, max_depth=max_depth)
            except OasisError as exc:
                errors.append(_error("invalid_json_line", f"Line {number}: {exc.message}", number))
            else:
                checked = _check(entry, number, endpoint)
                if isinstance(checked, dict):
                    errors.append(checked)
                else:
                    custom_id, _ = checked
                    if custom_id in seen:
                        errors.append(
                            _error(
                                "duplicate_custom_id",
                                f"custom_id {custom_id[:100]!r} is used by an earlier line; "
                                "each request needs its own.",
                                number,
                                "custom_id",
                            )
                        )
                    seen.add(custom_id)
                    requests.append(BatchRequest(len(requests), custom_id, raw))
            if len(errors) >= MAX_ERRORS:
                break
            if len(requests) > MAX_REQUESTS:
                raise InvalidInputError(
                    [
                        _error(
                            "too_many_requests",
                            f"The input file has more than {MAX_REQUESTS} requests; split it "
                            "into several batches.",
                        )
                    ]
                )
    if errors:
        raise InvalidInputError(errors)
    if not requests:
        raise InvalidInputError([_error("empty_file", "The input file has no requests.")])
    return requests
