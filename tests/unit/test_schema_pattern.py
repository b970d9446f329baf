"""``pattern`` (serving/pattern.py): the grammar admits exactly the JSON text of the strings the
regular expression matches (as JSON Schema reads it: anywhere in the string unless anchored),
checked against Python's ``re`` on samples; counts, nesting and features past what llama.cpp
can hold are refused before anything is built."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from oasis.errors import InvalidRequestError, OasisError, UnsupportedParameterError
from oasis.serving import pattern as rx
from oasis.serving.structured import answer_grammar, check_schema
from tests.unit.test_schema_gbnf import gbnf_regex, sample

PATTERNS = [
    r"^[a-z]+$",
    r"^\d{3}-\d{4}$",
    r"^[A-Z][a-z]*(?: [A-Z][a-z]*){0,3}$",
    r"^(?:red|green|blue)$",
    r"^a.c$",
    r"^[^a-c]{2,4}$",
    r'^["\\/]+x$',
    r"^\w+@\w+\.(com|org)$",
    r"^-?\d+(\.\d{1,2})?$",
    r"^\s*\S+\s*$",
    r"^[\t\n]?x$",
    r"ab",  # anywhere
    r"^ab",
    r"ab$",
    r"^a|b$",
    r"^(a|)x$",
    r"^x{2}y{0,3}z{1,}$",
    r"^[-a]b[a-]$",
    r"^\x41\u00e9\.\(\)$",
    r"^(?<word>[a-z]{2})-\d$",
    r"^a*?b+?c??$",
    r"^{x}$",  # a brace that is no repetition is a literal, as browsers read it
]
# ECMA-262's \s, which Python's re.ASCII narrows to ASCII
_SPACE = r"\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def python_regex(pattern: str) -> re.Pattern[str]:
    """The pattern as Python's re reads ECMA-262 (for the patterns above)."""
    python = (
        pattern.replace("$", r"\Z")  # Python's '$' also matches before a final newline
        .replace("^{x}", r"^\{x\}")
        .replace("(?<", "(?P<")
        .replace(r"\s", f"[{_SPACE}]")
        .replace(r"\S", f"[^{_SPACE}]")
    )
    return re.compile(python, re.ASCII)


ALPHABET = 'abcxyzABRZ0129-_.@ "\\/\t\néé()!{}'


def grammar_of(schema: dict[str, Any]) -> re.Pattern[str]:
    return gbnf_regex(answer_grammar(schema), "answer")


