"""``response_format``: JSON mode and JSON-Schema structured outputs as llama.cpp grammars.

The schema is turned into a GBNF grammar (llama-cpp-python's port of llama.cpp's
json-schema-to-grammar) that the engine enforces token by token, so the answer cannot leave the
schema. Keywords the converter cannot enforce are refused with a 400 naming them, before any
work: a constraint is never silently dropped.
"""

from __future__ import annotations

import re
from typing import Any

from oasis.errors import InvalidRequestError, UnsupportedParameterError
from oasis.serving.intrange import bounds, integer_gbnf, number_bounds, number_gbnf

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
# Enforced on integers, and on numbers when the bound is a whole number (serving/intrange.py).
BOUNDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # schema and function names


def _refuse(feature: str, where: str, param: str) -> UnsupportedParameterError:
    return UnsupportedParameterError(
        f"Structured outputs: {feature} at {where} cannot be enforced by oasis's constrained "
        "decoding, so the request is refused rather than answered unconstrained. Supported: "
        "type, properties, required, additionalProperties, items, prefixItems, minItems, "
        "maxItems, enum, const, anyOf, oneOf, $ref/$defs, pattern, minLength, maxLength, format "
        f"({', '.join(sorted(FORMATS))}), minimum/maximum (and the exclusive ones) on "
        "integers and, as whole numbers, on numbers.",
        param=param,
    )


def _invalid(where: str, problem: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid schema at {where}: {problem}", param=param, code="invalid_value"
    )


def check_schema(node: Any, where: str = "schema", param: str = "response_format") -> None:
    """Raise a 400 naming the first keyword (or value) the grammar cannot enforce."""
    if isinstance(node, bool) and where != "schema":
        return  # true / false sub-schemas
    if not isinstance(node, dict):
        raise _invalid(where, f"expected an object, got {type(node).__name__}.", param)
    for key, value in node.items():
        at = f"{where}.{key}"
        if key in ANNOTATIONS:
            continue
        if key in BOUNDS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _invalid(at, "expected a number.", param)
            if node.get("type") == "number":
                try:
                    number_bounds(node)
                except ValueError as exc:
                    raise _refuse(str(exc), where, param) from None
            elif node.get("type") != "integer":
                raise _refuse(
                    f'the keyword \'{key}\' (enforced with "type": "integer" or "number")',
                    where,
                    param,
                )
            continue
        if key not in ENFORCED:
            raise _refuse(f"the keyword '{key}'", where, param)
        if key == "type":
            types = value if isinstance(value, list) else [value]
            for t in types:
                if t not in TYPES:
                    raise _invalid(at, f"unknown type {t!r}.", param)
        elif key == "format" and value not in FORMATS:
            raise _refuse(f"format '{value}'", where, param)
        elif key == "$ref":
            if not isinstance(value, str) or not value.startswith("#/"):
                raise _refuse(f"the reference {value!r} (only local #/ references)", where, param)
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise _invalid(at, "expected an object.", param)
            for name, sub in value.items():
                check_schema(sub, f"{at}.{name}", param)
        elif key in ("anyOf", "oneOf", "prefixItems"):
            if not isinstance(value, list) or not value:
                raise _invalid(at, "expected a non-empty array.", param)
            for i, sub in enumerate(value):
                check_schema(sub, f"{at}[{i}]", param)
        elif key == "items":
            if isinstance(value, list):
                for i, sub in enumerate(value):
                    check_schema(sub, f"{at}[{i}]", param)
            else:
                check_schema(value, at, param)
        elif key == "additionalProperties" and not isinstance(value, bool):
            check_schema(value, at, param)
        elif key == "enum" and (not isinstance(value, list) or not value):
            raise _invalid(at, "enum must be a non-empty array.", param)


