"""GBNF text for llama.cpp grammars: literals, character classes, a rule table, and the limits
every grammar oasis builds is held to.

Why limits: llama.cpp's grammar parser is recursive (a group nested 10^4 deep overflows the C
stack), refuses ``x{m,}`` above 2000 and quietly reads ``x{m,n}`` with n above 2000 as
unbounded, and expands ``x{0,n}`` into n rules of its own (about 150 bytes each, for every
compiled grammar it keeps). So oasis writes repetitions as ``{m,n}`` (never as nested groups),
bounds every count before it writes it (``Limits.repetition``), and checks the finished text:
its size (``Limits.grammar_bytes``) and the rules its repetitions expand to
(``Limits.expansion``), so a request is refused with a 400 before llama.cpp sees anything it
could not hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# llama.cpp's MAX_REPETITION_THRESHOLD (src/llama-grammar.cpp): the most a {m,n} may repeat.
LLAMA_MAX_REPETITION = 2000


@dataclass(frozen=True)
class Limits:
    """How far a JSON schema may push the grammar built from it.

    ``repetition``: the largest count oasis writes into one repetition (``maxLength``,
    ``minItems``, a pattern's ``{m,n}``...): llama.cpp's own ceiling, so every count oasis
    accepts is enforced exactly (above it llama.cpp refuses a minimum and ignores a maximum).
    ``depth``: how deeply a schema (or a pattern's groups) may nest; far more than any real
    schema (OpenAI allows 10 levels of nesting) and far less than Python's recursion limit.
    ``properties`` (in one object) and ``references`` (distinct ``$ref`` targets and
    definitions in one schema): llama.cpp walks a run of optional members, and a chain of
    rules that only name the next, one C stack frame per step at every token (100,000 crash
    it, 20,000 take a second); 1000 take about 2 ms.
    ``grammar_bytes``: the size of the whole grammar text. ``expansion``: the rules llama.cpp
    makes of all the repetitions together, about 8 MB and 20 ms of parsing at the limit.
    """

    repetition: int = LLAMA_MAX_REPETITION
    depth: int = 64
    properties: int = 1000
    references: int = 1000
    grammar_bytes: int = 256 * 1024
    expansion: int = 50_000


DEFAULT_LIMITS = Limits()

_LITERAL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# llama.cpp knows the escapes \\ \] \[ (and \x \u \U); '-' and '^' are written in hex
_CLASS_ESCAPES = {"\\": "\\\\", "]": "\\]", "[": "\\[", "-": "\\x2D", "^": "\\x5E"}


def literal(text: str) -> str:
    """A GBNF literal matching exactly ``text``."""
    out = []
    for ch in text:
        if ch in _LITERAL_ESCAPES:
            out.append(_LITERAL_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def class_char(cp: int) -> str:
    """One character inside a GBNF character class."""
    ch = chr(cp)
    if 0x20 < cp < 0x7F:
        return _CLASS_ESCAPES.get(ch, ch)
    if cp <= 0xFF:
        return f"\\x{cp:02X}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


def char_class(ranges: list[tuple[int, int]], *, negate: bool = False) -> str:
    """A GBNF character class of inclusive code point ranges."""
    parts = []
    for a, b in ranges:
        if a == b:
            parts.append(class_char(a))
        elif b == a + 1:
            parts.append(class_char(a) + class_char(b))
        else:
            parts.append(f"{class_char(a)}-{class_char(b)}")
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def repeat(item: str, lo: int, hi: int | None) -> str:
    """``item`` repeated lo..hi times (hi None: unbounded); ``item`` must be one symbol: a
    rule name, a class, a literal or a group."""
    if hi is not None and hi == 0:
        return ""
    if lo == hi == 1:
        return item
    if hi is None:
        return f"{item}*" if lo == 0 else f"{item}+" if lo == 1 else f"{item}{{{lo},}}"
    if lo == 0 and hi == 1:
        return f"{item}?"
    return f"{item}{{{lo}}}" if lo == hi else f"{item}{{{lo},{hi}}}"


_NAME_CHARS = re.compile(r"[^a-zA-Z0-9-]+")


class Rules:
    """Named GBNF rules: equal bodies share one rule, names are short and unique."""

    def __init__(self, taken: tuple[str, ...] = ()) -> None:
        # name -> body (None: reserved, not yet set); ``taken``: names never handed out
        self._bodies: dict[str, str | None] = dict.fromkeys(taken)
        self._by_body: dict[str, str] = {}
        self.size = 0  # bytes of rule text so far

    def reserve(self, hint: str) -> str:
        """A fresh name whose body comes later (``define``): for recursive references."""
        base = _NAME_CHARS.sub("-", hint).strip("-")[:48].strip("-") or "r"
        name, i = base, 1
        while name in self._bodies:
            name, i = f"{base}-{i}", i + 1
        self._bodies[name] = None
        return name

    def define(self, name: str, body: str) -> None:
        self._bodies[name] = body
        self.size += len(name) + len(body.encode()) + 6

    def add(self, hint: str, body: str) -> str:
        """The name of a rule with this body, made if there is none yet."""
        if body in self._by_body:
            return self._by_body[body]
        name = self.reserve(hint)
        self.define(name, body)
        self._by_body[body] = name
        return name

    def fixed(self, name: str, body: str) -> str:
        """A rule under exactly this name (shared primitives such as ``string``), which
        should be among ``taken``."""
        if self._bodies.get(name) is None:
            self.define(name, body)
            self._by_body.setdefault(body, name)
        return name

    def has(self, name: str) -> bool:
        """Is there a rule (not only a reserved name) called ``name``?"""
        return self._bodies.get(name) is not None

    def text(self) -> str:
        return "".join(f"{n} ::= {b}\n" for n, b in self._bodies.items() if b is not None)


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{\s*(\d+)\s*(,\s*(\d*))?\s*\}')


@dataclass(frozen=True)
class Measure:
    size: int  # bytes of GBNF text
    expansion: int  # rules llama.cpp makes of the {m,n} repetitions
    largest: int  # the largest count in one repetition


def measure(gbnf: str) -> Measure:
    """What a grammar costs llama.cpp to hold (literals and classes are skipped over)."""
    expansion = largest = 0
    for m in _TOKENS.finditer(gbnf):
        if m.group(1) is None:
            continue
        lo = _number(m.group(1))
        hi = lo if m.group(2) is None else _number(m.group(3)) if m.group(3) else None
        count = max(lo, hi or 0) + (1 if hi is None else 0)
        expansion += count
        largest = max(largest, lo, hi or 0)
    return Measure(len(gbnf.encode()), expansion, largest)


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 9 else 10**9