def matches(rx_json: re.Pattern[str], s: str) -> bool:
    return rx_json.fullmatch(json.dumps(s, ensure_ascii=False)) is not None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_grammar_admits_what_the_pattern_matches(pattern: str) -> None:
    compiled = python_regex(pattern)
    got = grammar_of({"type": "string", "pattern": pattern})
    rng = random.Random(pattern)
    tree = rx.parse(pattern, max_repetition=50, max_depth=10)
    candidates = {sample(tree, rng) for _ in range(300)}
    for _ in range(1500):
        candidates.add("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 7))))
    for s in list(candidates)[:200]:  # near misses
        if s:
            i = rng.randrange(len(s))
            candidates.add(s[:i] + rng.choice(ALPHABET) + s[i + 1 :])
            candidates.add(s[:i] + s[i + 1 :])
    for s in candidates:
        assert matches(got, s) == (compiled.search(s) is not None), (pattern, s)


def test_json_escapes_are_written_the_one_way_json_does() -> None:
    got = grammar_of({"type": "string", "pattern": r'^["\\]\n$'})
    assert got.fullmatch(r'"\"\n"') and got.fullmatch(r'"\\\n"')
    assert not got.fullmatch('"\\u0022\\n"') and not got.fullmatch('""\n"')
    # '.' never writes a raw control character or an unescaped quote
    dot = grammar_of({"type": "string", "pattern": "^.$"})
    assert dot.fullmatch('"\\""') and dot.fullmatch('"\\t"')
    assert not dot.fullmatch('"""') and not dot.fullmatch('"\x01"') and not dot.fullmatch('"\\n"')


@pytest.mark.parametrize(
    "pattern, lo, hi",
    [(r"^[a-z]+$", 3, 8), (r"^[a-z]+(\.[a-z]+)*$", 5, 30), (r"^\d{2,10}$", 0, 4),
     (r"^(ab|c)+$", 6, None), ("x", 0, 12), (r"^[a-z]*$", 700, None)],
)  # fmt: skip
def test_lengths_narrow_a_pattern(pattern: str, lo: int, hi: int | None) -> None:
    schema: dict[str, Any] = {"type": "string", "pattern": pattern, "minLength": lo}
    if hi is not None:
        schema["maxLength"] = hi
    got = grammar_of(schema)
    compiled = python_regex(pattern)
    tree = rx.fit(rx.parse(pattern, max_repetition=2000, max_depth=10), lo, hi,
                  max_repetition=2000)  # fmt: skip
    assert tree is not None
    rng = random.Random(1)
    for _ in range(300):
        s = sample(tree, rng)
        assert compiled.search(s) and lo <= len(s) <= (hi or 10**9), s
        assert matches(got, s), s
    for s in ("a" * (lo - 1) if lo else None, None if hi is None else "a" * (hi + 1)):
        if s is not None:
            assert not matches(got, s)


@pytest.mark.parametrize(
    "pattern, named",
    [("^a{0,100000}$", "100000"), ("^a{5000,}$", "5000"), ("^(ab){2001}$", "2001"),
     ("^a{99999999999999999999}$", "999999999"), ("^(?=a)a$", "lookarounds"),
     ("^(?<!a)b$", "lookarounds"), (r"^(a)\1$", "backreferences"), (r"^\bx$", "word bound"),
     (r"^\p{L}$", "Unicode properties"), ("^(a?)*$", "can match nothing"),
     ("^(a|b?){2,}$", "can match nothing"), ("^a$b$", "'$' before the end"),
     ("^a^b$", "'^' inside"), ("(" * 80 + ")" * 80, "nested more than 64")],
)  # fmt: skip
def test_what_cannot_be_enforced_is_refused(pattern: str, named: str) -> None:
    with pytest.raises(UnsupportedParameterError) as info:
        check_schema({"type": "string", "pattern": pattern}, name="answer")
    assert info.value.param == "response_format" and named in info.value.message
    assert "'pattern'" in info.value.message


@pytest.mark.parametrize(
    "pattern", ["^(a", "^[a$", "^a{2,1}$", "^*a$", "^a**$", "^a{2}{3}$", "^[z-a]$", "\\",
                r"^\u12$", r"^\x4$", r"^\q$", r"^[\d-z]$", "^(?<name$"],
)  # fmt: skip
def test_malformed_patterns_are_invalid(pattern: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_schema({"type": "string", "pattern": pattern}, name="answer")
    assert not isinstance(info.value, UnsupportedParameterError), info.value.message
    assert info.value.param == "response_format" and "'pattern'" in info.value.message


def test_a_pattern_that_matches_nothing_writable_is_invalid() -> None:
    for pattern in (r"^[\x00-\x07]$", "^[]a]$"):  # in ECMA-262, [] is a class of nothing
        with pytest.raises(InvalidRequestError, match="matches no string"):
            check_schema({"type": "string", "pattern": pattern}, name="answer")
    with pytest.raises(OasisError, match="together with 'pattern'"):
        check_schema({"type": "string", "pattern": "^abc$", "maxLength": 2}, name="answer")


def test_repetitions_are_flat_rules_not_nested_groups() -> None:
    g = answer_grammar({"type": "string", "pattern": "^(a{0,2000}b){0,2000}$"})
    assert "{0,2000}" in g and g.count("(") < 10
