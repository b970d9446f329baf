"""GBNF for the JSON integers in a range: ``minimum`` / ``maximum`` (and the exclusive ones) on
``"type": "integer"``, which llama-cpp-python's schema converter does not enforce.

Numbers are written as JSON writes them (no leading zeros, ``-`` for negatives, at most 16
digits like the converter's own integers). The range is split by sign and by digit count, and
each fixed-length piece digit by digit, the classic construction for numeric ranges as regular
expressions. Only literals, character classes, groups, ``|`` and ``{m,n}`` are used, so the
output reads the same as a regular expression once quotes and spaces are removed (the tests
check it that way against every integer in a window).
"""

from __future__ import annotations

import math

MAX_DIGITS = 16
_CAP = 10**MAX_DIGITS - 1


def bounds(schema: dict[str, object]) -> tuple[int | None, int | None]:
    """The inclusive integer bounds of an integer schema (None: unbounded)."""
    lo: int | None = None
    hi: int | None = None
    for key in ("minimum", "exclusiveMinimum"):
        v = schema.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            b = math.ceil(v) if key == "minimum" else math.floor(v) + 1
            lo = b if lo is None else max(lo, b)
    for key in ("maximum", "exclusiveMaximum"):
        v = schema.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            b = math.floor(v) if key == "maximum" else math.ceil(v) - 1
            hi = b if hi is None else min(hi, b)
    return lo, hi


def _digits(lo: int, hi: int) -> str:
    return f"[{lo}-{hi}]" if lo != hi else f'"{lo}"'


def _fixed(lo: str, hi: str) -> str:
    """Strings of len(lo) == len(hi) digits between lo and hi (leading zeros allowed)."""
    if not lo:
        return ""
    rest = len(lo) - 1
    if lo[0] == hi[0]:
        tail = _fixed(lo[1:], hi[1:])
        return f'"{lo[0]}"' + (f" {tail}" if tail else "")
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return _digits(int(lo[0]), int(hi[0])) + (f" [0-9]{{{rest}}}" if rest else "")
    alts = []
    first = _fixed(lo[1:], "9" * rest)
    alts.append(f'"{lo[0]}" ( {first} )' if rest else f'"{lo[0]}"')
    if int(lo[0]) + 1 <= int(hi[0]) - 1:
        alts.append(_digits(int(lo[0]) + 1, int(hi[0]) - 1) + (f" [0-9]{{{rest}}}" if rest else ""))
    last = _fixed("0" * rest, hi[1:])
    alts.append(f'"{hi[0]}" ( {last} )' if rest else f'"{hi[0]}"')
    return "( " + " | ".join(alts) + " )"


def _natural(lo: int, hi: int | None) -> list[str]:
    """Alternatives for the integers lo..hi (0 <= lo; hi None: up to 16 digits)."""
    top = _CAP if hi is None else hi
    alts = []
    full: list[int] = []  # widths >= 2 whose every number is in range: one alternative
    for width in range(len(str(lo)), len(str(top)) + 1):
        first = 0 if width == 1 else 10 ** (width - 1)
        a, b = max(lo, first), min(top, 10**width - 1)
        if a > b:
            continue
        if width > 1 and a == first and b == 10**width - 1:
            full.append(width)
            continue
        alts.append(_fixed(str(a), str(b)))
    if full:  # consecutive by construction
        span = f"{{{full[0] - 1}}}" if len(full) == 1 else f"{{{full[0] - 1},{full[-1] - 1}}}"
        alts.append(f"[1-9] [0-9]{span}")
    return alts


