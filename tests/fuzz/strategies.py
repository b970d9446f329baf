"""Hypothesis strategies for the fuzz test: requests drawn from OpenAI's request schemas, hostile
JSON values, and mutations that put those values anywhere in a request.

Requests come from the schemas of OpenAI's OpenAPI document (``openapi-request-schemas.json``
next to this file, extracted by ``extract_request_schemas.py``) through ``SchemaStrategies``, a
small converter for the part of JSON Schema those schemas use: ``$ref``, ``allOf``, ``anyOf``,
``oneOf``, ``enum``, ``type``, ``properties``, ``required``, ``additionalProperties``, ``items``,
the size and range bounds. hypothesis-jsonschema's ``from_schema`` would do this, but its latest
release (0.23.1) calls a private Hypothesis API (``cu.many(...).more()``) that Hypothesis removed
between 6.170.0 and 6.170.17, so with the Hypothesis this project installs it fails on every
object schema (AttributeError: 'many' object has no attribute 'more'). Our own converter also
lets the fuzz test steer, which a generic one cannot:

- ``oneOf`` is drawn as ``anyOf`` (a draw may match several branches: still a fair request);
- optional properties are a few per request, not each with probability 1/2, so a request does
  not nearly always carry one of the parameters oasis refuses;
- the free-form objects ``FunctionParameters`` and ``ResponseFormatJsonSchemaSchema`` (typed
  ``{"type": "object"}`` by the document) are drawn as JSON Schemas, which is what they carry,
  so the schema-to-grammar compiler is fuzzed too;
- ``model`` is mostly a name the test server serves, so requests get past the model lookup;
  a quarter of the requests stream, and a quarter of the chat requests declare tools or
  functions with a choice that may force one by name (``_steered``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

HERE = Path(__file__).parent
REQUEST_SCHEMAS = json.loads((HERE / "openapi-request-schemas.json").read_text())

SERVED_MODELS = ("gpt-3.5-turbo", "text-davinci-002", "fake-model")

# Parameters OpenAI documents and oasis refuses (README "Parameters"): left out of the
# "supported" variant of a request schema so that most fuzzed requests reach generation.
REFUSED = (
    "audio", "modalities", "prediction", "reasoning_effort", "verbosity", "web_search_options",
    "store", "metadata", "suffix", "moderation", "prompt_cache_options",
    "prompt_cache_retention", "prompt_cache_breakpoint",
)
# In the "supported" variant, names (of functions, tools, schemas, message authors) mostly
# match the pattern OpenAI documents in prose (the schemas do not carry it), and are often the
# same few, so that a tool_choice or function_call names a declared function.
NAMES = st.one_of(st.sampled_from(("get_weather", "f", "lookup")),
                  st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True), st.text(max_size=10))

Json = Any
Strategy = st.SearchStrategy[Any]

# -- hostile values --------------------------------------------------------------------------

HUGE_INTS = (2**31, -(2**31) - 1, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 2**70, -(2**70),
             2**200)
ODD_FLOATS = (1e308, -1e308, math.inf, -math.inf, math.nan, -0.0, 5e-324, 1.7976931348623157e308,
              0.1, 1e-7, 2.5)
ODD_STRINGS = (
    "", " ", "\ud800", "\udfff", "a\ud800b", "\x00", "a\x00b", "\u202e", "\ufeff", "\uffff",
    "<|im_start|>system\n", "<|im_end|>", "</s>", "<s>", "null", "NaN", "-1", "1e999", "0x10",
    "%00", "../../etc/passwd", "' OR 1=1 --", "${jndi:ldap://x}", "{{7*7}}", "\\", '"', "\n" * 3,
    "é" * 8, "😀" * 8, "\u0301" * 8,
)
BIG_STRING_SIZES = (5000, 70_000, 300_000, 2_000_000)


class Raw:
    """JSON text put into a request as it is: nesting too deep for Python's json to write,
    integers longer than Python's int-to-text limit, number literals Python would not write."""

    def __init__(self, text: str, label: str) -> None:
        self.text, self.label = text, label

    def __repr__(self) -> str:
        return f"Raw({self.label})"


def deep(depth: int, opener: str) -> Raw:
    if opener == "[":
        return Raw("[" * depth + "]" * depth, f"[ nested {depth} deep")
    return Raw('{"a":' * depth + "1" + "}" * depth, f"{{ nested {depth} deep")


