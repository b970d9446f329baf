"""``response_format``: JSON mode and JSON-Schema structured outputs as llama.cpp grammars.

The schema is turned into a GBNF grammar (llama-cpp-python's port of llama.cpp's
json-schema-to-grammar) that the engine enforces token by token, so the answer cannot leave the
schema. Keywords the converter cannot enforce are refused with a 400 naming them, before any
work: a constraint is never silently dropped.
"""

from __future__ import annotations

import json
import re
from typing import Any

from oasis.errors import InvalidRequestError, UnsupportedParameterError

# Keywords the grammar enforces.
ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions",
    "pattern", "format", "minLength", "maxLength",
}  # fmt: skip
# Keywords that describe and do not constrain.
ANNOTATIONS = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "strict", "discriminator", "nullable",
}  # fmt: skip
FORMATS = {"date", "time", "date-time", "uuid"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _refuse(feature: str, where: str) -> UnsupportedParameterError:
    return UnsupportedParameterError(
        f"Structured outputs: {feature} at {where} cannot be enforced by oasis's constrained "
        "decoding, so the request is refused rather than answered unconstrained. Supported: "
        "type, properties, required, additionalProperties, items, prefixItems, minItems, "
        "maxItems, enum, const, anyOf, oneOf, $ref/$defs, pattern, minLength, maxLength, format "
        f"({', '.join(sorted(FORMATS))}).",
        param="response_format",
    )


def check_schema(node: Any, where: str = "schema") -> None:
    """Raise a 400 naming the first keyword (or value) the grammar cannot enforce."""
    if isinstance(node, bool) and where != "schema":
        return  # true / false sub-schemas
    if not isinstance(node, dict):
        raise InvalidRequestError(
            f"Invalid schema at {where}: expected an object, got {type(node).__name__}.",
            param="response_format",
            code="invalid_value",
        )
    for key, value in node.items():
        at = f"{where}.{key}"
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            raise _refuse(f"the keyword '{key}'", where)
        if key == "type":
            types = value if isinstance(value, list) else [value]
            for t in types:
                if t not in TYPES:
                    raise InvalidRequestError(
                        f"Invalid schema at {at}: unknown type {t!r}.",
                        param="response_format",
                        code="invalid_value",
                    )
        elif key == "format" and value not in FORMATS:
            raise _refuse(f"format '{value}'", where)
        elif key == "$ref":
            if not isinstance(value, str) or not value.startswith("#/"):
                raise _refuse(f"the reference {value!r} (only local #/ references)", where)
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise InvalidRequestError(
                    f"Invalid schema at {at}: expected an object.",
                    param="response_format",
                    code="invalid_value",
                )
            for name, sub in value.items():
                check_schema(sub, f"{at}.{name}")
        elif key in ("anyOf", "oneOf", "prefixItems"):
            if not isinstance(value, list) or not value:
                raise InvalidRequestError(
                    f"Invalid schema at {at}: expected a non-empty array.",
                    param="response_format",
                    code="invalid_value",
                )
            for i, sub in enumerate(value):
                check_schema(sub, f"{at}[{i}]")
        elif key == "items":
            if isinstance(value, list):
                for i, sub in enumerate(value):
                    check_schema(sub, f"{at}[{i}]")
            else:
                check_schema(value, at)
        elif key == "additionalProperties" and not isinstance(value, bool):
            check_schema(value, at)
        elif key == "enum" and (not isinstance(value, list) or not value):
            raise InvalidRequestError(
                f"Invalid schema at {at}: enum must be a non-empty array.",
                param="response_format",
                code="invalid_value",
            )


def _to_gbnf(schema: dict[str, Any]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf: str = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter's own refusals (a regex feature, a bad $ref...)
        raise UnsupportedParameterError(
            f"Structured outputs: the schema cannot be turned into a grammar ({exc}); the "
            "request is refused rather than answered unconstrained.",
            param="response_format",
        ) from None
    # JSON strings may not hold raw control characters (a newline must be written \n); the
    # converter's rule allows them, which json.loads would then reject.
    lines = [STRICT_CHAR if line.startswith("char ::=") else line for line in gbnf.splitlines()]
    return "\n".join(lines) + "\n"


STRICT_CHAR = (
    r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])"
)
JSON_OBJECT: dict[str, Any] = {"type": "object"}


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """The GBNF grammar a chat response_format asks for (None for plain text)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _to_gbnf(JSON_OBJECT)
    if kind != "json_schema":
        raise InvalidRequestError(
            f"Invalid value for 'response_format.type': {kind!r}. Supported values are: "
            "'text', 'json_object' and 'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequestError(
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(
            "Invalid 'response_format.json_schema.name': a name of 1-64 letters, digits, "
            "underscores or dashes is required.",
            param="response_format.json_schema.name",
            code="invalid_value",
        )
    schema = spec.get("schema", JSON_OBJECT)
    if schema is True:
        schema = JSON_OBJECT
    check_schema(schema)
    return _to_gbnf(schema)