def integer_gbnf(lo: int | None, hi: int | None) -> str:
    """A GBNF expression for the integers in [lo, hi]; raises ValueError when there are none."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"no integer is >= {lo} and <= {hi}")
    if (lo is not None and lo < -_CAP) or (hi is not None and hi > _CAP):
        raise ValueError(f"bounds beyond {MAX_DIGITS} digits")
    alts: list[str] = []
    if hi is None or hi >= 0:  # the non-negative part
        alts += _natural(max(lo, 0) if lo is not None else 0, hi)
    if lo is None or lo < 0:  # the negative part: "-" and a positive range
        neg_lo = max(1, -hi) if hi is not None else 1
        neg_hi = -lo if lo is not None else None
        if neg_hi is None or neg_lo <= neg_hi:
            alts += [f'"-" {x}' for x in _natural(neg_lo, neg_hi)]
    return "( " + " | ".join(alts) + " )"


# -- numbers with whole-number bounds --------------------------------------------------------

_FRACTION = '( "." [0-9]{1,15} )?'
_ZERO_FRACTION = '( "." "0"{1,15} )?'
_NONZERO_FRACTION = '"." [0-9]{0,14} [1-9] [0-9]{0,14}'


def number_bounds(
    schema: dict[str, object],
) -> tuple[tuple[int, bool] | None, tuple[int, bool] | None]:
    """``((lo, inclusive), (hi, inclusive))`` of a number schema (None: unbounded); raises
    ValueError for a bound that is not a whole number (not enforced)."""

    def whole(key: str) -> int | None:
        v = schema.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
            raise ValueError(f"'{key}' {v!r} on a number: only whole-number bounds are enforced")
        return int(v)

    lo: tuple[int, bool] | None = None
    hi: tuple[int, bool] | None = None
    for key, inclusive in (("minimum", True), ("exclusiveMinimum", False)):
        b = whole(key)
        if b is not None and (lo is None or b > lo[0] or (b == lo[0] and not inclusive)):
            lo = (b, inclusive)
    for key, inclusive in (("maximum", True), ("exclusiveMaximum", False)):
        b = whole(key)
        if b is not None and (hi is None or b < hi[0] or (b == hi[0] and not inclusive)):
            hi = (b, inclusive)
    return lo, hi


def _magnitudes(lo: tuple[int, bool], hi: tuple[int, bool] | None) -> list[str]:
    """Alternatives for the decimals ``I`` or ``I.F`` (no sign) between lo and hi, lo >= 0."""
    (a, a_inc), top = lo, hi
    alts: list[str] = []
    # whole integer parts strictly inside: any fraction
    first = a if a_inc else a + 1
    last = None if top is None else top[0] - 1
    if last is None or first <= last:
        alts += [f"{x} {_FRACTION}" for x in _natural(first, last)]
    # the lower end itself, when exclusive: a fraction that is not zero
    if not a_inc and (top is None or a < top[0]):
        alts.append(f'"{a}" {_NONZERO_FRACTION}')
    # the upper end itself, when inclusive: no fraction, or zeros
    if top is not None and top[1] and (top[0] > a or (top[0] == a and a_inc)):
        alts.append(f'"{top[0]}" {_ZERO_FRACTION}')
    return alts


def number_gbnf(lo: tuple[int, bool] | None, hi: tuple[int, bool] | None) -> str:
    """A GBNF expression for the JSON numbers (no exponent) between whole-number bounds."""
    if (
        lo is not None
        and hi is not None
        and (lo[0] > hi[0] or (lo[0] == hi[0] and not (lo[1] and hi[1])))
    ):
        raise ValueError("no number satisfies the bounds")
    for b in (lo, hi):
        if b is not None and abs(b[0]) > _CAP:
            raise ValueError(f"bounds beyond {MAX_DIGITS} digits")
    alts: list[str] = []
    if hi is None or hi[0] > 0 or (hi[0] == 0 and hi[1]):  # v >= 0, written without a sign
        start = lo if lo is not None and lo[0] >= 0 else (0, True)
        alts += _magnitudes(start, hi)
    if lo is None or lo[0] < 0:  # v < 0: "-" and a magnitude m = -v > 0
        m_lo = (-hi[0], hi[1]) if hi is not None and hi[0] < 0 else (0, False)
        m_hi = (-lo[0], lo[1]) if lo is not None else None
        alts += [f'"-" {x}' for x in _magnitudes(m_lo, m_hi)]
    return "( " + " | ".join(alts) + " )"
