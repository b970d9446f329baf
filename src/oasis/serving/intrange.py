"""GBNF for the JSON numbers in a range: ``minimum`` / ``maximum`` (and the exclusive ones) on
``"type": "integer"`` and ``"type": "number"``.

Numbers are written as JSON writes them (no leading zeros, ``-`` for negatives, at most 16
integer digits and, for numbers, at most 15 fraction digits and no exponent). The range is
split by sign and by digit count, and each fixed-length piece digit by digit, the classic
construction for numeric ranges as regular expressions; a fractional bound (``0.5``) is met
the same way on the fraction's digits, compared as decimals (``0.5`` = ``0.50``). Only
literals, character classes, groups, ``|``, ``?`` and ``{m,n}`` are used, so the output reads
the same as a regular expression once quotes and spaces are removed (the tests check it that
way against every integer in a window and many decimals around each bound).
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal

MAX_DIGITS = 16  # integer digits
MAX_FRACTION = 15  # fraction digits of a bounded number
_CAP = 10**MAX_DIGITS - 1
_CTX = Context(prec=MAX_DIGITS + MAX_FRACTION + 8)


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
    # the grammar writes at most 16 digits: a bound beyond them holds for all it writes
    lo = None if lo is not None and lo < -_CAP else lo
    hi = None if hi is not None and hi > _CAP else hi
    if (lo is not None and lo > _CAP) or (hi is not None and hi < -_CAP):
        raise ValueError(f"the bounds leave no integer of at most {MAX_DIGITS} digits")
    alts: list[str] = []
    if hi is None or hi >= 0:  # the non-negative part
        alts += _natural(max(lo, 0) if lo is not None else 0, hi)
    if lo is None or lo < 0:  # the negative part: "-" and a positive range
        neg_lo = max(1, -hi) if hi is not None else 1
        neg_hi = -lo if lo is not None else None
        if neg_hi is None or neg_lo <= neg_hi:
            alts += [f'"-" {x}' for x in _natural(neg_lo, neg_hi)]
    return "( " + " | ".join(alts) + " )"


# -- numbers ---------------------------------------------------------------------------------

Bound = tuple[Decimal, bool]  # (value, inclusive)

_FRACTION = f'( "." [0-9]{{1,{MAX_FRACTION}}} )?'
_NUMBER_KEYS = (
    ("minimum", True, True),
    ("exclusiveMinimum", True, False),
    ("maximum", False, True),
    ("exclusiveMaximum", False, False),
)


def number_bounds(schema: dict[str, object]) -> tuple[Bound | None, Bound | None]:
    """``((lo, inclusive), (hi, inclusive))`` of a number schema (None: unbounded); raises
    ValueError for a bound that is not a finite number."""
    lo: Bound | None = None
    hi: Bound | None = None
    for key, lower, inclusive in _NUMBER_KEYS:
        v = schema.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"'{key}' {v!r} is not a finite number")
        b = Decimal(v) if isinstance(v, int) else Decimal(repr(v))
        if lower and (lo is None or b > lo[0] or (b == lo[0] and not inclusive)):
            lo = (b, inclusive)
        if not lower and (hi is None or b < hi[0] or (b == hi[0] and not inclusive)):
            hi = (b, inclusive)
    return lo, hi


def _digits_of(v: Decimal) -> tuple[int, str]:
    """The integer part and the fraction digits (no trailing zeros) of ``v >= 0``, which has
    at most MAX_FRACTION of them."""
    scaled = int(v.scaleb(MAX_FRACTION, _CTX))
    whole, frac = divmod(scaled, 10**MAX_FRACTION)
    return whole, str(frac).rjust(MAX_FRACTION, "0").rstrip("0")


def _on_grid(b: tuple[Decimal | int, bool] | None, lower: bool) -> Bound | None:
    """The bound on the numbers the grammar writes (at most MAX_FRACTION fraction digits): a
    finer bound moves to the next such number inward, inclusive."""
    if b is None:
        return None
    v = Decimal(b[0])
    if abs(v) > _CAP + 1:
        return (v, b[1])  # beyond what is written at all (number_gbnf sees to it)
    q = v.quantize(Decimal(1).scaleb(-MAX_FRACTION), ROUND_CEILING if lower else ROUND_FLOOR, _CTX)
    return (q, b[1]) if q == v else (q, True)


class _Fraction:
    """The digits ``F`` after the point (``0.F`` compared as a decimal) between two bounds,
    each given as its digits without trailing zeros; None for an open side."""

    def __init__(self, lo: str | None, lo_inc: bool, hi: str | None, hi_inc: bool) -> None:
        self.lo, self.lo_inc, self.hi, self.hi_inc = lo, lo_inc, hi, hi_inc

    def can_end(self, i: int, tlo: bool, thi: bool) -> bool:
        """May F end after i digits that equal the tight bounds' first i digits?"""
        if tlo and self.lo is not None and (i < len(self.lo) or not self.lo_inc):
            return False  # below lo, or equal to an exclusive lo
        return not (thi and self.hi is not None and i >= len(self.hi) and not self.hi_inc)

    def rest(self, i: int, tlo: bool, thi: bool) -> str | None:
        """GBNF for the digits from position i on (maybe none); None if nothing fits."""
        room = MAX_FRACTION - i
        lo_met = not tlo or (self.lo is not None and i >= len(self.lo) and self.lo_inc)
        if lo_met and not thi:
            return f"[0-9]{{0,{room}}}" if room else ""
        end = self.can_end(i, tlo, thi)
        more = self.digits(i, tlo, thi) if room else None
        if more is None:
            return "" if end else None
        return f"( {more} )?" if end else more

    def digits(self, i: int, tlo: bool, thi: bool) -> str | None:
        """GBNF for one or more digits from position i on; None if nothing fits."""
        d_lo = int(self.lo[i]) if tlo and self.lo is not None and i < len(self.lo) else 0
        d_hi = int(self.hi[i]) if thi and self.hi is not None and i < len(self.hi) else 0
        groups: dict[tuple[bool, bool], list[int]] = {}
        for c in range(10):
            if (tlo and c < d_lo) or (thi and c > d_hi):
                continue
            groups.setdefault((tlo and c == d_lo, thi and c == d_hi), []).append(c)
        alts = []
        for (nlo, nhi), cs in groups.items():  # each group is a run of digits
            rest = self.rest(i + 1, nlo, nhi)
            if rest is not None:
                alts.append(f"{_digits(cs[0], cs[-1])} {rest}".rstrip())
        if not alts:
            return None
        return alts[0] if len(alts) == 1 else "( " + " | ".join(alts) + " )"

    def part(self) -> str | None:
        """The optional ``"." F`` after an integer part; None if nothing fits."""
        tlo, thi = self.lo is not None, self.hi is not None
        end = self.can_end(0, tlo, thi)
        more = self.digits(0, tlo, thi)
        if more is None:
            return "" if end else None
        return f'( "." {more} )?' if end else f'"." {more}'


