"""Prompt-lookup drafts: what followed the latest earlier occurrence of the last tokens."""

from __future__ import annotations

from oasis.engine.llamacpp.speculative import MAX_DRAFT, MIN_DRAFT, Lookup


def test_drafts_what_followed_the_suffix_in_the_prompt() -> None:
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    lookup = Lookup()
    assert lookup.draft([*prompt, 3, 4], 4) == [5, 6, 7, 8]


def test_the_longest_ngram_and_the_latest_occurrence_win() -> None:
    # "1 2 3 4" was followed by 50 51; "3 4" alone, later, by 60 61: the 4-gram wins
    tokens = [1, 2, 3, 4, 50, 51, 3, 4, 60, 61, 1, 2, 3, 4]
    assert Lookup().draft(tokens, 2) == [50, 51]
    # "7 8" was followed by 1 1 and later by 2 2: the latest wins
    tokens2 = [9, 7, 8, 1, 1, 7, 8, 2, 2, 0, 7, 8]
    assert Lookup().draft(tokens2, 2) == [2, 2]


def test_no_match_no_draft_and_short_matches_are_dropped() -> None:
    assert Lookup().draft([1, 2, 3, 4, 5], 8) == []
    assert Lookup().draft([1, 2, 3, 1, 2], 8) == [3, 1, 2]
    assert MIN_DRAFT > 1
    assert Lookup().draft([3, 3, 3], 8) == []  # one token follows the match: too short


def test_the_index_grows_with_the_output() -> None:
    lookup = Lookup()
    tokens = [10, 11, 12, 13]
    assert lookup.draft(tokens, 8) == []
    tokens += [14, 15, 10, 11]
    assert lookup.draft(tokens, 8) == [12, 13, 14, 15, 10, 11]


def test_draft_length_adapts_to_what_is_kept() -> None:
    lookup = Lookup()
    start = lookup.size
    lookup.feedback(start, start)
    assert lookup.size == min(MAX_DRAFT, 2 * start)
    lookup.feedback(lookup.size, 0)
    lookup.feedback(lookup.size, 0)
    lookup.feedback(lookup.size, 0)
    lookup.feedback(lookup.size, 0)
    assert lookup.size == MIN_DRAFT
    tokens = [*range(40), 0, 1]
    assert len(lookup.draft(tokens, 16)) == MIN_DRAFT
