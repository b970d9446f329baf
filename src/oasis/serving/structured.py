"""``response_format``: JSON mode and JSON-Schema structured outputs as llama.cpp grammars.

The schema is turned into a GBNF grammar (serving/schema.py) that the engine enforces token by
token, so the answer cannot leave the schema. Keywords that cannot be enforced, and schemas
past oasis's limits (``gbnf.Limits``: repetition counts, nesting, grammar size), are refused
with a 400 naming them, before any work: a constraint is never silently dropped.
"""

from __future__ import annotations

import re
from typing import Any

from oasis.errors import InvalidRequestError, UnsupportedParameterError
from oasis.serving.gbnf import DEFAULT_LIMITS, LLAMA_MAX_REPETITION, Limits, Rules, measure
from oasis.serving.schema import (
    ANNOTATIONS,
    PRIMITIVES,
    TYPES,
    SchemaCompiler,
    Subject,
)

__all__ = [
    "ANNOTATIONS",
    "DEFAULT_LIMITS",
    "JSON_OBJECT",
    "NAME",
    "TYPES",
    "GrammarBuilder",
    "Limits",
    "answer_grammar",
    "answer_schema",
    "check_schema",
    "grammar_for",
]

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # schema and function names


def check_schema(
    node: Any,
    where: str = "schema",
    param: str = "response_format",
    *,
    name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Raise a 400 naming the first keyword (or value, or limit) the grammar cannot enforce.

    ``param`` is the error's parameter; the message names the schema as ``param 'name'``
    when a name is given (a response_format's), else as ``where`` (a tool's
    ``tools[0].function.parameters``), and says where in the schema the problem is.
    """
    subject = Subject(param, f"{param} '{name}'" if name else param if where == "schema" else where)
    builder = GrammarBuilder(limits)
    builder.add(node, "check", subject)
    builder.check()


class GrammarBuilder:
    """One GBNF grammar from several JSON schemas plus hand-written rules (tool calls).

    Each schema's references become rules named after that schema, so two schemas that both
    define ``$defs/Item`` keep their own. Equal rule bodies are shared.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._rules = Rules(tuple(PRIMITIVES))
        self._hand: list[str] = []
        self._blame: dict[str, int] = {}  # param -> bytes of rules its schemas added

    def schema(self, schema: dict[str, Any], name: str, *, param: str) -> str:
        """Add the rules for one schema; return the name of its top rule."""
        return self.add(schema, name, Subject(param, param))

    def add(self, schema: Any, name: str, subject: Subject) -> str:
        before = self._rules.size
        rule = SchemaCompiler(self._rules, subject, self._limits).compile(schema, name)
        self._blame[subject.param] = self._blame.get(subject.param, 0) + self._rules.size - before
        return rule

    def rule(self, name: str, body: str) -> None:
        self._hand.append(f"{name} ::= {body}\n")

    def build(self, root: str) -> str:
        text = f"root ::= {root}\n" + "".join(self._hand) + self._rules.text()
        self.check(text)
        return text

    def check(self, text: str | None = None) -> None:
        """Raise a 400 if the grammar is past the limits (the whole text, or the rules)."""
        got = measure(self._rules.text() if text is None else text)
        param = max(self._blame, key=lambda p: self._blame[p]) if self._blame else "response_format"
        limits = self._limits
        if got.size > limits.grammar_bytes:
            problem = (
                f"its grammar would be {got.size} bytes, above the limit of "
                f"{limits.grammar_bytes} that oasis can enforce (fewer properties, enum values "
                "or shorter patterns make it smaller)"
            )
        elif got.expansion > limits.expansion:
            problem = (
                f"its repetitions (maxLength, maxItems, pattern counts...) add up to "
                f"{got.expansion}, above the limit of {limits.expansion} that oasis can enforce"
            )
        elif got.largest > LLAMA_MAX_REPETITION:  # never written so, but never sent either
            problem = f"a repetition of {got.largest} is more than llama.cpp can enforce"
        else:
            return
        raise UnsupportedParameterError(f"Invalid schema for {param}: {problem}.", param=param)


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
    check_schema(schema, name=name)
    return dict(schema)


def answer_grammar(schema: dict[str, Any]) -> str:
    """The grammar of an answer that follows ``schema`` (response_format's)."""
    builder = GrammarBuilder()
    return builder.build(builder.schema(schema, "answer", param="response_format"))


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """The GBNF grammar a chat response_format asks for (None for plain text)."""
    schema = answer_schema(response_format)
    return None if schema is None else answer_grammar(schema)
