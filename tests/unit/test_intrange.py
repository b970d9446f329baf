"""The range grammars accept exactly the numbers in range, written as JSON writes them.

The grammars use only literals, classes, groups, | and {m,n}, so without quotes and spaces
they are regular expressions: integers are checked against every integer in a window around
the bounds, numbers (whole and fractional bounds) against whole, fractional, zero-padded and
malformed samples, and decimals just inside and outside each bound down to the 15th digit.
"""

from __future__ import annotations

import random
import re
from decimal import Decimal

import pytest

from oasis.serving.intrange import bounds, integer_gbnf, number_bounds, number_gbnf


def as_regex(gbnf: str) -> re.Pattern[str]:
    return re.compile(gbnf.replace('"."', r"\.").replace('"', "").replace(" ", ""))


def ranges() -> list[tuple[int | None, int | None]]:
    rng = random.Random(7)
    fixed: list[tuple[int | None, int | None]] = [
        (0, None),
        (1, None),
        (None, 0),
        (None, -1),
        (-5, 5),
        (0, 0),
        (7, 7),
        (-100, -3),
        (10, 99),
        (0, 1000),
        (123, 4567),
        (-999, 12),
        (None, None),
        (None, 37),
        (99, 100),
    ]
    for _ in range(120):
        a = rng.randint(-3000, 3000)
        b = a + rng.randint(0, 5000)
        fixed.append((a if rng.random() < 0.9 else None, b if rng.random() < 0.9 else None))
    return fixed


@pytest.mark.parametrize("lo, hi", ranges())
def test_exactly_the_integers_in_range(lo: int | None, hi: int | None) -> None:
    rx = as_regex(integer_gbnf(lo, hi))
    for n in range(-9000, 9000):
        assert (rx.fullmatch(str(n)) is not None) == (
            (lo is None or n >= lo) and (hi is None or n <= hi)
        ), n
    for text in ("00", "01", "-0", "-01", "+1", "1.0", "1e3", ""):
        assert rx.fullmatch(text) is None, text


def test_big_numbers_stay_within_sixteen_digits() -> None:
    rx = as_regex(integer_gbnf(0, None))
    assert rx.fullmatch("9" * 16) and not rx.fullmatch("1" + "0" * 16)


def test_bounds_from_a_schema() -> None:
    assert bounds({"type": "integer", "minimum": 1.5, "exclusiveMaximum": 10}) == (2, 9)
    assert bounds({"type": "integer", "exclusiveMinimum": 0, "maximum": 7.9}) == (1, 7)
    assert bounds({"type": "integer", "minimum": 0, "exclusiveMinimum": 3}) == (4, None)
    with pytest.raises(ValueError):
        integer_gbnf(5, 4)


Bound = tuple[Decimal, bool] | None
STEPS = [Decimal(x) for x in ("1", "0.5", "0.25", "0.1", "0.05", "0.125", "0.001", "0.3")]


def number_ranges() -> list[tuple[Bound, Bound]]:
    rng = random.Random(3)
    d = Decimal
    cases: list[tuple[Bound, Bound]] = [
        ((d(0), True), None), ((d(0), False), None), ((d(0), True), (d(1), True)),
        (None, (d(0), False)), (None, (d(0), True)), ((d(-3), False), (d(5), False)),
        ((d(2), True), (d(2), True)), ((d(-10), True), (d(-2), False)), (None, None),
        ((d(1), False), (d(2), True)), ((d(-1), False), (d(0), False)),
        ((d("0.5"), True), None), ((d("0.1"), False), None), (None, (d("0.5"), True)),
        ((d("0.5"), True), (d("2.75"), False)), ((d("-0.5"), False), (d("0.5"), False)),
        ((d("0.123"), True), (d("0.125"), False)), ((d("1.5"), True), (d("1.5"), True)),
        ((d("-2.75"), False), (d("-0.05"), True)), ((d("0.999"), False), (d(1), True)),
        ((d("0.001"), True), (d("0.002"), True)), ((d("-0.25"), True), (d("-0.2"), False)),
    ]  # fmt: skip
    while len(cases) < 180:
        step = rng.choice(STEPS)
        a = rng.randint(-120, 120) * step
        b = a + rng.randint(0, 120) * rng.choice(STEPS)
        lo = (a, rng.random() < 0.5) if rng.random() < 0.85 else None
        hi = (b, rng.random() < 0.5) if rng.random() < 0.85 else None
        if lo and hi and (lo[0] > hi[0] or (lo[0] == hi[0] and not (lo[1] and hi[1]))):
            continue
        cases.append((lo, hi))
    return cases


