"""Regular expressions (``pattern``, and the string formats) as GBNF for JSON string contents.

A pattern is parsed into a small tree (character sets, sequences, alternatives, repetitions)
of the ECMA-262 syntax JSON Schema uses: literals and escapes, ``.``, classes, ``\\d \\w \\s``
and their negations, groups (capturing, ``(?:``, named), ``|``, ``* + ? {m} {m,} {m,n}``
(lazy or not: the language is the same), and ``^`` / ``$`` at the ends (a pattern not
anchored matches anywhere in the string, as JSON Schema says). Lookarounds, backreferences,
word boundaries and Unicode properties are refused. Every count is bounded before anything
is built.

The grammar matches the string as JSON writes it: ``"`` and ``\\`` escaped, tab, newline,
carriage return, backspace and form feed as ``\\t \\n \\r \\b \\f``; other control characters
are never written, so sets are cut to what can be written before lengths are counted.
Repetitions become GBNF ``{m,n}`` on a rule of their own, never nested groups.

``fit`` narrows a tree to a length range (``minLength`` / ``maxLength`` beside a pattern or a
format) by bounding its repetitions: the strings left are a subset of the pattern's, all of
the right length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from oasis.serving.gbnf import char_class, literal, repeat

MAX_CODE_POINT = 0x10FFFF
Ranges = tuple[tuple[int, int], ...]


class PatternError(ValueError):
    """A pattern oasis cannot read or enforce; ``unsupported`` tells which of the two."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


# -- character sets ---------------------------------------------------------------------------


