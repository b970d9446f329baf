"""A JSON schema as GBNF rules: every keyword checked, enforced, or refused with a 400.

One walk does both jobs, so what is checked is exactly what is built. Any JSON value in any
keyword gives a grammar or an oasis error naming the keyword (never another exception), and
every count, depth and size is bounded (``gbnf.Limits``) before the grammar grows with it.

What a keyword means is JSON Schema's, and the grammar admits a subset of what the schema
does, never more: a schema without ``additionalProperties`` gets no extra keys, an extra key
is never one of the declared names, an unanchored ``pattern`` matches anywhere, keywords beside
``anyOf`` apply to each branch, and ``type: [...]`` keeps the keywords of each type. References
become rules of their own, built after the schema that names them, so a chain of ``$ref`` never
deepens the walk; the walk is as deep as the schema document, which is bounded.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from oasis.errors import InvalidRequestError, UnsupportedParameterError
from oasis.serving import pattern as rx
from oasis.serving.formats import FORMATS
from oasis.serving.gbnf import Limits, Rules, class_char, literal, repeat
from oasis.serving.intrange import bounds, integer_gbnf, number_bounds, number_gbnf

# Formats and common patterns come again and again (a URI format is a large pattern): their
# trees (frozen dataclasses, safe to share) are parsed once.
_parse_cached = functools.lru_cache(maxsize=256)(rx.parse)


def _parse(source: str, repetition: int, depth: int) -> rx.Node:
    return _parse_cached(source, max_repetition=repetition, max_depth=depth)


TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "strict",
        "discriminator",
        "nullable",
    }
)
OBJECT_KEYS = ("properties", "required", "additionalProperties")
ARRAY_KEYS = ("items", "prefixItems", "minItems", "maxItems")
STRING_KEYS = ("pattern", "format", "minLength", "maxLength")
NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
OTHER_KEYS = ("type", "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions")
KEYWORDS = frozenset(OBJECT_KEYS + ARRAY_KEYS + STRING_KEYS + NUMBER_KEYS + OTHER_KEYS)
_FAMILIES = (
    (OBJECT_KEYS, ("object",), "objects"),
    (ARRAY_KEYS, ("array",), "arrays"),
    (STRING_KEYS, ("string",), "strings"),
    (NUMBER_KEYS, ("integer", "number"), "numbers"),
)
_DEFS = ("$defs", "definitions")
SUPPORTED = (
    "type, properties, required, additionalProperties, items, prefixItems, minItems, "
    "maxItems, enum, const, anyOf, oneOf, local $ref/$defs, pattern, minLength, maxLength, "
    f"format ({', '.join(sorted(FORMATS))}), minimum, maximum, exclusiveMinimum, "
    "exclusiveMaximum"
)

# The JSON rules every schema shares, by name: (body, rules it uses).
_HEX = "[0-9a-fA-F]"
PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "space": ('" "?', ()),
    # JSON string characters: no raw control characters (json.loads refuses them), and no
    # \u escape of a surrogate (half a character, which length and validators count wrong)
    "char": (
        r'[^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" ( [0-9a-cA-CeEfF] '
        rf"{_HEX}{{3}} | [dD] [0-7] {_HEX}{{2}} ) )",
        (),
    ),
    "key-char": (r'[^"\\\x7F\x00-\x1F]', ()),
    "string": (r'"\"" char* "\"" space', ("char", "space")),
    "integer": ('"-"? ( "0" | [1-9] [0-9]{0,15} ) space', ("space",)),
    "number": (
        '"-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )? space',
        ("space",),
    ),
    "boolean": ('( "true" | "false" ) space', ("space",)),
    "null": ('"null" space', ("space",)),
    "value": (
        "object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "object": (
        '"{" space ( string ":" space value ( "," space string ":" space value )* )? "}" space',
        ("string", "value", "space"),
    ),
    "array": ('"[" space ( value ( "," space value )* )? "]" space', ("value", "space")),
}


@dataclass(frozen=True)
class Subject:
    """Whose schema it is, for the errors: ``param`` and how the message names it."""

    param: str
    name: str


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf, nan: what 1e400 and the like parse to
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _count(value: Any) -> int | None:
    """A JSON Schema non-negative integer (5 or 5.0), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= 0 else None