def _samples(bounds: list[Decimal]) -> set[str]:
    out = {"-0", "-0.0", "00", "01.5", "1.", ".5", "1e3", "-", "", "+1", "0.5e1"}
    for i in range(-40, 41):
        out |= {str(i), f"{i}.0", f"{i}.00", f"{i}.5", f"{i}.05", f"{i}.000001", f"{i}.999"}
    out |= {f"-0.{d}" for d in ("5", "001", "0")}
    for b in bounds:  # around each bound, to the last digit the grammar writes
        for k in range(1, 16):
            for v in (b, b + Decimal(1).scaleb(-k), b - Decimal(1).scaleb(-k)):
                out |= {f"{v:f}", f"{v:f}0" if "." in f"{v:f}" else f"{v:f}.0"}
    return out


def _in_range(text: str, lo: Bound, hi: Bound) -> bool:
    if not re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]{1,15})?", text):
        return False  # not JSON, or more fraction digits than the grammar writes
    v = Decimal(text)
    if text.startswith("-") and v == 0:
        return False  # "-0": the grammar writes zero without a sign
    if lo is not None and (v < lo[0] or (v == lo[0] and not lo[1])):
        return False
    return hi is None or v < hi[0] or (v == hi[0] and hi[1])


@pytest.mark.parametrize("lo, hi", number_ranges())
def test_exactly_the_numbers_in_range(lo: Bound, hi: Bound) -> None:
    rx = as_regex(number_gbnf(lo, hi))
    for text in _samples([b[0] for b in (lo, hi) if b is not None]):
        assert (rx.fullmatch(text) is not None) == _in_range(text, lo, hi), text


def test_number_bounds_from_a_schema() -> None:
    assert number_bounds({"minimum": 0, "maximum": 1.0}) == ((0, True), (1, True))
    assert number_bounds({"minimum": 0, "exclusiveMinimum": 0}) == ((0, False), None)
    assert number_bounds({"maximum": 0.5, "exclusiveMinimum": 0.1}) == (
        (Decimal("0.1"), False), (Decimal("0.5"), True))  # fmt: skip
    for bad in (float("inf"), float("-inf"), float("nan"), "1", True):
        with pytest.raises(ValueError, match="finite"):
            number_bounds({"maximum": bad})
    with pytest.raises(ValueError):
        number_gbnf((Decimal(1), False), (Decimal(1), True))


def test_bounds_finer_than_the_grammar_writes_move_inward() -> None:
    # 1e-20: no number of at most 15 fraction digits is between 0 and it
    rx = as_regex(number_gbnf((Decimal("1e-20"), True), None))
    assert not rx.fullmatch("0") and rx.fullmatch("0.000000000000001") and rx.fullmatch("3")
    with pytest.raises(ValueError):
        number_gbnf((Decimal("1e-20"), False), (Decimal("2e-20"), True))


def test_bounds_beyond_sixteen_digits_hold_for_all_that_is_written() -> None:
    assert integer_gbnf(0, 10**40) == integer_gbnf(0, None)
    assert integer_gbnf(-(10**40), 5) == integer_gbnf(None, 5)
    assert number_gbnf(None, (Decimal(10) ** 300, False)) == number_gbnf(None, None)
    for lo in (10**17, 10**300):
        with pytest.raises(ValueError):
            integer_gbnf(lo, None)
        with pytest.raises(ValueError):
            number_gbnf((Decimal(lo), True), None)
