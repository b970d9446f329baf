"""String formats (serving/formats.py): every string a format's grammar admits is valid for the
format's usual checkers, the grammar admits exactly what the format's regular expression
matches, and ``minLength`` / ``maxLength`` beside a format narrow it and still hold.

Strings are drawn at random from each format's tree (so every alternative and repetition
count is visited), checked with ``ipaddress``, ``datetime``, ``uuid``, ``urllib.parse``,
jsonschema's format checker, pydantic's types (and ``email-validator`` when it is installed),
and with an RFC 3986 / RFC 1123 reading written here from the RFCs' ABNF.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import ipaddress
import json
import random
import re
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from pydantic import AnyUrl, HttpUrl, IPvAnyAddress, TypeAdapter

from oasis.errors import OasisError
from oasis.serving import pattern as rx
from oasis.serving.formats import FORMATS
from oasis.serving.structured import answer_grammar, check_schema
from tests.unit.test_schema_gbnf import gbnf_regex, sample

CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER
_ANY_URL: TypeAdapter[AnyUrl] = TypeAdapter(AnyUrl)
_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)
_IP: TypeAdapter[Any] = TypeAdapter(IPvAnyAddress)

# RFC 3986 section 3, from its ABNF (absolute URI with an authority: http and https)
_UNRESERVED = r"[A-Za-z0-9._~-]"
_PCT = r"%[0-9A-Fa-f]{2}"
_SUB_DELIMS = r"[!$&'()*+,;=]"
_PCHAR = rf"(?:{_UNRESERVED}|{_PCT}|{_SUB_DELIMS}|[:@])"
RFC3986_HTTP = re.compile(
    rf"(?:http|https)://(?:{_UNRESERVED}|{_PCT}|{_SUB_DELIMS})*(?::[0-9]*)?(?:/{_PCHAR}*)*"
    rf"(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?"
)
# RFC 1123 section 2.1 host names (labels of letters, digits, inner hyphens; at most 253)
RFC1123 = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")  # fmt: skip


def _checker(name: str) -> Callable[[str], None]:
    def check(s: str) -> None:
        if name in CHECKER.checkers:
            CHECKER.check(s, name)

    return check


def _uri(s: str) -> None:
    assert RFC3986_HTTP.fullmatch(s), s
    parts = urllib.parse.urlsplit(s)
    assert parts.scheme in ("http", "https") and parts.hostname, s
    _ANY_URL.validate_python(s)
    _HTTP_URL.validate_python(s)


def _email(s: str) -> None:
    assert email.utils.parseaddr(s)[1] == s
    local, _, domain = s.rpartition("@")
    assert len(local) <= 64 and len(s) <= 254 and RFC1123.fullmatch(domain), s
    assert "." in domain and domain.rsplit(".", 1)[1].isalpha()
    from pydantic import EmailStr

    with contextlib.suppress(ImportError):  # pydantic[email] may not be installed
        TypeAdapter(EmailStr).validate_python(s)


def _hostname(s: str) -> None:
    assert RFC1123.fullmatch(s) and not s.rsplit(".", 1)[-1].isdigit(), s
    assert all(len(label) <= 63 for label in s.split("."))


VALIDATORS: dict[str, list[Callable[[str], Any]]] = {
    "date": [datetime.date.fromisoformat, _checker("date")],
    "time": [datetime.time.fromisoformat, _checker("time")],
    "date-time": [datetime.datetime.fromisoformat, _checker("date-time")],
    "uuid": [uuid.UUID, _checker("uuid")],
    "ipv4": [ipaddress.IPv4Address, _checker("ipv4"), _IP.validate_python],
    "ipv6": [ipaddress.IPv6Address, _checker("ipv6"), _IP.validate_python],
    "ipvanyaddress": [ipaddress.ip_address, _IP.validate_python],
    "hostname": [_hostname, _checker("hostname"), _checker("idn-hostname")],
    "email": [_email, _checker("email"), _checker("idn-email")],
    "uri": [_uri, _checker("uri")],
}
VALID = {
    "date": ["2024-02-29", "2000-02-29", "0001-01-01", "1999-12-31", "2023-04-30"],
    "time": ["00:00:00Z", "23:59:59.123456+05:30", "12:30:00-08:00"],
    "date-time": ["2024-01-31T12:00:00Z", "1970-01-01T00:00:00.5-00:30"],
    "uuid": ["123e4567-e89b-12d3-a456-426614174000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"],
    "ipv4": ["0.0.0.0", "255.255.255.255", "10.0.0.1", "192.168.1.100"],
    "ipv6": ["::", "::1", "1::", "fe80::1", "::ffff:1.2.3.4", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::",
             "2001:db8::8a2e:370:7334", "1:2:3:4:5:6:1.2.3.4"],
    "ipvanyaddress": ["1.2.3.4", "::1"],
    "hostname": ["localhost", "example.com", "a-b.c-d.example", "x1.y2.z3.org"],
    "email": ["a@b.co", "john.smith@example.com", "a!#$%&'*+/=?^_`{|}~-@x-y.example.org"],
    "uri": ["http://example.com", "https://a.b.c/path/to?q=1&r=%20#frag", "http://1.2.3.4:8080/",
            "https://example.com/a:b@c/(x)!$&'*+,;=~"],
}  # fmt: skip
INVALID = {
    "date": ["2023-02-29", "1900-02-29", "2024-02-30", "2024-04-31", "2024-13-01", "0000-01-01",
             "2024-1-01", "24-01-01"],
    "time": ["24:00:00Z", "12:60:00Z", "12:00:60Z", "12:00:00", "12:00Z", "12:00:00+24:00"],
    "date-time": ["2024-01-01 12:00:00Z", "2024-01-01T12:00:00", "2024-02-30T00:00:00Z"],
    "uuid": ["123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g"],
    "ipv4": ["256.1.1.1", "01.1.1.1", "1.1.1", "1.1.1.1.1", "1.1.1.-1"],
    "ipv6": [":", ":::", "1:2:3:4:5:6:7:8:9", "1::2::3", "12345::", "::1.2.3", "g::1",
             "1:2:3:4:5:6:7:1.2.3.4"],
    "ipvanyaddress": ["1.2.3", "::g"],
    "hostname": ["-a.com", "a-.com", "a..b", "a.123", "a" * 64, "xn--zz.com", "a_b.com", ""],
    "email": ["a@b", "@b.com", "a@.com", "a..b@c.com", "a@b.test", "a@x.local", "a b@c.com",
              "a@b.c1"],
    "uri": ["ftp://x.com", "http://", "http://-a.com", "http://a.com:0", "http://a.com/ b",
            "//a.com", "http://a.123", "http://xn--zz.com"],
}  # fmt: skip


def format_tree(name: str) -> rx.Node:
    return rx.parse(f"^(?:{FORMATS[name]})$", max_repetition=2000, max_depth=64)


def grammar_regex(schema: dict[str, Any]) -> re.Pattern[str]:
    return gbnf_regex(answer_grammar(schema), "answer")


def admits(got: re.Pattern[str], s: str) -> bool:
    return got.fullmatch(json.dumps(s, ensure_ascii=False)) is not None


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_string_a_format_admits_is_valid(name: str) -> None:
    got = grammar_regex({"type": "string", "format": name})
    source = re.compile(FORMATS[name])
    rng = random.Random(name)
    tree = format_tree(name)
    for _ in range(400):
        s = sample(tree, rng, spread=3)
        assert source.fullmatch(s) and admits(got, s), s
        for check in VALIDATORS[name]:
            check(s)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_format_admits_common_values_and_refuses_invalid_ones(name: str) -> None:
    got = grammar_regex({"type": "string", "format": name})
    for s in VALID[name]:
        assert admits(got, s), s
        for check in VALIDATORS[name]:
            check(s)
    for s in INVALID[name]:
        assert not admits(got, s), s


def test_ipv6_forms_are_all_valid_and_cover_the_compressions() -> None:
    got = grammar_regex({"type": "string", "format": "ipv6"})
    rng = random.Random(6)
    seen = set()
    for _ in range(3000):  # random addresses in every compressed form
        groups = [f"{rng.randrange(0x10000):x}" for _ in range(8)]
        i = rng.randint(0, 8)
        j = rng.randint(i, 8)
        if j - i >= 1:
            text = ":".join(groups[:i]) + "::" + ":".join(groups[j:])
        else:
            text = ":".join(groups)
        ipaddress.IPv6Address(text)
        assert admits(got, text), text
        seen.add((i, j))
    assert len(seen) > 40


@pytest.mark.parametrize(
    "name, lo, hi",
    [("email", 0, 30), ("email", 20, 40), ("uri", 0, 40), ("uri", 30, 60), ("hostname", 5, 12),
     ("uri", 1, 2083), ("date-time", 20, 40), ("uuid", 36, 36)],
)  # fmt: skip
def test_lengths_beside_a_format_narrow_it(name: str, lo: int, hi: int) -> None:
    got = grammar_regex({"type": "string", "format": name, "minLength": lo, "maxLength": hi})
    tree = rx.fit(format_tree(name), lo, hi, max_repetition=2000)
    assert tree is not None
    rng = random.Random(hi)
    for _ in range(300):
        s = sample(tree, rng, spread=3)
        assert lo <= len(s) <= hi and admits(got, s), s
        for check in VALIDATORS[name]:
            check(s)
    for s in VALID[name] + INVALID[name] + ["x" * (hi + 1), "http://" + "a" * hi]:
        if admits(got, s):
            assert lo <= len(s) <= hi and s in VALID[name], s


def test_pydantic_http_url_bounds_leave_the_format_whole() -> None:
    # HttpUrl: format uri, minLength 1, maxLength 2083: within what the format writes anyway
    tree = format_tree("uri")
    assert rx.fit(tree, 1, 2083, max_repetition=2000) is tree
    # an email bounded as a form field would be keeps its usual shape
    got = grammar_regex({"type": "string", "format": "email", "maxLength": 100})
    assert admits(got, "john.smith@mail.co.uk") and admits(got, "a@b.co")


@pytest.mark.parametrize(
    "schema, named",
    [({"type": "string", "format": "ipv4", "maxLength": 6}, "together with format 'ipv4'"),
     ({"type": "string", "format": "uuid", "minLength": 37}, "together with format 'uuid'"),
     ({"type": "string", "format": "email", "pattern": "^a"}, "'pattern' together with"),
     ({"type": "string", "format": "idn-email"}, "format 'idn-email'"),
     ({"type": "string", "format": "uuid4"}, "format 'uuid4'")],
)  # fmt: skip
def test_formats_that_cannot_be_held_are_refused(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(OasisError) as info:
        check_schema(schema, name="answer")
    assert info.value.status == 400 and named in info.value.message
