"""GBNF text (serving/gbnf.py), and the helpers the schema tests share: a grammar read back as a
Python regular expression (rules inlined), and random strings of a pattern's tree.

oasis's grammars use only literals, classes, groups, ``|``, ``?``, ``*``, ``+``, ``{m,n}`` and
rule names, so a non-recursive grammar is a regular expression once its rules are inlined and
its literals escaped; the class escapes llama.cpp knows mean the same to Python's ``re``.
"""

from __future__ import annotations

import random
import re

import pytest

from oasis.serving import pattern as rx
from oasis.serving.gbnf import Rules, char_class, literal, measure, repeat

_LITERAL_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]"}


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        else:
            out.append(_LITERAL_ESCAPES[e])
            i += 2
    return "".join(out)


_TOKEN = re.compile(
    r'\s+|"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[a-zA-Z0-9-]+|\{\d*(?:,\d*)?\}|[()|*+?]'
)


def rules_of(gbnf: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in gbnf.split("\n") if " ::= " in line)


def gbnf_regex(gbnf: str, rule: str = "root") -> re.Pattern[str]:
    """The rule as a Python regex (its rules inlined; the grammar must not recurse)."""
    rules = rules_of(gbnf)
    done: dict[str, str] = {}

    def convert(name: str, seen: tuple[str, ...]) -> str:
        if name in done:
            return done[name]
        assert name not in seen, f"recursive rule {name}"
        out = []
        for m in _TOKEN.finditer(rules[name]):
            tok = m.group(0)
            if tok.isspace():
                continue
            if tok.startswith('"'):
                out.append(re.escape(_unescape(tok[1:-1])))
            elif tok.startswith("["):
                out.append(tok)
            elif tok == "(":
                out.append("(?:")
            elif tok in (")", "|", "*", "+", "?") or tok.startswith("{"):
                out.append(tok)
            else:
                out.append(f"(?:{convert(tok, (*seen, name))})")
        assert "".join(m.group(0) for m in _TOKEN.finditer(rules[name])) == rules[name]
        done[name] = "".join(out)
        return done[name]

    return re.compile(convert(rule, ()), re.DOTALL)


def sample(node: rx.Node, rng: random.Random, spread: int = 6) -> str:
    """A random string of a pattern tree (unbounded repetitions up to ``spread`` more)."""
    if isinstance(node, rx.Chars):
        a, b = rng.choice(node.ranges)
        return chr(rng.randint(a, b))
    if isinstance(node, rx.Seq):
        return "".join(sample(x, rng, spread) for x in node.items)
    if isinstance(node, rx.Alt):
        live = [x for x in node.options if rx.lengths(x) is not None]
        return sample(rng.choice(live), rng, spread)
    top = node.lo + spread if node.hi is None else node.hi
    n = rng.randint(node.lo, max(node.lo, min(top, node.lo + 40)))
    if rng.random() < 0.2:
        n = rng.choice([node.lo, top])
    return "".join(sample(node.node, rng, spread) for _ in range(n))


# -- gbnf.py ----------------------------------------------------------------------------------


def test_literals_and_classes_read_back_exactly() -> None:
    text = 'a"b\\c\nd\te\r\x01\x7f é🙂'
    assert re.fullmatch(gbnf_regex(f"root ::= {literal(text)}"), text)
    ranges = [(0x2D, 0x2D), (0x5E, 0x5E), (0x5B, 0x5D), (0x41, 0x5A), (0xE9, 0xE9),
              (0x1F600, 0x1F64F)]  # fmt: skip
    cls = char_class(ranges)
    assert "\\^" not in cls and "\\-" not in cls  # llama.cpp knows neither escape
    got = gbnf_regex(f"root ::= {cls}+")
    for ch in "-^[\\]AZé😀":
        assert got.fullmatch(ch), ch
    for ch in "a@_ ":
        assert not got.fullmatch(ch), ch
    neg = gbnf_regex(f"root ::= {char_class([(0x61, 0x7A)], negate=True)}")
    assert neg.fullmatch("A") and not neg.fullmatch("q")


@pytest.mark.parametrize(
    "lo, hi, text",
    [(0, None, "x*"), (1, None, "x+"), (3, None, "x{3,}"), (0, 1, "x?"), (1, 1, "x"),
     (2, 2, "x{2}"), (2, 5, "x{2,5}"), (0, 0, "")],
)  # fmt: skip
def test_repeat(lo: int, hi: int | None, text: str) -> None:
    assert repeat("x", lo, hi) == text


def test_rules_share_equal_bodies_and_keep_names_short() -> None:
    rules = Rules(("string",))
    a = rules.add("answer-x", '"a"')
    assert rules.add("answer-y", '"a"') == a
    b = rules.add("answer-x", '"b"')
    assert b != a and b.startswith("answer-x")
    long = rules.add("p-" + "very-long-name" * 20 + "!!", '"c"')
    assert len(long) <= 48 and re.fullmatch(r"[a-zA-Z0-9-]+", long)
    assert rules.reserve("string") != "string"  # a primitive's name is never handed out
    assert rules.size > 0 and '"a"' in rules.text()


def test_measure_counts_repetitions_outside_literals_and_classes() -> None:
    got = measure('root ::= x{0,2000} "{5}" [{}] y{3} z{7,}\nx ::= "a"\ny ::= "b"\nz ::= "c"\n')
    assert got.expansion == 2000 + 3 + 8 and got.largest == 2000
    assert measure("root ::= x{99999999999999}").largest == 10**9