class GrammarBuilder:
    """One GBNF grammar from several JSON schemas plus hand-written rules (tool calls).

    Each schema's references are hoisted into uniquely named definitions first: llama.cpp's
    converter names a referenced rule by the last part of its path, so two schemas that both
    define ``$defs/Item`` (or a definition called ``string``) would otherwise share one rule.
    """

    def __init__(self) -> None:
        from llama_cpp.llama_grammar import SchemaConverter

        self._conv = SchemaConverter(
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        self._rules: list[str] = []
        self._count = 0
        self._ranges: dict[str, str] = {}  # rule name -> GBNF of a numeric range

    def schema(self, schema: dict[str, Any], name: str, *, param: str) -> str:
        """Add the rules for one schema; return the name of its top rule."""
        tag = f"oasis-s{self._count}"
        self._count += 1
        try:
            hoisted = _hoist(schema, tag, param, self._ranges)
            resolved = self._conv.resolve_refs(hoisted, tag)
            rule: str = self._conv.visit(resolved, name)
        except InvalidRequestError:
            raise
        except Exception as exc:  # the converter's own refusals (a regex feature...)
            raise UnsupportedParameterError(
                f"Structured outputs: the schema cannot be turned into a grammar ({exc}); the "
                "request is refused rather than answered unconstrained.",
                param=param,
            ) from None
        return rule

    def rule(self, name: str, body: str) -> None:
        self._rules.append(f"{name} ::= {body}")

    def build(self, root: str) -> str:
        # JSON strings may not hold raw control characters (a newline must be written \n);
        # the converter's rule allows them, which json.loads would then reject.
        lines = []
        for line in self._conv.format_grammar().splitlines():
            name = line.split(" ::= ", 1)[0]
            if name == "char":
                line = STRICT_CHAR
            elif name in self._ranges:  # a placeholder (see _hoist): the range's rule
                line = f"{name} ::= {self._ranges[name]} space"
            lines.append(line)
        return "\n".join([f"root ::= {root}", *self._rules, *lines]) + "\n"


def _hoist(schema: dict[str, Any], tag: str, param: str, ranges: dict[str, str]) -> dict[str, Any]:
    """The schema with every local ``$ref`` pointing at a definition named after ``tag`` and the
    reference's path (``#/$defs/Item`` -> ``#/$defs/<tag>-defs-Item``, ``#`` -> ``<tag>``).

    An integer or number with bounds becomes a reference to a placeholder definition whose
    rule ``GrammarBuilder.build`` replaces with the range's grammar (``ranges``).
    """
    defs: dict[str, Any] = {}

    def target(ref: str) -> str:
        path = ref[1:].lstrip("/")
        key = tag + ("-" + re.sub(r"[^a-zA-Z0-9]+", "-", path).strip("-") if path else "")
        if key not in defs:
            node: Any = schema
            for part in path.split("/") if path else []:
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise InvalidRequestError(
                        f"Invalid schema: the reference {ref!r} points at nothing.",
                        param=param,
                        code="invalid_value",
                    )
            defs[key] = None  # reserve: a definition may refer to itself
            defs[key] = rewrite(node, top=node is schema)
        return f"#/$defs/{key}"

    def rewrite(node: Any, top: bool = False) -> Any:
        if isinstance(node, list):
            return [rewrite(x) for x in node]
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if (
            kind in ("integer", "number")
            and BOUNDS & node.keys()
            and not {"enum", "const"} & (node.keys())
        ):
            key = f"{tag}-range-{len(ranges)}"
            try:
                ranges[key] = (
                    integer_gbnf(*bounds(node))
                    if kind == "integer"
                    else number_gbnf(*number_bounds(node))
                )
            except ValueError as exc:
                raise InvalidRequestError(
                    f"Invalid schema: {exc}.", param=param, code="invalid_value"
                ) from None
            defs[key] = {"const": key}
            return {"$ref": f"#/$defs/{key}"}
        out: dict[str, Any] = {}
        for k, v in node.items():
            if top and k in ("$defs", "definitions"):
                continue
            if k == "$ref" and isinstance(v, str) and v.startswith("#"):
                out[k] = target(v)
            elif k in ("properties", "$defs", "definitions") and isinstance(v, dict):
                out[k] = {name: rewrite(sub) for name, sub in v.items()}
            else:
                out[k] = rewrite(v)
        return out

    root: dict[str, Any] = rewrite(schema, top=True)
    if defs:
        root["$defs"] = defs
    return root


STRICT_CHAR = (
    r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] [0-9a-fA-F])"
)
JSON_OBJECT: dict[str, Any] = {"type": "object"}


def answer_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a chat ``response_format`` asks for (None for plain text), checked."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
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
    if not isinstance(name, str) or not NAME.match(name):
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
    return dict(schema)


def answer_grammar(schema: dict[str, Any]) -> str:
    """The grammar of an answer that follows ``schema`` (response_format's)."""
    builder = GrammarBuilder()
    return builder.build(builder.schema(schema, "answer", param="response_format"))


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """The GBNF grammar a chat response_format asks for (None for plain text)."""
    schema = answer_schema(response_format)
    return None if schema is None else answer_grammar(schema)
