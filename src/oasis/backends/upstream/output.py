"""An upstream's answer to a ``json_schema`` response_format, checked against the schema.

Some OpenAI-compatible servers fail open: llama-server answers a schema it cannot turn into a
grammar with unconstrained text (ggml-org/llama.cpp#19051). oasis does not pass such an answer
off as success: a choice that finished (``finish_reason: "stop"``) with content that is not JSON
valid against the schema is a 502 ``upstream_invalid_output`` naming the upstream, or, in a
stream, whose text has already been relayed, a final error event. A choice cut by max_tokens
(``"length"``) is returned as it is, as OpenAI returns it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from jsonschema import validators
from jsonschema.exceptions import SchemaError

from oasis.errors import UpstreamError

log = logging.getLogger(__name__)

# Answers up to this size are checked on the event loop; bigger ones in a worker thread.
_INLINE_CHARS = 4096


class InvalidOutputError(UpstreamError):
    """502: the upstream's answer does not match the request's json_schema."""

    default_code = "upstream_invalid_output"


class SchemaCheck:
    def __init__(self, validator: Any, model: str, patterns: bool = False) -> None:
        self._validator = validator
        self._model = model
        # a client's regex is never run on the event loop (a slow one would stall every
        # request); it runs in a worker thread
        self._patterns = patterns

    @classmethod
    def of(cls, spec: Any, model: str) -> SchemaCheck | None:
        """The check for a ``json_schema`` spec; None when it holds no schema, or one this
        checker cannot read (then the upstream's answer is returned unchecked, and logged)."""
        schema = getattr(spec, "schema_", None)
        if not isinstance(schema, dict):
            return None
        try:
            kind = validators.validator_for(schema)
            kind.check_schema(schema)
            text = json.dumps(schema)
            return cls(kind(schema), model, '"pattern' in text or '"format"' in text)
        except (SchemaError, RecursionError, TypeError, ValueError) as exc:
            log.warning("model %s: the json_schema cannot be checked: %s", model, exc)
            return None

    def _problem(self, text: str) -> str | None:
        try:
            value = json.loads(text)
        except ValueError:
            return "it is not JSON"
        try:
            error = next(iter(self._validator.iter_errors(value)), None)
        except Exception as exc:  # an unresolvable $ref, a regex Python cannot compile...
            log.warning("model %s: the answer could not be checked: %s", self._model, exc)
            return None
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        return f"at {where}: {error.message[:300]}"

    async def verify(self, text: str, finish_reason: str | None, replica: str) -> None:
        """Raise ``InvalidOutputError`` if a finished answer does not match the schema."""
        if finish_reason != "stop":
            return
        if len(text) <= _INLINE_CHARS and not self._patterns:
            problem = self._problem(text)
        else:
            problem = await asyncio.to_thread(self._problem, text)
        if problem is not None:
            raise InvalidOutputError(
                f"The upstream of model {self._model!r} (replica {replica}) answered with "
                f"output that does not match the response_format's json_schema: {problem}."
            )