def _is_type(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return kind == "number" or isinstance(value, int) or value.is_integer()


def depth_of(doc: Any, limit: int) -> int:
    """How deeply ``doc`` nests (stops counting past ``limit``), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            break
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


class SchemaCompiler:
    """The rules of one schema, added to ``rules``."""

    def __init__(self, rules: Rules, subject: Subject, limits: Limits) -> None:
        self.rules = rules
        self.subject = subject
        self.limits = limits
        self._refs: dict[tuple[str, ...], str] = {}  # JSON pointer -> rule name
        self._queue: list[tuple[tuple[str, ...], str]] = []
        self._doc: Any = None

    # -- errors

    def _where(self, path: str) -> str:
        return f" at {path}" if path else ""

    def invalid(self, path: str, problem: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"Invalid schema for {self.subject.name}: {problem.replace('{at}', self._where(path))}",
            param=self.subject.param,
            code="invalid_value",
        )

    def refuse(self, path: str, problem: str) -> UnsupportedParameterError:
        return UnsupportedParameterError(
            f"Invalid schema for {self.subject.name}: {problem.replace('{at}', self._where(path))}",
            param=self.subject.param,
        )

    def unsupported(self, path: str, feature: str) -> UnsupportedParameterError:
        return self.refuse(
            path,
            f"{feature}{{at}} cannot be enforced by oasis's constrained decoding, so the "
            f"request is refused rather than answered unconstrained. Supported: {SUPPORTED}.",
        )

    def over(self, path: str, key: str, value: Any, limit: int) -> UnsupportedParameterError:
        return self.refuse(
            path, f"'{key}' {value}{{at}} is above the limit of {limit} that oasis can enforce."
        )

    # -- rules

    def _prim(self, name: str) -> str:
        if not self.rules.has(name):
            body, deps = PRIMITIVES[name]
            self.rules.fixed(name, body)
            for dep in deps:  # value and object name each other
                self._prim(dep)
        return name

    def _rule(self, hint: str, body: str) -> str:
        name = self.rules.add(hint, body)
        if self.rules.size > self.limits.grammar_bytes:
            raise self.refuse(
                "",
                f"its grammar grows past the limit of {self.limits.grammar_bytes} bytes that "
                "oasis can enforce (fewer properties, enum values or shorter patterns make it "
                "smaller).",
            )
        return name

    # -- the walk

    def compile(self, schema: Any, name: str) -> str:
        """The name of the rule for ``schema``; raises a 400 if it cannot be enforced."""
        depth = depth_of(schema, self.limits.depth)
        if depth > self.limits.depth:
            raise self.refuse(
                "",
                f"the schema nests more than {self.limits.depth} levels deep, above the limit "
                "that oasis can enforce.",
            )
        self._doc = schema
        top = self.rules.reserve(name)
        self._refs[()] = top
        expr = self.visit(schema, "", (), name, root=True)
        if expr is None:
            raise self.invalid("", "no value satisfies the schema.")
        self.rules.define(top, expr)
        while self._queue:
            pointer, rule = self._queue.pop()
            target = self._resolve(pointer)
            path = ".".join(pointer)
            body = self.visit(target, path, pointer, rule)
            if body is None:
                raise self.invalid(path, "the schema{at} is referenced, but no value satisfies it.")
            self.rules.define(rule, body)
        return top

    def _resolve(self, pointer: tuple[str, ...]) -> Any:
        node = self._doc
        for part in pointer:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    def _ref(self, ref: Any, path: str) -> str:
        if not isinstance(ref, str):
            raise self.invalid(path, f"'$ref'{{at}} must be a string, not {_kind(ref)}.")
        if not ref.startswith("#") or (len(ref) > 1 and not ref.startswith("#/")):
            raise self.unsupported(path, f"the reference {_short(ref)} (only local #/ references)")
        parts = [] if ref == "#" else ref[2:].split("/")
        pointer = tuple(unquote(p).replace("~1", "/").replace("~0", "~") for p in parts)
        if not isinstance(self._resolve(pointer), dict | bool):
            raise self.invalid(path, f"the reference {_short(ref)}{{at}} points at no schema.")
        return self._named(pointer)

    def _named(self, pointer: tuple[str, ...]) -> str:
        """The rule of the schema at ``pointer``, built later (so references never nest)."""
        if pointer not in self._refs:
            if len(self._refs) > self.limits.references:
                raise self.refuse(
                    "",
                    f"it has more than {self.limits.references} definitions and reference "
                    "targets, above the limit that oasis can enforce.",
                )
            hint = f"{self._refs[()]}-{pointer[-1]}" if pointer else self._refs[()]
            self._refs[pointer] = self.rules.reserve(hint)
            self._queue.append((pointer, self._refs[pointer]))
        return self._refs[pointer]

    def visit(
        self, node: Any, path: str, pointer: tuple[str, ...] | None, hint: str, root: bool = False
    ) -> str | None:
        """A GBNF expression for the values ``node`` admits; None if it admits none."""
        if node is True:
            return self._prim("value")
        if node is False:
            return None
        if not isinstance(node, dict):
            raise self.invalid(
                path, f"expected a schema (an object or a boolean){{at}}, got {_kind(node)}."
            )
        self._check(node, path)
        if pointer is not None:  # definitions become rules, referenced or not
            for key in _DEFS:
                for def_name, schema in node.get(key, {}).items():
                    if not isinstance(schema, dict | bool):
                        at = ".".join(x for x in (path, key, def_name) if x)
                        raise self.invalid(at, f"expected a schema{{at}}, got {_kind(schema)}.")
                    self._named((*pointer, key, def_name))
        enforced = [k for k in node if k in KEYWORDS and k not in _DEFS]
        if "$ref" in node:
            others = [k for k in enforced if k != "$ref"]
            if others:
                raise self.unsupported(path, f"'$ref' together with '{others[0]}'")
            return self._ref(node["$ref"], path)
        if "anyOf" in node or "oneOf" in node:
            return self._union(node, path, pointer, hint, enforced)
        if "enum" in node or "const" in node:
            return self._constants(node, path, hint, enforced)
        if "type" not in node and not any(set(keys) & set(node) for keys, _, _ in _FAMILIES):
            return self._prim("object" if root else "value")
        types = self._types(node, path)
        alts: dict[str, None] = {}
        for t in types:
            got = self._typed(t, node, path, pointer, hint)
            if got is not None:
                alts[got] = None
        if not alts:
            return None
        return next(iter(alts)) if len(alts) == 1 else self._rule(hint, " | ".join(alts))

    def _check(self, node: dict[str, Any], path: str) -> None:
        """The value of every keyword has the right shape (all checked before any is used)."""
        for key, value in node.items():
            if not isinstance(key, str):
                raise self.invalid(path, f"the key {_short(key)}{{at}} is not a string.")
            if key in ANNOTATIONS:
                continue
            if key not in KEYWORDS:
                raise self.unsupported(path, f"the keyword '{key}'")
            problem = self._shape(key, value)
            if problem:
                raise self.invalid(path, f"'{key}'{{at}} must be {problem}, not {_kind(value)}.")
        lo, hi = _count(node.get("minLength", 0)), _count(node.get("maxLength"))
        if lo is not None and hi is not None and lo > hi:
            raise self.invalid(path, "'minLength'{at} is above 'maxLength': no string fits.")

    def _shape(self, key: str, value: Any) -> str | None:
        """What ``value`` should be for ``key``, if it is not."""
        schema_like = isinstance(value, dict | bool)
        if key == "type":
            names = value if isinstance(value, list) else [value]
            ok = bool(names) and all(isinstance(t, str) and t in TYPES for t in names)
            return None if ok else f"one of {', '.join(TYPES)} or a non-empty array of them"
        if key in ("enum", "anyOf", "oneOf", "prefixItems"):
            if not isinstance(value, list) or not value:
                return "a non-empty array"
            return None
        if key in ("properties", "$defs", "definitions"):
            return None if isinstance(value, dict) else "an object"
        if key == "required":
            ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
            return None if ok else "an array of strings"
        if key == "additionalProperties":
            return None if schema_like else "a schema (an object or a boolean)"
        if key == "items":
            return None if schema_like or isinstance(value, list) else "a schema"
        if key in ("minItems", "maxItems", "minLength", "maxLength"):
            return None if _count(value) is not None else "a non-negative integer"
        if key in ("pattern", "format", "$ref"):
            return None if isinstance(value, str) else "a string"
        if key in NUMBER_KEYS:
            ok = not isinstance(value, bool) and isinstance(value, int | float)
            return None if ok and math.isfinite(value) else "a finite number"
        return None  # const: any JSON value

    def _types(self, node: dict[str, Any], path: str) -> list[str]:
        if "type" in node:
            value = node["type"]
            types = list(dict.fromkeys(value if isinstance(value, list) else [value]))
        else:  # the types the keywords speak of: a subset of what the schema admits
            types = [t for keys, kinds, _ in _FAMILIES if set(keys) & set(node) for t in kinds]
            if "integer" in types:
                types.remove("integer")  # "number" covers it
        for keys, kinds, what in _FAMILIES:
            for key in keys:
                if key in node and not set(kinds) & set(types):
                    raise self.unsupported(
                        path,
                        f"the keyword '{key}' (it applies to {what}; the type is "
                        f"{' or '.join(types)})",
                    )
        return types

    def _typed(
        self, kind: str, node: dict[str, Any], path: str, pointer: tuple[str, ...] | None, hint: str
    ) -> str | None:
        if kind in ("null", "boolean"):
            return self._prim(kind)
        if kind in ("integer", "number"):
            if not set(NUMBER_KEYS) & set(node):
                return self._prim(kind)
            self._prim("space")
            try:
                body = (
                    integer_gbnf(*bounds(node))
                    if kind == "integer"
                    else number_gbnf(*number_bounds(node))
                )
            except ValueError as exc:
                raise self.invalid(path, f"the bounds{{at}} admit no {kind}: {exc}.") from None
            return self._rule(f"{hint}-range", f"{body} space")
        if kind == "string":
            return self._string(node, path, hint)
        if kind == "array":
            return self._array(node, path, pointer, hint)
        return self._object(node, path, pointer, hint)

    # -- anyOf / enum

    def _union(
        self,
        node: dict[str, Any],
        path: str,
        pointer: tuple[str, ...] | None,
        hint: str,
        enforced: list[str],
    ) -> str | None:
        if "anyOf" in node and "oneOf" in node:
            raise self.unsupported(path, "'anyOf' together with 'oneOf'")
        key = "anyOf" if "anyOf" in node else "oneOf"
        beside = {k: node[k] for k in enforced if k != key}
        alts: dict[str, None] = {}
        for i, branch in enumerate(node[key]):
            at = f"{path}.{key}[{i}]" if path else f"{key}[{i}]"
            if branch is False:
                continue
            if branch is True:
                branch = {}
            if not isinstance(branch, dict):
                raise self.invalid(
                    at, f"expected a schema (an object or a boolean){{at}}, got {_kind(branch)}."
                )
            clash = [k for k in beside if k in branch and branch[k] != beside[k]]
            if clash:
                raise self.unsupported(at, f"'{clash[0]}' both beside '{key}' and inside it")
            merged = {**beside, **branch}
            sub = None if pointer is None or beside else (*pointer, key, str(i))
            got = self.visit(merged, at, sub, f"{hint}-{i}")
            if got is not None:
                alts[got] = None
        if not alts:
            return None
        return self._rule(hint, " | ".join(alts))

    def _constants(
        self, node: dict[str, Any], path: str, hint: str, enforced: list[str]
    ) -> str | None:
        values = list(node["enum"]) if "enum" in node else [node["const"]]
        if "enum" in node and "const" in node:
            values = [v for v in values if _same(v, node["const"])]
        others = [k for k in enforced if k not in ("enum", "const", "type")]
        if others:
            which = "enum" if "enum" in node else "const"
            raise self.unsupported(path, f"'{others[0]}' together with '{which}'")
        if "type" in node:
            types = node["type"] if isinstance(node["type"], list) else [node["type"]]
            values = [v for v in values if any(_is_type(v, t) for t in types)]
        alts: dict[str, None] = {}
        size = 0
        for v in values:
            try:
                text = json.dumps(v, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError):
                raise self.invalid(
                    path, f"the value {_short(v)}{{at}} is not JSON (a number must be finite)."
                ) from None
            alts[f"{literal(text)} space"] = None
            size += len(text) + 9
            if size > self.limits.grammar_bytes:
                raise self.refuse(
                    path,
                    "'enum'{at} is too large: its grammar grows past the limit of "
                    f"{self.limits.grammar_bytes} bytes that oasis can enforce.",
                )
        if not alts:
            raise self.invalid(path, "no value of 'enum' / 'const'{at} has the schema's type.")
        self._prim("space")
        return self._rule(hint, " | ".join(alts))

    # -- strings

    def _string(self, node: dict[str, Any], path: str, hint: str) -> str:
        lo = _count(node.get("minLength", 0)) or 0
        hi = _count(node["maxLength"]) if "maxLength" in node else None
        fmt, pat = node.get("format"), node.get("pattern")
        if fmt is not None and fmt not in FORMATS:
            raise self.unsupported(path, f"format '{_short(fmt)[1:-1]}'")
        if fmt is not None and pat is not None:
            raise self.unsupported(path, "'pattern' together with 'format'")
        self._prim("space")
        if fmt is None and pat is None:
            if lo > self.limits.repetition:
                raise self.over(path, "minLength", lo, self.limits.repetition)
            if hi is not None and hi > self.limits.repetition:
                raise self.over(path, "maxLength", hi, self.limits.repetition)
            if lo == 0 and hi is None:
                return self._prim("string")
            self._prim("char")
            return self._rule(f"{hint}-string", rf'"\"" {repeat("char", lo, hi)} "\"" space')
        source = f"^(?:{FORMATS[fmt]})$" if fmt is not None else str(pat)
        what = f"format '{fmt}'" if fmt is not None else "'pattern'"
        try:
            tree = _parse(source, self.limits.repetition, self.limits.depth)
        except rx.PatternError as exc:
            problem = f"{what} {_short(pat)}{{at}}: {exc}" if fmt is None else f"{what}: {exc}"
            if exc.unsupported:
                raise self.refuse(path, problem + " cannot be enforced by oasis.") from None
            raise self.invalid(path, problem + ".") from None
        fitted = rx.fit(tree, lo, hi, max_repetition=self.limits.repetition)
        if fitted is None:
            if rx.lengths(tree) is None:
                raise self.invalid(path, f"{what}{{at}} matches no string oasis can write.")
            span = f"{lo}..{'' if hi is None else hi}"
            raise self.unsupported(path, f"a length of {span} characters together with {what}")
        body = rx.to_gbnf(fitted, lambda h, b: self._rule(h, b), f"{hint}-{fmt or 'pattern'}")
        return self._rule(f"{hint}-string", rf'"\"" {body} "\"" space'.replace("  ", " "))

    # -- arrays

    def _array(
        self, node: dict[str, Any], path: str, pointer: tuple[str, ...] | None, hint: str
    ) -> str | None:
        lo = _count(node.get("minItems", 0)) or 0
        hi = _count(node["maxItems"]) if "maxItems" in node else None
        for key, n in (("minItems", lo), ("maxItems", hi)):
            if n is not None and n > self.limits.repetition:
                raise self.over(path, key, n, self.limits.repetition)
        if hi is not None and lo > hi:
            raise self.invalid(path, "'minItems'{at} is above 'maxItems': no array fits.")
        items = node.get("items")
        prefix = node.get("prefixItems")
        prefix_key = "prefixItems"
        if isinstance(items, list):  # the older tuple form
            if prefix is not None:
                raise self.unsupported(path, "'items' as an array together with 'prefixItems'")
            prefix, items, prefix_key = items, None, "items"

        def sub(key: str, *more: str) -> tuple[str, tuple[str, ...] | None]:
            at = ".".join(x for x in (path, key, *more) if x)
            return at, None if pointer is None else (*pointer, key, *more)

        heads: list[str] = []
        cut = False
        for i, schema in enumerate(prefix or []):
            if hi is not None and len(heads) == hi:
                break
            at, ptr = sub(prefix_key, str(i))
            got = self.visit(schema, at, ptr, f"{hint}-{i}")
            if got is None:
                cut = True
                break
            heads.append(got)
        extra_lo = max(0, lo - len(heads))
        extra_hi = None if hi is None else hi - len(heads)
        if cut or items is False:
            tail = None
        elif items is None:
            tail = self._prim("value") if prefix is None or extra_lo else None
            if prefix is not None:
                extra_hi = extra_lo  # no more than minItems asks for
        else:
            at, ptr = sub("items")
            tail = self.visit(items, at, ptr, f"{hint}-item")
        if tail is None:
            if extra_lo:
                raise self.invalid(path, "'minItems'{at} asks for more items than may be given.")
            extra_hi = 0
        self._prim("space")
        parts = [' "," space '.join(heads)] if heads else []
        if extra_hi is None or extra_hi > 0:
            assert tail is not None
            more = self._rule(f"{hint}-more", f'"," space {tail}')
            if heads:
                parts.append(repeat(more, extra_lo, extra_hi))
            else:
                rest_hi = None if extra_hi is None else extra_hi - 1
                body = f"{tail} {repeat(more, max(0, extra_lo - 1), rest_hi)}".strip()
                parts.append(body if extra_lo else f"( {body} )?")
        inner = " ".join(p for p in parts if p)
        return self._rule(hint, f'"[" space {inner} "]" space'.replace("  ", " "))

    # -- objects

    def _object(
        self, node: dict[str, Any], path: str, pointer: tuple[str, ...] | None, hint: str
    ) -> str | None:
        props: dict[str, Any] = node.get("properties", {})
        required: list[str] = list(dict.fromkeys(node.get("required", [])))
        needed = set(required)
        extra = node.get("additionalProperties")
        count = len(props) + len(needed - set(props))
        if count > self.limits.properties:
            raise self.refuse(
                path,
                f"an object of {count} properties{{at}} is above the limit of "
                f"{self.limits.properties} that oasis can enforce.",
            )
        if "properties" not in node and extra in (None, True) and not required:
            return self._prim("object")
        self._prim("space")
        members: list[tuple[str, bool]] = []
        for name, schema in props.items():
            at = ".".join(x for x in (path, "properties", name) if x)
            ptr = None if pointer is None else (*pointer, "properties", name)
            got = self.visit(schema, at, ptr, f"{hint}-{name}")
            if got is None:
                if name in needed:
                    raise self.invalid(at, "the property{at} is required, but no value fits it.")
                continue
            members.append((self._member(name, got, hint), name in needed))
        for name in required:
            if name in props:
                continue
            if extra is False:
                raise self.invalid(
                    path,
                    f"'required'{{at}} names {_short(name)}, which is not in 'properties' "
                    "and 'additionalProperties' is false.",
                )
            at = ".".join(x for x in (path, "additionalProperties") if x)
            got = self.visit(True if extra is None else extra, at, None, f"{hint}-{name}")
            if got is None:
                raise self.invalid(at, f"{_short(name)} is required, but no value fits it{{at}}.")
            members.append((self._member(name, got, hint), True))
        if extra is not None and extra is not False and ("properties" in node or required):
            at = ".".join(x for x in (path, "additionalProperties") if x)
            ptr = None if pointer is None else (*pointer, "additionalProperties")
            value = self.visit(extra, at, ptr, f"{hint}-extra")
            if value is not None:
                key = self._key_except([*props, *required], hint)
                kv = self._rule(f"{hint}-extra-kv", f'{key} ":" space {value}')
                more = self._rule(f"{hint}-extra-more", f'"," space {kv}')
                members.append((self._rule(f"{hint}-extras", f"{kv} {more}*"), False))
        elif extra is not None and extra is not False:  # no declared names: any key
            value = self.visit(
                extra,
                ".".join(x for x in (path, "additionalProperties") if x),
                None if pointer is None else (*pointer, "additionalProperties"),
                f"{hint}-extra",
            )
            if value is not None:
                kv = self._rule(f"{hint}-extra-kv", f'{self._prim("string")} ":" space {value}')
                more = self._rule(f"{hint}-extra-more", f'"," space {kv}')
                members.append((self._rule(f"{hint}-extras", f"{kv} {more}*"), False))
        body = self._members(members, hint)
        return self._rule(hint, f'"{{" space {body} "}}" space'.replace("  ", " "))

    def _member(self, name: str, value: str, hint: str) -> str:
        key = literal(json.dumps(name, ensure_ascii=False))
        return self._rule(f"{hint}-{name}-kv", f'{key} space ":" space {value}')

    def _members(self, members: list[tuple[str, bool]], hint: str) -> str:
        """Object members in their order: the required ones always, the others maybe, with
        commas between those present."""
        if not members:
            return ""
        first = next((i for i, (_, req) in enumerate(members) if req), None)
        if first is not None:
            parts = [f'( {kv} "," space )?' for kv, _ in members[:first]]
            parts.append(members[first][0])
            for kv, req in members[first + 1 :]:
                parts.append(f'"," space {kv}' if req else f'( "," space {kv} )?')
            return " ".join(parts)
        # none required: nothing, or a first one present and any of those after it
        rest = ""
        alts = []
        for i in range(len(members) - 1, -1, -1):
            kv = members[i][0]
            alts.append(f"{kv} {rest}".strip())
            if i:
                rest = self._rule(f"{hint}-rest", f'( "," space {kv} )? {rest}'.strip())
        return "( " + " | ".join(reversed(alts)) + " )?"

    def _key_except(self, names: list[str], hint: str) -> str:
        """A JSON object key (written without escapes) that is none of ``names``."""
        self._prim("key-char")
        trie: dict[str, Any] = {}
        for name in names:
            if any(c in '"\\\x7f' or ord(c) < 0x20 for c in name):
                continue  # never written without escapes, so never equal to such a key
            node = trie
            for ch in name:
                node = node.setdefault(ch, {})
            node[""] = {}
        order: list[dict[str, Any]] = []  # parents after children, without recursion
        stack = [trie]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(v for k, v in node.items() if k)
        names_of: dict[int, str] = {}
        for node in reversed(order):
            kids = sorted(k for k in node if k)
            taken = "".join(class_char(ord(c)) for c in kids)
            other = f'[^"\\\\\\x7F\\x00-\\x1F{taken}] key-char*'
            alts = [other] + [f"{literal(k)} {names_of[id(node[k])]}" for k in kids]
            body = " | ".join(alts)
            if "" not in node:
                body = f"( {body} )?"
            names_of[id(node)] = self._rule(f"{hint}-key", body)
        return self._rule(f"{hint}-key", rf'"\"" {names_of[id(trie)]} "\"" space')


def _same(a: Any, b: Any) -> bool:
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (TypeError, ValueError):
        return False
