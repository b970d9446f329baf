"""Any JSON value in any schema keyword gives either a grammar (bounded, every rule it names
defined) or an oasis error with status 400: never another exception (a 500), never a crash."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from oasis.errors import OasisError
from oasis.serving.gbnf import DEFAULT_LIMITS, LLAMA_MAX_REPETITION, measure
from oasis.serving.schema import ANNOTATIONS, KEYWORDS
from oasis.serving.structured import GrammarBuilder, answer_grammar, answer_schema

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")
from hypothesis import HealthCheck, given, settings  # noqa: E402

KEYS = sorted(KEYWORDS | {"title", "default", "uniqueItems", "not", "x-extra"})
TYPES = ["object", "array", "string", "number", "integer", "boolean", "null", "colour"]
NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, 5, 1000, 2000, 2001, 10**5, 10**9, -1, 0.5, 1.5, 1e400, 1e-20]),
)
PATTERNS = st.one_of(
    st.text(alphabet="^$ab.()[]{}|*+?\\,-dws0-9x:=!<>", max_size=20),
    st.sampled_from(["^a{0,100000}$", "^(a?)*$", "^(?=a)", "^[a-z]+$", "(" * 70, "\\", "^a{2,1}"]),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _keyword_value(key: str, schema: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values that are sometimes right for ``key`` and often not."""
    right: dict[str, st.SearchStrategy[Any]] = {
        "type": st.one_of(st.sampled_from(TYPES), st.lists(st.sampled_from(TYPES), max_size=3)),
        "properties": st.dictionaries(st.text(max_size=5), schema, max_size=4),
        "$defs": st.dictionaries(st.sampled_from(["A", "B", "a/b", "~"]), schema, max_size=3),
        "items": st.one_of(schema, st.lists(schema, max_size=3)),
        "prefixItems": st.lists(schema, max_size=3),
        "anyOf": st.lists(schema, max_size=3),
        "oneOf": st.lists(schema, max_size=3),
        "additionalProperties": schema,
        "required": st.lists(st.text(max_size=5), max_size=3),
        "enum": st.lists(JSON, max_size=4),
        "pattern": PATTERNS,
        "format": st.sampled_from(["date", "uri", "email", "ipv6", "hostname", "idn-email", ""]),
        "$ref": st.sampled_from(
            ["#", "#/$defs/A", "#/$defs/a~1b", "#/properties", "#/x", "http:x"]
        ),
    }
    return st.one_of(right.get(key, NUMBERS), JSON)


def _schema(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(KEYS), st.just(None), max_size=5).flatmap(
        lambda keys: st.fixed_dictionaries({k: _keyword_value(k, inner) for k in keys})
    )


SCHEMAS = st.recursive(
    st.one_of(st.booleans(), st.fixed_dictionaries({"type": st.sampled_from(TYPES)}), JSON),
    _schema,
    max_leaves=12,
)
_RULE = re.compile(r"^([a-zA-Z0-9-]+) ::= (.*)$")
_NAMES = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[^}]*\}|([a-zA-Z0-9-]+)')


def well_formed(gbnf: str) -> None:
    """Bounded, and every rule named is defined."""
    got = measure(gbnf)
    assert got.size <= DEFAULT_LIMITS.grammar_bytes
    assert got.expansion <= DEFAULT_LIMITS.expansion and got.largest <= LLAMA_MAX_REPETITION
    defined, used = set(), set()
    for line in gbnf.split("\n"):
        if not line:
            continue
        m = _RULE.match(line)
        assert m, line
        defined.add(m.group(1))
        used |= {n.group(1) for n in _NAMES.finditer(m.group(2)) if n.group(1)}
    assert "root" in defined and used <= defined, used - defined


def outcome(call: Any) -> str | None:
    try:
        return str(call())
    except OasisError as exc:
        assert exc.status == 400 and exc.param, exc
        return None
    except RecursionError:  # pragma: no cover - the point of the test
        pytest.fail("RecursionError")


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(SCHEMAS)
def test_any_schema_is_a_grammar_or_a_400(schema: Any) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    if outcome(lambda: answer_schema(fmt)) is not None:
        gbnf = outcome(lambda: answer_grammar(schema))
        if gbnf is not None:
            well_formed(gbnf)

    def tool() -> str:
        b = GrammarBuilder()
        return b.build(b.schema(schema, "oasis-args-0", param="tools"))

    gbnf = outcome(tool)
    if gbnf is not None:
        well_formed(gbnf)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(KEYWORDS | ANNOTATIONS)), JSON)
def test_any_value_in_any_keyword(key: str, value: Any) -> None:
    for schema in ({key: value}, {"type": "object", "properties": {"x": {key: value}}}):
        gbnf = outcome(lambda s=schema: answer_grammar(s))  # type: ignore[misc]
        if gbnf is not None:
            well_formed(gbnf)


def test_non_finite_numbers_anywhere_are_400s() -> None:
    for v in (math.inf, -math.inf, math.nan):
        for key in ("minimum", "maxLength", "enum", "const", "minItems", "type"):
            value = [v] if key == "enum" else v
            assert outcome(lambda k=key, x=value: answer_grammar({k: x})) is None  # type: ignore[misc]