RAW_NUMBERS = (Raw("9" * 5000, "5000-digit integer"), Raw("-" + "9" * 5000, "-5000 digits"),
               Raw("1e999999", "1e999999"), Raw("-0", "-0"), Raw("1E-400", "1E-400"),
               Raw("0." + "0" * 5000 + "1", "5000-digit fraction"))


@cache  # one strategy object: Hypothesis validates each new one, recursive ones slowly
def scalars() -> Strategy:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(HUGE_INTS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(ODD_FLOATS),
        st.text(max_size=30),
        st.text(st.characters(codec=None, categories=None), max_size=10),  # surrogates too
        st.sampled_from(ODD_STRINGS),
    )


@cache
def hostile_values() -> Strategy:
    """Any JSON value Python's json can write (NaN and Infinity included), with huge integers,
    lone surrogates, huge strings and deep nesting."""
    nested = st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=10), inner, max_size=4),
        ),
        max_leaves=12,
    )
    return st.one_of(
        nested,
        st.builds(lambda c, n: c * n, st.sampled_from("xé😀"),
                  st.sampled_from(BIG_STRING_SIZES)),
        st.builds(lambda n: ["a"] * n, st.sampled_from((1000, 100_000))),
        st.builds(deep, st.sampled_from((40, 100, 1000, 100_000)), st.sampled_from("[{")),
        st.sampled_from(RAW_NUMBERS),
    )


# -- JSON Schema -> strategy -------------------------------------------------------------------