def _magnitudes(lo: Bound, hi: Bound | None) -> list[str]:
    """Alternatives for the decimals ``I`` or ``I.F`` (no sign) between lo >= 0 and hi."""
    (a, a_inc), alts = lo, []
    ai, af = _digits_of(a)
    if hi is None:
        bi, bf, b_inc = None, "", False
    else:
        if hi[0] < a or (hi[0] == a and not (a_inc and hi[1])):
            return []
        (bi, bf), b_inc = _digits_of(hi[0]), hi[1]

    def at(whole: int, part: _Fraction) -> None:
        frac = part.part()
        if frac is not None:
            alts.append(f'"{whole}" {frac}'.rstrip())

    if bi == ai:
        at(ai, _Fraction(af, a_inc, bf, b_inc))
        return alts
    at(ai, _Fraction(af, a_inc, None, True))
    last = None if bi is None else bi - 1
    if last is None or ai + 1 <= last:
        alts += [f"{x} {_FRACTION}" for x in _natural(ai + 1, last)]
    if bi is not None:
        at(bi, _Fraction(None, True, bf, b_inc))
    return alts


def number_gbnf(
    lower: tuple[Decimal | int, bool] | None, upper: tuple[Decimal | int, bool] | None
) -> str:
    """A GBNF expression for the JSON numbers (no exponent) between two bounds, each
    ``(value, inclusive)`` or None; raises ValueError when the grammar can write none."""
    limit = Decimal(_CAP + 1)
    lo, hi = _on_grid(lower, True), _on_grid(upper, False)
    lo = None if lo is not None and lo[0] <= -limit else lo
    hi = None if hi is not None and hi[0] >= limit else hi
    if (lo is not None and lo[0] >= limit) or (hi is not None and hi[0] <= -limit):
        raise ValueError(f"the bounds leave no number of at most {MAX_DIGITS} integer digits")
    alts: list[str] = []
    if hi is None or hi[0] > 0 or (hi[0] == 0 and hi[1]):  # v >= 0, written without a sign
        start = lo if lo is not None and lo[0] >= 0 else (Decimal(0), True)
        alts += _magnitudes(start, hi)
    if lo is None or lo[0] < 0:  # v < 0: "-" and a magnitude m = -v > 0
        m_lo = (-hi[0], hi[1]) if hi is not None and hi[0] < 0 else (Decimal(0), False)
        m_hi = (-lo[0], lo[1]) if lo is not None else None
        alts += [f'"-" {x}' for x in _magnitudes(m_lo, m_hi)]
    if not alts:
        raise ValueError("no number satisfies the bounds")
    return "( " + " | ".join(alts) + " )"