def _norm(ranges: list[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[0] <= r[1]):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def _invert(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for a, b in ranges:
        if a > start:
            out.append((start, a - 1))
        start = b + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return tuple(out)


def _intersect(x: Ranges, y: Ranges) -> Ranges:
    return _invert(_norm([*_invert(x), *_invert(y)]))


# JSON writes these characters as two-character escapes.
_SHORT_ESCAPES = {
    0x22: '\\"',
    0x5C: "\\\\",
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
}
# Raw in JSON: all but '"', '\', the controls, DEL (kept out, like the string rule) and the
# surrogates (never a character of their own in UTF-8).
_RAW = _norm([(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7E), (0x80, 0xD7FF), (0xE000, MAX_CODE_POINT)])
WRITABLE = _norm([*_RAW, *((c, c) for c in _SHORT_ESCAPES)])
_DIGIT = _norm([(0x30, 0x39)])
_WORD = _norm([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
_SPACE = _norm(
    [
        (0x09, 0x0D),
        (0x20, 0x20),
        (0xA0, 0xA0),
        (0x1680, 0x1680),
        (0x2000, 0x200A),
        (0x2028, 0x2029),
        (0x202F, 0x202F),
        (0x205F, 0x205F),
        (0x3000, 0x3000),
        (0xFEFF, 0xFEFF),
    ]
)
_LINE_ENDS = _norm([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)])
_CLASS_ESCAPES = {
    "d": _DIGIT,
    "D": _invert(_DIGIT),
    "w": _WORD,
    "W": _invert(_WORD),
    "s": _SPACE,
    "S": _invert(_SPACE),
}
_CONTROL_ESCAPES = {"t": 0x09, "n": 0x0A, "v": 0x0B, "f": 0x0C, "r": 0x0D}


# -- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chars:
    ranges: Ranges


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    node: Node
    lo: int
    hi: int | None  # None: unbounded


Node = Chars | Seq | Alt | Repeat
ANY = Repeat(Chars(WRITABLE), 0, None)


def chars(ranges: list[tuple[int, int]] | Ranges) -> Chars:
    """A set cut to the characters a JSON string can hold as oasis writes them."""
    return Chars(_intersect(_norm(list(ranges)), WRITABLE))


# -- parsing ----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, src: str, max_repetition: int, max_depth: int) -> None:
        self.src, self.i = src, 0
        self.max_repetition, self.max_depth = max_repetition, max_depth

    def fail(self, what: str, *, unsupported: bool = False) -> PatternError:
        return PatternError(f"{what} at position {self.i}", unsupported=unsupported)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.src[j] if j < len(self.src) else ""

    def top(self) -> Node:
        options = [self.anchored()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.anchored())
        if self.i < len(self.src):
            raise self.fail("unbalanced ')'")
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def anchored(self) -> Node:
        start = self.peek() == "^"
        if start:
            self.i += 1
        node = self.sequence(0)
        end = self.peek() == "$"
        if end:
            self.i += 1
            if self.peek() not in ("", "|"):
                raise self.fail("'$' before the end", unsupported=True)
        items = ([] if start else [ANY]) + [node] + ([] if end else [ANY])
        return node if len(items) == 1 else Seq(tuple(items))

    def alternation(self, depth: int) -> Node:
        options = [self.sequence(depth)]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence(depth))
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def sequence(self, depth: int) -> Node:
        items: list[Node] = []
        while self.peek() not in ("", "|", ")") and not (depth == 0 and self.peek() == "$"):
            atom = self.atom(depth)
            items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def atom(self, depth: int) -> Node:
        c = self.peek()
        if c == "(":
            if depth + 1 > self.max_depth:
                raise self.fail(f"groups nested more than {self.max_depth} deep", unsupported=True)
            self.i += 1
            if self.peek() == "?":
                if self.src.startswith("?:", self.i):
                    self.i += 2
                elif self.peek(1) == "<" and self.peek(2) not in ("=", "!"):
                    end = self.src.find(">", self.i)
                    if end < 0:
                        raise self.fail("an unterminated group name")
                    self.i = end + 1
                else:
                    raise self.fail("lookarounds", unsupported=True)
            node = self.alternation(depth + 1)
            if self.peek() != ")":
                raise self.fail("an unterminated group")
            self.i += 1
            return node
        if c == "[":
            return self.klass()
        if c == ".":
            self.i += 1
            return chars(_invert(_LINE_ENDS))
        if c in ("*", "+", "?") or (c == "{" and self.counts() is not None):
            raise self.fail("nothing to repeat")
        if c == "^" or c == "$":
            raise self.fail(f"'{c}' inside the pattern", unsupported=True)
        if c == "\\":
            return chars(self.escape(in_class=False))
        self.i += 1
        return chars([(ord(c), ord(c))])

    def escape(self, *, in_class: bool) -> Ranges:
        self.i += 1  # the backslash
        c = self.peek()
        if not c:
            raise self.fail("a trailing backslash")
        self.i += 1
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        if c in _CONTROL_ESCAPES:
            return ((_CONTROL_ESCAPES[c],) * 2,)
        if c == "b" and in_class:
            return ((0x08, 0x08),)
        if c == "0" and not self.peek().isdigit():
            return ((0, 0),)
        if c in ("x", "u"):
            width = 2 if c == "x" else 4
            digits = self.src[self.i : self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"a malformed \\{c} escape")
            self.i += width
            cp = int(digits, 16)
            return ((cp, cp),)
        if c == "c" and self.peek().isascii() and self.peek().isalpha():
            cp = ord(self.peek()) % 32
            self.i += 1
            return ((cp, cp),)
        if c.isalnum():
            what = {
                "b": "word boundaries",
                "B": "word boundaries",
                "p": "Unicode properties",
                "P": "Unicode properties",
                "k": "backreferences",
            }.get(c)
            if c.isdigit():
                what = "backreferences"
            raise self.fail(what or f"the escape \\{c}", unsupported=what is not None)
        return ((ord(c), ord(c)),)

    def klass(self) -> Node:
        self.i += 1  # [
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        while True:
            c = self.peek()
            if not c:
                raise self.fail("an unterminated character class")
            if c == "]":
                self.i += 1
                break
            first = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                last = self.class_atom()
                if (
                    len(first) != 1
                    or len(last) != 1
                    or first[0][0] != first[0][1]
                    or (last[0][0] != last[0][1])
                ):
                    raise self.fail("a range with a class escape at one end")
                if first[0][0] > last[0][0]:
                    raise self.fail("a range out of order")
                ranges.append((first[0][0], last[0][0]))
            else:
                ranges.extend(first)
        norm = _norm(ranges)
        return chars(_invert(norm) if negate else norm)

    def class_atom(self) -> Ranges:
        c = self.peek()
        if c == "\\":
            return self.escape(in_class=True)
        self.i += 1
        return ((ord(c), ord(c)),)

    def counts(self) -> tuple[int, int | None, int] | None:
        """``{m}``, ``{m,}`` or ``{m,n}`` at the cursor: (m, n, length), or None (a literal
        brace, as ECMA-262's web-compatibility grammar reads it)."""
        j = self.i + 1
        end = self.src.find("}", j)
        if end < 0:
            return None
        body = self.src[j:end]
        lo_s, comma, hi_s = body.partition(",")
        if (
            not lo_s.isdigit()
            or not (hi_s == "" or hi_s.isdigit())
            or not lo_s.isascii()
            or (not hi_s.isascii())
        ):
            return None
        lo = self.count(lo_s)
        hi = lo if not comma else (self.count(hi_s) if hi_s else None)
        return lo, hi, end + 1 - self.i

    def count(self, digits: str) -> int:
        n = int(digits) if len(digits) <= 9 else 10**9
        if n > self.max_repetition:
            raise PatternError(
                f"the repetition count {digits if len(digits) <= 9 else digits[:9] + '...'} is "
                f"above the limit of {self.max_repetition}",
                unsupported=True,
            )
        return n

    def quantified(self, atom: Node) -> Node:
        c = self.peek()
        if c == "*":
            lo, hi, width = 0, None, 1
        elif c == "+":
            lo, hi, width = 1, None, 1
        elif c == "?":
            lo, hi, width = 0, 1, 1
        elif c == "{" and (found := self.counts()) is not None:
            lo, hi, width = found
            if hi is not None and hi < lo:
                raise self.fail("a repetition {m,n} with n < m")
        else:
            return atom
        self.i += width
        if self.peek() == "?":  # lazy: the same strings
            self.i += 1
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self.counts()):
            raise self.fail("a repetition of a repetition")
        span = lengths(atom)
        if (hi is None or hi > 1) and span is not None and span[0] == 0:
            # (a?)*: llama.cpp would try every way of repeating nothing, at every step
            raise self.fail("a repetition of a group that can match nothing", unsupported=True)
        return Repeat(atom, lo, hi)


def parse(pattern: str, *, max_repetition: int, max_depth: int) -> Node:
    """The tree of ``pattern``; PatternError if it cannot be read or enforced."""
    return _Parser(pattern, max_repetition, max_depth).top()


# -- lengths ----------------------------------------------------------------------------------

Lengths = tuple[int, float] | None  # (shortest, longest: math.inf if unbounded); None: empty


def lengths(node: Node) -> Lengths:
    """The shortest and longest strings of a tree, in characters; None if it has none."""
    if isinstance(node, Chars):
        return (1, 1) if node.ranges else None
    if isinstance(node, Seq):
        lo, hi = 0, 0.0
        for item in node.items:
            got = lengths(item)
            if got is None:
                return None
            lo, hi = lo + got[0], hi + got[1]
        return lo, hi
    if isinstance(node, Alt):
        found = [x for x in map(lengths, node.options) if x is not None]
        return (min(x[0] for x in found), max(x[1] for x in found)) if found else None
    inner = lengths(node.node)
    if inner is None:
        return (0, 0) if node.lo == 0 else None
    top = math.inf if node.hi is None else node.hi
    return node.lo * inner[0], (0.0 if inner[1] == 0 else top * inner[1])


def _has_repeat(node: Node) -> bool:
    if isinstance(node, Repeat):
        return True
    if isinstance(node, Seq):
        return any(map(_has_repeat, node.items))
    if isinstance(node, Alt):
        return any(map(_has_repeat, node.options))
    return False


@dataclass(frozen=True)
class _Caps:
    """Bounds put on repetitions. An unbounded one at most ``open`` times (None: left
    unbounded); one of characters only ("leaf") at most ``leaf`` times and at least
    ``leaf_floor`` (where it may), one of something that repeats inside at most ``outer`` and
    at least ``outer_floor`` times (None: as it is); none beyond its own bounds."""

    leaf_floor: int = 0
    outer_floor: int = 0
    open: int | None = None
    leaf: int | None = None
    outer: int | None = None


def _bounded(node: Node, caps: _Caps) -> Node:
    if isinstance(node, Chars):
        return node
    if isinstance(node, Seq):
        return Seq(tuple(_bounded(x, caps) for x in node.items))
    if isinstance(node, Alt):
        return Alt(tuple(_bounded(x, caps) for x in node.options))
    hi = caps.open if node.hi is None else node.hi
    outer = _has_repeat(node.node)
    cap = caps.outer if outer else caps.leaf
    floor = caps.outer_floor if outer else caps.leaf_floor
    if cap is not None:
        hi = cap if hi is None else min(hi, cap)
    hi = None if hi is None else max(hi, node.lo)
    lo = max(node.lo, floor if hi is None else min(floor, hi))
    return replace(node, node=_bounded(node.node, caps), lo=lo, hi=hi)


def _search(ok: Callable[[int], bool], lo: int, hi: int, *, largest: bool) -> int | None:
    """The largest (or smallest) n in lo..hi with ok(n), for ok monotone; None if none."""
    if largest:
        if not ok(lo):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
        return lo
    if not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def _repeats(node: Node) -> list[Repeat]:
    """The repetitions of a tree, in order (without recursion into a deep stack: trees are
    as deep as a pattern's groups, which are bounded)."""
    if isinstance(node, Repeat):
        return [node, *_repeats(node.node)]
    if isinstance(node, Seq):
        return [r for x in node.items for r in _repeats(x)]
    if isinstance(node, Alt):
        return [r for x in node.options for r in _repeats(x)]
    return []


def _with(node: Node, bounds: dict[int, tuple[int, int | None]]) -> Node:
    """The tree with new bounds for some repetitions (by ``id``)."""
    if isinstance(node, Chars):
        return node
    if isinstance(node, Seq):
        return Seq(tuple(_with(x, bounds) for x in node.items))
    if isinstance(node, Alt):
        return Alt(tuple(_with(x, bounds) for x in node.options))
    lo, hi = bounds.get(id(node), (node.lo, node.hi))
    return Repeat(_with(node.node, bounds), lo, hi)


def _weights(
    node: Node, bounds: dict[int, tuple[int, int | None]], times: float, out: dict[int, float]
) -> None:
    """How much each repetition adds to the longest string: what it repeats, times its
    excess over its minimum, times the repetitions around it."""
    if isinstance(node, Seq | Alt):
        for x in node.items if isinstance(node, Seq) else node.options:
            _weights(x, bounds, times, out)
    elif isinstance(node, Repeat):
        lo, hi = bounds.get(id(node), (node.lo, node.hi))
        inner = lengths(_with(node.node, bounds))
        unit = 0.0 if inner is None else float(inner[1])
        if inner is not None and _has_repeat(node.node):
            # what holds repetitions can also shrink inside: count it between its shortest
            # and its longest, so the pieces and their number shrink together
            unit = math.sqrt(max(inner[0], 1) * inner[1])
        out[id(node)] = unit * times * ((hi if hi is not None else math.inf) - lo)
        _weights(node.node, bounds, times * (hi if hi is not None else 1), out)


def _shorten(node: Node, top: float, max_repetition: int) -> Node | None:
    """``node`` with no string longer than ``top``: the repetition that adds the most to the
    longest string gives up half of its excess over its minimum, again and again (so the
    pieces of a URL or an email shrink together and keep their shape)."""
    reps = _repeats(node)
    bounds: dict[int, tuple[int, int | None]] = {
        id(r): (r.lo, max_repetition if r.hi is None else r.hi) for r in reps
    }
    for _ in range(20 * len(reps) + 20):
        tree = _with(node, bounds)
        got = lengths(tree)
        if got is None:
            return None
        if got[1] <= top:
            return tree
        weights: dict[int, float] = {}
        _weights(node, bounds, 1.0, weights)
        key = max(weights, key=lambda k: weights[k], default=None)
        if key is None or weights[key] <= 0:
            return None
        lo, hi = bounds[key]
        assert hi is not None
        bounds[key] = (lo, lo + (hi - lo) // 2)
    return None


def fit(node: Node, min_len: int, max_len: int | None, *, max_repetition: int) -> Node | None:
    """``node`` narrowed so that all its strings have min_len..max_len characters (None: no
    maximum), by bounding its repetitions, never to more than ``max_repetition``; None if
    that cannot be done. The strings left are some of the pattern's, never others.

    Too long: the repetition that adds the most gives up half its excess, until it fits (for
    a tree of at most 64 repetitions; a larger one gets common bounds: first on the unbounded
    repetitions, then on those of characters, then on those that hold others). Too short: the
    repetitions of characters are made to repeat at least a common number of times, and if
    that is not enough, the others too.
    """
    got = lengths(node)
    if got is None:
        return None
    top = math.inf if max_len is None else max_len
    if got[0] >= min_len and got[1] <= top:
        return node

    def longest(caps: _Caps) -> float:
        x = lengths(_bounded(node, caps))
        return math.inf if x is None else x[1]

    def shortest(caps: _Caps) -> float:
        x = lengths(_bounded(node, caps))
        return -1 if x is None else x[0]

    n = max_repetition
    caps = _Caps()
    if got[1] > top and len(_repeats(node)) <= 64:
        shorter = _shorten(node, top, n)
        if shorter is None:
            return None
        node = shorter
    elif got[1] > top:
        c = _search(lambda c: longest(_Caps(open=c)) <= top, 0, n, largest=True)
        if c is not None:
            caps = _Caps(open=c)
        else:
            leaf = _search(
                lambda c: longest(_Caps(open=0, leaf=c, outer=0)) <= top, 0, n, largest=True
            )
            if leaf is None:
                return None
            outer = _search(
                lambda c: longest(_Caps(open=0, leaf=leaf, outer=c)) <= top, 0, n, largest=True
            )
            assert outer is not None
            caps = _Caps(open=0, leaf=leaf, outer=outer)
    if shortest(caps) < min_len:
        leaf = _search(
            lambda f: shortest(replace(caps, leaf_floor=f)) >= min_len, 0, n, largest=False
        )
        if leaf is not None:
            caps = replace(caps, leaf_floor=leaf)
        else:
            caps = replace(caps, leaf_floor=n)
            outer = _search(
                lambda f: shortest(replace(caps, outer_floor=f)) >= min_len, 0, n, largest=False
            )
            if outer is None:
                return None
            caps = replace(caps, outer_floor=outer)
    out = _bounded(node, caps)
    got = lengths(out)
    return out if got is not None and got[0] >= min_len and got[1] <= top else None


# -- GBNF -------------------------------------------------------------------------------------

AddRule = Callable[[str, str], str]  # (name hint, body) -> rule name


def _json_text(cp: int) -> str:
    return _SHORT_ESCAPES.get(cp, chr(cp))


def _set_gbnf(ranges: Ranges) -> str:
    raw = _intersect(ranges, _RAW)
    escaped = [cp for cp in sorted(_SHORT_ESCAPES) if any(a <= cp <= b for a, b in ranges)]
    alts = []
    if raw:
        inverse = _intersect(_invert(raw), ((0, MAX_CODE_POINT),))
        # the shorter class; a negated one excludes what is not raw by itself
        if len(inverse) < len(raw):
            alts.append(char_class(list(inverse), negate=True))
        else:
            alts.append(char_class(list(raw)))
    alts += [literal(_json_text(cp)) for cp in escaped]
    return alts[0] if len(alts) == 1 else "( " + " | ".join(alts) + " )"


def to_gbnf(node: Node, add_rule: AddRule, hint: str) -> str:
    """A GBNF expression for the JSON-escaped text of the strings of ``node`` (non-empty)."""
    if isinstance(node, Chars):
        r = node.ranges
        if len(r) == 1 and r[0][0] == r[0][1]:
            return literal(_json_text(r[0][0]))
        return _set_gbnf(r)
    if isinstance(node, Seq):
        parts: list[str] = []
        text: list[str] = []  # consecutive single characters, written as one literal
        for item in node.items:
            if (
                isinstance(item, Chars)
                and len(item.ranges) == 1
                and (item.ranges[0][0] == item.ranges[0][1])
            ):
                text.append(_json_text(item.ranges[0][0]))
                continue
            if text:
                parts.append(literal("".join(text)))
                text = []
            written = to_gbnf(item, add_rule, hint)
            if written:
                parts.append(written)
        if text:
            parts.append(literal("".join(text)))
        return " ".join(parts)
    if isinstance(node, Alt):
        options = [to_gbnf(x, add_rule, hint) for x in node.options if lengths(x) is not None]
        filled = list(dict.fromkeys(x for x in options if x))
        if not filled:
            return ""
        body = filled[0] if len(filled) == 1 else "( " + " | ".join(filled) + " )"
        if len(filled) < len(options):  # an option of the empty string only
            return f"( {body} )?"
        return body
    span = lengths(node.node)
    if span is None or span[1] == 0 or node.hi == 0:
        return ""
    inner = node.node
    if isinstance(inner, Chars):
        unit = to_gbnf(inner, add_rule, hint)
    else:  # a rule of its own: llama.cpp repeats one symbol, and nothing nests
        unit = add_rule(hint, to_gbnf(inner, add_rule, hint))
    return repeat(unit, node.lo, node.hi)