class SchemaStrategies:
    """Strategies for instances of the schemas in ``components`` (see the module docstring)."""

    def __init__(self, components: dict[str, Any], overrides: dict[str, Strategy] | None = None,
                 drop: tuple[str, ...] = (), fields: dict[str, Strategy] | None = None) -> None:
        """``overrides`` replace named schemas, ``fields`` the string properties of that name,
        ``drop`` leaves properties out."""
        self.components = components
        self.overrides = overrides or {}
        self.drop = set(drop)
        self.fields = fields or {}
        self._cache: dict[str, Strategy] = {}

    def named(self, name: str) -> Strategy:
        if name in self.overrides:
            return self.overrides[name]
        if name not in self._cache:
            # deferred: a schema may refer to itself through others
            self._cache[name] = st.deferred(lambda: self.build(self.components[name]))
        return self._cache[name]

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.components[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def build(self, node: Any) -> Strategy:
        if node is True or node == {}:
            return hostile_values()
        if "$ref" in node:
            return self.named(node["$ref"].rsplit("/", 1)[-1])
        if "allOf" in node:
            merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
            for part in node["allOf"]:
                part = self._resolve(part)
                merged["properties"].update(part.get("properties", {}))
                merged["required"] += part.get("required", [])
            return self.build(merged)
        for key in ("anyOf", "oneOf"):
            if key in node:
                return st.one_of([self.build(branch) for branch in node[key]])
        if "enum" in node:
            return st.sampled_from(node["enum"])
        kind = node.get("type")
        if isinstance(kind, list):
            return st.one_of([self.build(dict(node, type=k)) for k in kind])
        return self._typed(kind, node)

    def _typed(self, kind: str | None, node: dict[str, Any]) -> Strategy:
        low, high = node.get("minimum"), node.get("maximum")
        if kind == "null":
            return st.none()
        if kind == "boolean":
            return st.booleans()
        if kind == "integer":
            if low is None and high is None:
                return st.one_of(st.integers(-10, 1000), st.integers(), st.sampled_from(HUGE_INTS))
            return st.integers(low, high)
        if kind == "number":
            return st.one_of(
                st.floats(low, high, allow_nan=False, allow_infinity=False),
                st.integers(math.ceil(low) if low is not None else None,
                            math.floor(high) if high is not None else None),
            )
        if kind == "string":
            return st.text(max_size=min(node.get("maxLength", 40), 40))
        if kind == "array":
            low_n = node.get("minItems", 0)
            high_n = min(node.get("maxItems", low_n + 3), low_n + 3)
            return st.lists(self.build(node.get("items", {})), min_size=low_n, max_size=high_n)
        if kind == "object" or "properties" in node:
            return self._object(node)
        return hostile_values()

    def _object(self, node: dict[str, Any]) -> Strategy:
        props = {k: v for k, v in node.get("properties", {}).items() if k not in self.drop}
        required = [k for k in node.get("required", []) if k in props]
        optional = sorted(set(props) - set(required))
        extra = node.get("additionalProperties", not props)
        extra_values = None
        if extra is True:
            extra_values = hostile_values()
        elif isinstance(extra, dict):
            extra_values = self.build(extra)
        fields = {k: self.fields[k] if k in self.fields and v.get("type") == "string"
                  else self.build(v) for k, v in props.items()}

        @st.composite
        def objects(draw: st.DrawFn) -> dict[str, Any]:
            out = {k: draw(fields[k]) for k in required}
            if optional:
                for k in draw(st.lists(st.sampled_from(optional), max_size=5, unique=True)):
                    out[k] = draw(fields[k])
            if extra_values is not None:
                for k in draw(st.lists(st.text(max_size=12), max_size=3, unique=True)):
                    out.setdefault(k, draw(extra_values))
            return out

        return objects()


# -- JSON Schemas as values (response_format and function parameters) --------------------------

SCHEMA_KEYWORDS = (
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions", "pattern",
    "format", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "title", "description", "default", "not", "allOf", "if", "then",
    "uniqueItems", "multipleOf", "patternProperties", "propertyNames", "minProperties",
)
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
PATTERNS = ("^[a-z]+$", "[0-9]{3}-[0-9]{4}", "^(a|b)*c$", "(a+)+$", "\\d{2,}", "[", "(?=x)",
            "^.{0,5}$", "\\p{L}", "a{1000000}", "", "^\\w+@\\w+\\.com$")
SIZES = st.one_of(st.integers(0, 8), st.sampled_from((100, 10_000, 10**9, 2**63, -1, 2**70)))
BOUND = st.one_of(st.integers(-100, 100), st.floats(-1e6, 1e6),
                  st.sampled_from((1e308, -1e308, 2**70, 0.5, 1.5)))


@cache
def json_schemas() -> Strategy:
    """Small JSON Schemas, mostly made of the keywords structured outputs enforce, with odd sizes,
    bounds, patterns, references (recursive, dangling) and the keywords oasis refuses."""
    leaf = st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(TYPES)}),
        st.fixed_dictionaries({"type": st.just("string")},
                              optional={"minLength": SIZES, "maxLength": SIZES,
                                        "pattern": st.sampled_from(PATTERNS),
                                        "format": st.sampled_from(("date", "time", "date-time",
                                                                   "uuid", "email"))}),
        st.fixed_dictionaries({"type": st.sampled_from(("integer", "number"))},
                              optional={"minimum": BOUND, "maximum": BOUND,
                                        "exclusiveMinimum": BOUND, "exclusiveMaximum": BOUND,
                                        "multipleOf": BOUND}),
        st.fixed_dictionaries({"enum": st.lists(scalars(), max_size=4)}),
        st.fixed_dictionaries({"const": scalars()}),
        st.sampled_from(({"$ref": "#"}, {"$ref": "#/$defs/node"}, {"$ref": "#/$defs/missing"},
                         {"$ref": "http://example.com/s.json"}, {}, True, False)),
        st.builds(lambda k, v: {k: v}, st.sampled_from(SCHEMA_KEYWORDS), scalars()),
    )

    def extend(inner: Strategy) -> Strategy:
        names = st.one_of(st.sampled_from(("a", "b", "name", "x-y", "")), st.text(max_size=8))
        return st.one_of(
            st.fixed_dictionaries(
                {"type": st.just("object"), "properties": st.dictionaries(names, inner,
                                                                          max_size=4)},
                optional={"required": st.lists(names, max_size=3),
                          "additionalProperties": st.one_of(st.booleans(), inner)}),
            st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                                  optional={"minItems": SIZES, "maxItems": SIZES}),
            st.fixed_dictionaries({"type": st.just("array"),
                                   "prefixItems": st.lists(inner, max_size=3)}),
            st.builds(lambda k, v: {k: v}, st.sampled_from(("anyOf", "oneOf", "allOf")),
                      st.lists(inner, max_size=3)),
            st.fixed_dictionaries({"$defs": st.fixed_dictionaries({"node": inner}),
                                   "$ref": st.just("#/$defs/node")}),
            st.fixed_dictionaries({"type": st.just("object"),
                                   "properties": st.fixed_dictionaries({"next": st.just(
                                       {"$ref": "#"})})}),
        )

    return st.one_of(
        st.recursive(leaf, extend, max_leaves=10),
        hostile_values(),
    )


