"""The range grammars accept exactly the numbers in range, written as JSON writes them.

The grammars use only literals, classes, groups, | and {m,n}, so without quotes and spaces
they are regular expressions: integers are checked against every integer in a window around
the bounds, numbers against whole, fractional, zero-padded and malformed samples.
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
        (0, None), (1, None), (None, 0), (None, -1), (-5, 5), (0, 0), (7, 7), (-100, -3),
        (10, 99), (0, 1000), (123, 4567), (-999, 12), (None, None), (None, 37), (99, 100)]
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
            (lo is None or n >= lo) and (hi is None or n <= hi)), n
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


Bound = tuple[int, bool] | None


def number_ranges() -> list[tuple[Bound, Bound]]:
    rng = random.Random(3)
    cases: list[tuple[Bound, Bound]] = [
        ((0, True), None), ((0, False), None), ((0, True), (1, True)), (None, (0, False)),
        (None, (0, True)), ((-3, False), (5, False)), ((2, True), (2, True)),
        ((-10, True), (-2, False)), (None, None), ((1, False), (2, True)),
        ((-1, False), (0, False))]
    while len(cases) < 150:
        a = rng.randint(-30, 30)
        b = a + rng.randint(0, 30)
        lo = (a, rng.random() < 0.5) if rng.random() < 0.85 else None
        hi = (b, rng.random() < 0.5) if rng.random() < 0.85 else None
        if lo and hi and (lo[0] > hi[0] or (lo[0] == hi[0] and not (lo[1] and hi[1]))):
            continue
        cases.append((lo, hi))
    return cases


def _samples() -> set[str]:
    out = {"-0", "-0.0", "00", "01.5", "1.", ".5", "1e3", "-", "", "+1"}
    for i in range(-40, 41):
        out |= {str(i), f"{i}.0", f"{i}.00", f"{i}.5", f"{i}.05", f"{i}.000001", f"{i}.999"}
    out |= {f"-0.{d}" for d in ("5", "001", "0")}
    return out


SAMPLES = _samples()


def _in_range(text: str, lo: Bound, hi: Bound) -> bool:
    if not re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?", text):
        return False
    v = Decimal(text)
    if text.startswith("-") and v == 0:
        return False  # "-0": the grammar writes zero without a sign
    if lo is not None and (v < lo[0] or (v == lo[0] and not lo[1])):
        return False
    return hi is None or v < hi[0] or (v == hi[0] and hi[1])


@pytest.mark.parametrize("lo, hi", number_ranges())
def test_exactly_the_numbers_in_range(lo: Bound, hi: Bound) -> None:
    rx = as_regex(number_gbnf(lo, hi))
    for text in SAMPLES:
        assert (rx.fullmatch(text) is not None) == _in_range(text, lo, hi), text


def test_number_bounds_from_a_schema() -> None:
    assert number_bounds({"minimum": 0, "maximum": 1.0}) == ((0, True), (1, True))
    assert number_bounds({"minimum": 0, "exclusiveMinimum": 0}) == ((0, False), None)
    with pytest.raises(ValueError, match="whole-number"):
        number_bounds({"maximum": 0.5})
    with pytest.raises(ValueError):
        number_gbnf((1, False), (1, True))
