"""Which slot a request lands on (no model needed: the policy is plain bookkeeping)."""

from __future__ import annotations

from pathlib import Path

from oasis.engine.llamacpp.engine import LlamaEngine
from oasis.engine.llamacpp.slots import Slot, common_prefix

SYSTEM = list(range(100, 124))  # a system prompt every chat shares


def engine() -> LlamaEngine:
    return LlamaEngine(Path("unused.gguf"), name="t", n_parallel=2)


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def test_a_shared_system_prompt_does_not_evict_a_conversation() -> None:
    eng = engine()
    kept = Slot(0, cached=[*SYSTEM, 1, 2, 3, 4, 5, 6, 7, 8], last_used=1)
    empty = Slot(1)
    assert eng._pick_slot([kept, empty], [*SYSTEM, 9, 9, 9]) is empty


def test_a_continuing_conversation_returns_to_its_slot() -> None:
    eng = engine()
    empty = Slot(0)
    kept = Slot(1, cached=[*SYSTEM, 1, 2, 3, 4, 5, 6, 7, 8], last_used=1)
    assert eng._pick_slot([empty, kept], [*SYSTEM, 1, 2, 3, 4, 5, 6, 7, 8, 50, 51]) is kept


def test_least_recently_used_slot_otherwise() -> None:
    eng = engine()
    old, recent = Slot(0, cached=[1], last_used=3), Slot(1, cached=[2], last_used=7)
    assert eng._pick_slot([recent, old], [9, 9]) is old
