"""String ``format``s as regular expressions, enforced like a ``pattern`` (serving/pattern.py).

Each is a subset of what the format allows, chosen so that every string it admits is valid for
the format's usual checker (``ipaddress``, ``datetime.fromisoformat``, ``uuid.UUID``, pydantic's
``AnyUrl`` / ``HttpUrl`` and ``EmailStr``, jsonschema's format checker) and reads the same as a
Python regular expression (the tests check them both ways). Where the format has a maximum
length (a hostname's 253 characters, an email's 254), the pieces are bounded so that it holds;
``minLength`` / ``maxLength`` beside a format narrow it further (``pattern.fit``).

- ``date``, ``time``, ``date-time``: RFC 3339 (``full-date``, ``full-time``); days by month,
  29 February only in leap years, no year 0, no leap second, at most 6 fraction digits.
- ``uuid``: 8-4-4-4-12 hexadecimal digits.
- ``ipv4``: dotted decimal, no leading zeros. ``ipv6``: RFC 3986's ``IPv6address`` (every
  form of ``::`` compression, an IPv4 tail), no zone. ``ipvanyaddress`` (pydantic): either.
- ``hostname``: RFC 1123 labels of letters, digits and single inner hyphens (so never an
  ``xn--`` label that is not Punycode), the last starting with a letter (never all digits),
  at most 4 labels of at most 62 characters.
- ``email``: ``local@domain``: a dot-atom of RFC 5322 ``atext`` and a domain of 2 to 4 labels
  ending in letters, but not a special-use name (``.test``, ``.local``...) that email
  validators refuse.
- ``uri``: ``http`` and ``https`` URLs (so both pydantic's ``AnyUrl`` and ``HttpUrl`` take
  them): a host name (up to 5 labels) or IPv4 address, an optional port, up to 10 path
  segments of up to 40 ``pchar`` (RFC 3986, percent-escapes included), a query of up to 100
  and a fragment of up to 50: at most 1989 characters, within ``HttpUrl``'s 2083.
"""

from __future__ import annotations

from typing import Any


def _exclude(words: list[str], lo: int, hi: int) -> str:
    """A regex for the strings of ASCII letters, lo..hi long, that are none of ``words``
    (lowercase; in any case)."""
    trie: dict[str, Any] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node["$"] = {}

    def walk(node: dict[str, Any], depth: int) -> str | None:
        """The rest after ``depth`` letters along the trie (None: nothing fits)."""
        alts = []
        if depth < hi:
            taken = sorted(k for k in node if k != "$")
            keep = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in taken]
            others = "[" + "".join(keep) + "".join(keep).upper() + "]"
            alts.append(f"{others}[a-zA-Z]{{{max(0, lo - depth - 1)},{hi - depth - 1}}}")
            for ch in taken:
                rest = walk(node[ch], depth + 1)
                if rest is not None:
                    alts.append(f"[{ch}{ch.upper()}]{rest}")
        end = "$" not in node and depth >= lo
        if not alts:
            return "" if end else None
        return f"(?:{'|'.join(alts)})" + ("?" if end else "")

    return walk(trie, 0) or ""


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16 = r"[0-9a-fA-F]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{IPV4})"
IPV6 = (
    "(?:"
    + "|".join(
        [
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)

_YEAR = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_HOUR = r"(?:[01][0-9]|2[0-3])"
TIME = rf"{_HOUR}:[0-5][0-9]:[0-5][0-9](?:\.[0-9]{{1,6}})?(?:Z|[+-]{_HOUR}:[0-5][0-9])"
DATE_TIME = rf"{DATE}T{TIME}"
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

_ALNUM = "a-zA-Z0-9"
_LABEL = rf"[{_ALNUM}]{{1,20}}(?:-[{_ALNUM}]{{1,20}}){{0,2}}"  # at most 62 characters
_LAST_LABEL = rf"[a-zA-Z][{_ALNUM}]{{0,19}}(?:-[{_ALNUM}]{{1,20}}){{0,2}}"
HOSTNAME = rf"(?:{_LABEL}\.){{0,3}}{_LAST_LABEL}"  # at most 4 * 63 - 1 = 251 characters

# email-validator (pydantic's EmailStr) refuses these top-level names
_SPECIAL_USE = ["arpa", "invalid", "local", "localhost", "onion", "test"]
_ATEXT = r"[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]"
_DOMAIN_LABEL = rf"[{_ALNUM}]{{1,20}}(?:-[{_ALNUM}]{{1,20}})?"  # at most 41 characters
_TLD = _exclude(_SPECIAL_USE, 2, 20)
EMAIL = (
    rf"{_ATEXT}{{1,20}}(?:\.{_ATEXT}{{1,20}}){{0,2}}"  # at most 62 characters
    rf"@(?:{_DOMAIN_LABEL}\.){{1,3}}{_TLD}"  # at most 3 * 42 + 20 = 146 characters
)

_PCHAR = r"(?:[a-zA-Z0-9._~!$&'()*+,;=:@-]|%[0-9a-fA-F]{2})"
_HOST_LABEL = r"[a-z0-9]{1,20}(?:-[a-z0-9]{1,20}){0,2}"
_HOST = rf"(?:(?:{_HOST_LABEL}\.){{0,4}}[a-z][a-z0-9]{{0,19}}(?:-[a-z0-9]{{1,20}}){{0,2}}|{IPV4})"
URI = (  # at most 8 + 314 + 5 + 10 * 121 + 301 + 151 = 1989 characters
    rf"https?://{_HOST}(?::[1-9][0-9]{{0,3}})?(?:/{_PCHAR}{{0,40}}){{0,10}}"
    rf"(?:\?(?:{_PCHAR}|[/?]){{0,100}})?(?:#(?:{_PCHAR}|[/?]){{0,50}})?"
)

# format -> its regular expression (anchored at both ends when used)
FORMATS: dict[str, str] = {
    "date": DATE,
    "time": TIME,
    "date-time": DATE_TIME,
    "uuid": UUID,
    "ipv4": IPV4,
    "ipv6": IPV6,
    "ipvanyaddress": f"(?:{IPV4}|{IPV6})",
    "hostname": HOSTNAME,
    "email": EMAIL,
    "uri": URI,
}
