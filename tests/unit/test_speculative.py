"""Prompt-lookup drafts: what followed the latest earlier occurrence of the last tokens."""

from __future__ import annotations

from oasis.engine.llamacpp.speculative import (
    INDEX_STEP,
    MAX_DRAFT,
    MIN_DRAFT,
    MIN_KEPT,
    PAUSE,
    DraftBudget,
    Lookup,
)


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


def test_draft_budget_grows_on_kept_drafts_and_pauses_after_rejected_ones() -> None:
    budget = DraftBudget(size=4)
    budget.feedback(4, 4)
    assert budget.allowed() == 8
    budget.feedback(8, 5)  # mostly kept: unchanged
    assert budget.allowed() == 8
    budget.feedback(8, 3)  # less than half kept: halved
    assert budget.allowed() == 4
    budget.feedback(4, 4)
    assert budget.allowed() == 8
    budget.feedback(8, 1)  # kept rarely: paused although the size is fine
    budget.feedback(8, 1)
    assert budget.kept < MIN_KEPT and budget.size >= MIN_DRAFT
    assert budget.allowed() == 0
    for _ in range(3):
        budget.feedback(8, 0)
    assert budget.size < MIN_DRAFT
    # paused: no drafts for PAUSE - 1 steps, then one short try
    tries = [budget.allowed() for _ in range(2 * PAUSE)]
    assert tries.count(0) == 2 * PAUSE - 2 and tries.count(MIN_DRAFT) == 2
    budget.feedback(MIN_DRAFT, MIN_DRAFT)  # tries kept: drafting resumes
    budget.feedback(MIN_DRAFT, MIN_DRAFT)
    assert budget.allowed() >= MIN_DRAFT
    assert DraftBudget(size=MAX_DRAFT).allowed() == MAX_DRAFT
    big = DraftBudget(size=MAX_DRAFT)
    big.feedback(MAX_DRAFT, MAX_DRAFT)
    assert big.size == MAX_DRAFT


def test_a_long_prompt_is_indexed_over_a_few_steps() -> None:
    # the match lies past what one step indexes
    tokens = [*range(3 * INDEX_STEP), -7, -8, -9, -10, -11, -7, -8]
    lookup = Lookup()
    drafts = [lookup.draft(tokens, 3) for _ in range(4)]
    assert drafts[0] == [] and drafts[-1] == [-9, -10, -11]