# -- the request strategies --------------------------------------------------------------------


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@st.composite
def _tool_use(draw: st.DrawFn) -> dict[str, Any]:
    """Tools or legacy functions with a choice that may force one of them by name (drawn from
    the schema alone, a declared name and a choice naming it almost never meet)."""
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    params = st.one_of(st.just(WEATHER), json_schemas())
    named = draw(st.sampled_from(names))
    if draw(st.booleans()):
        return {
            "tools": [{"type": "function", "function": {"name": n, "parameters": draw(params)}}
                      for n in names],
            "tool_choice": draw(st.sampled_from(
                ("auto", "none", "required", {"type": "function", "function": {"name": named}}))),
        }
    return {
        "functions": [{"name": n, "parameters": draw(params)} for n in names],
        "function_call": draw(st.sampled_from(("auto", "none", {"name": named}))),
    }


def _steered(requests: Strategy, chat: bool) -> Strategy:
    """Mostly a served model; a quarter of the requests streamed (among some thirty optional
    parameters ``stream`` would rarely be drawn, and rarely with the rest valid); for chat, a
    quarter with tools or functions."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        body = draw(requests)
        if draw(st.integers(0, 9)) < 9:
            body["model"] = draw(st.sampled_from(SERVED_MODELS))
        if draw(st.integers(0, 3)) == 0:
            body["stream"] = True
            if draw(st.booleans()):
                body["stream_options"] = {"include_usage": draw(st.booleans())}
        if chat and draw(st.integers(0, 3)) == 0:
            for key in ("tools", "tool_choice", "functions", "function_call"):
                body.pop(key, None)
            body.update(draw(_tool_use()))
        return body

    return build()


def request_bodies(name: str) -> Strategy:
    """Bodies drawn from OpenAI's ``name`` schema, half of them without the parameters oasis
    refuses (so they reach generation), half with everything the document allows; see
    ``_steered``."""
    components = REQUEST_SCHEMAS["components"]["schemas"]
    overrides = {"FunctionParameters": json_schemas(),
                 "ResponseFormatJsonSchemaSchema": json_schemas()}
    full = SchemaStrategies(components, overrides).named(name)
    supported = SchemaStrategies(components, overrides, drop=REFUSED,
                                 fields={"name": NAMES}).named(name)
    return _steered(st.one_of(supported, full), chat=name == "CreateChatCompletionRequest")


Path_ = tuple[str | int, ...]


def _paths(value: Json, here: Path_ = ()) -> list[Path_]:
    out = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*here, i))
    return out


def _get(value: Json, path: Path_) -> Json:
    for step in path:
        value = value[step]
    return value


def _set(value: Json, path: Path_, new: Json) -> Json:
    if not path:
        return new
    _get(value, path[:-1])[path[-1]] = new
    return value


KNOWN_KEYS = (
    "model", "messages", "prompt", "role", "content", "name", "type", "text", "stream",
    "stream_options", "include_usage", "n", "best_of", "max_tokens", "max_completion_tokens",
    "logprobs", "top_logprobs", "echo", "stop", "seed", "temperature", "top_p", "logit_bias",
    "tools", "tool_choice", "function", "functions", "function_call", "parameters",
    "response_format", "json_schema", "schema", "strict", "tool_calls", "tool_call_id",
    "arguments", "id", "top_k", "min_p", "repeat_penalty", "user", "service_tier",
)


def extreme_like(value: Json) -> Strategy:
    """An odd value of the same JSON type as ``value``: these get past type checks, so they
    reach the code behind them."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.sampled_from(HUGE_INTS), st.integers(-(2**64), 2**64),
                         st.sampled_from((0, -1, 1, 255, 256, 257, 258, 259, 4096, 32000)))
    if isinstance(value, float):
        return st.one_of(st.sampled_from(ODD_FLOATS), st.floats())
    if isinstance(value, str):
        return st.one_of(st.sampled_from(ODD_STRINGS),
                         st.text(st.characters(codec=None, categories=None), max_size=10),
                         st.builds(lambda c, n: c * n, st.sampled_from("xé😀\n"),
                                   st.sampled_from(BIG_STRING_SIZES)))
    if isinstance(value, list) and 0 < len(value) <= 100:
        return st.builds(lambda n: value * n, st.sampled_from((2, 10, 100)))
    return hostile_values()


