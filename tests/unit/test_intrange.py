"""The integer-range grammar accepts exactly the integers in range, written as JSON writes them.

The grammar uses only literals, classes, groups, | and {m,n}, so without quotes and spaces it
is a regular expression: checked against every integer in a window around the bounds.
"""

from __future__ import annotations

import random
import re

import pytest

from oasis.serving.intrange import bounds, integer_gbnf


def as_regex(gbnf: str) -> re.Pattern[str]:
    return re.compile(gbnf.replace('"', "").replace(" ", ""))


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