@st.composite
def mutated(draw: st.DrawFn, bodies: Strategy) -> Json:
    """A request with one to three hostile edits: a value replaced at any depth (the root
    included) by anything or by an odd value of its own type, a key inserted (a known
    parameter name or any text), a key or item removed."""
    body = draw(bodies)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(body)))
        target = _get(body, path)
        op = draw(st.sampled_from(("replace", "same-type", "same-type", "insert", "delete")))
        if op == "insert" and isinstance(target, dict):
            key = draw(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=10),
                                 st.sampled_from(ODD_STRINGS)))
            target[key] = draw(hostile_values())
        elif op == "insert" and isinstance(target, list):
            target.insert(draw(st.integers(0, len(target))), draw(hostile_values()))
        elif op == "delete" and path:
            parent = _get(body, path[:-1])
            del parent[path[-1]]
        elif op == "same-type":
            body = _set(body, path, draw(extreme_like(target)))
        else:
            body = _set(body, path, draw(hostile_values()))
    return body


# -- on the wire --------------------------------------------------------------------------------

def encode(value: Json, *, ascii_only: bool = True) -> bytes:
    """JSON as Python writes it (NaN, Infinity, big integers), ``Raw`` placeholders expanded.
    With ``ascii_only`` False a lone surrogate goes out as its raw (invalid UTF-8) bytes."""
    raws: list[str] = []

    def placeholder(obj: Any) -> Any:
        if isinstance(obj, Raw):
            raws.append(obj.text)
            return f"\x00RAW{len(raws) - 1}\x00"
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, default=placeholder, ensure_ascii=ascii_only, allow_nan=True)
    if raws:
        marker = re.compile(r'"(?:\\u0000|\x00)RAW(\d+)(?:\\u0000|\x00)"')
        text = marker.sub(lambda m: raws[int(m.group(1))], text)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def with_surrogate(draw: st.DrawFn, bodies: Strategy) -> Json:
    """A request with a lone surrogate put into one of its strings (the root's keys included)."""
    body = draw(bodies)
    strings = [p for p in _paths(body) if isinstance(_get(body, p), str)]
    mark = draw(st.sampled_from(("\ud800", "\udfff", "\udcff")))
    if strings and draw(st.integers(0, 3)):
        path = draw(st.sampled_from(strings))
        return _set(body, path, _get(body, path) + mark)
    if isinstance(body, dict):
        body[mark] = 1
    return body


def raw_bodies(bodies: Strategy) -> Strategy:
    """Bytes that are not quite JSON: a lone surrogate as its raw UTF-8 form (bytes ED A0 80 to
    ED BF BF, which Python's json decodes), truncated, a BOM, empty, random."""
    enc: Callable[[Json], bytes] = encode
    return st.one_of(
        st.builds(lambda b: enc(b, ascii_only=False), with_surrogate(bodies)),
        st.builds(lambda b, cut: enc(b)[: max(0, len(enc(b)) - cut)], bodies, st.integers(1, 9)),
        st.builds(lambda b: enc(b, ascii_only=False), bodies),
        st.builds(lambda b: b"\xef\xbb\xbf" + enc(b), bodies),
        st.builds(lambda b: enc(b).replace(b'"', b"'", 1), bodies),
        st.sampled_from((b"", b"null", b"[]", b"{", b"\xff\xfe", b"{}" * 3, b'{"model": }',
                         b'{"a": 1, "a": 2}', b"1" * 10_000)),
        st.binary(max_size=64),
    )


def url_part(text: str, *, keep_slash: bool = False) -> str:
    """``text`` percent-encoded for a URL path or query (lone surrogates as their raw bytes)."""
    return quote(text, safe="/" if keep_slash else "", errors="surrogatepass")


@cache
def url_texts() -> Strategy:
    return st.one_of(
        st.text(max_size=20),
        st.text(st.characters(codec=None, categories=None), max_size=8),
        st.sampled_from(ODD_STRINGS[:-1]),
        st.sampled_from(("key_1", "key_2", "key_0", "key_-1", f"key_{2**70}", "key_1.5",
                         "key_", "sk-oasis-", "sk-oasis-abcdefgh", "..", "%2e%2e", "a/b",
                         "x" * 5000)),
        st.builds(str, st.sampled_from(HUGE_INTS)),
    )
