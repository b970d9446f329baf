"""Speculative decoding's drafts: tokens guessed for a sequence's next positions, decoded in
the same step as its next token and kept only as far as sampling agrees with them.

Verification is what makes any guess safe: the engine samples each position from the model's
own logits with the sequence's own sampler and keeps a draft token only while it equals the
sampled one: a greedy output is the greedy choice at every position of the logits the step
computed, and sampled outputs keep their distribution (with a single guessed token per
position, "accept while equal" is the standard rejection rule: the guess is kept with the
probability the model gives it, and a rejected position is sampled from the rest). Those
logits are the ones decoding one token at a time would give only where llama.cpp computes a
multi-token step alike (measured: a context within 256 KV cells, a batch under 64 tokens; see
bench/batch_shapes.py).

Two sources of guesses:

- the grammar (jump-forward): where a structured output has no choice (``{"name": "``, keys,
  brackets), ``ConstrainedSampler.forced_text`` spells the forced text out;
- prompt lookup: the tokens that followed the latest earlier occurrence of the sequence's last
  few tokens, in the prompt or the output (summaries, extraction and code edits quote their
  input).
"""

from __future__ import annotations

# n-gram sizes tried for a lookup match, longest first
NGRAMS = (4, 2)
# Positions indexed per step at most: a long prompt is indexed over a few steps instead of
# stalling every stream's step once (about 1 ms per 2000 positions here).
INDEX_STEP = 2048
# Drafts shorter than this are not worth their decode on a CPU: measured here (SmolLM2-135M,
# 2 threads, bench/batch_shapes.py), a step of 1 token takes 7.5 ms, of 2 tokens 14 ms, of 4
# tokens 19.5 ms, of 8 26 ms and of 16 48 ms, so one guessed token kept saves nothing and
# three kept save a third.
MIN_DRAFT = 2
MAX_DRAFT = 16
# After drafts that are not kept, a sequence drafts no more; every PAUSE steps it tries again.
PAUSE = 16
# The share of drafted tokens a sequence must keep (recent drafts weigh most) to go on
# drafting: at the step costs above, drafts kept less often than this cost more than they save.
MIN_KEPT = 0.5


class DraftBudget:
    """How many tokens a sequence's next draft may have, from how its drafts fared.

    Doubled after a draft kept whole, halved after one less than half kept. Below
    MIN_DRAFT, or while less than MIN_KEPT of its drafted tokens are kept, the sequence stops
    drafting (a small model under a grammar often writes keys in odd pieces, ``t``, ``it``,
    ``le``, that no tokenizer would guess, and every draft would cost a step for nothing) and
    tries a short draft again every PAUSE steps.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.kept = 1.0  # recent share of drafted tokens kept
        self._paused = 0

    def allowed(self) -> int:
        if self.size >= MIN_DRAFT and self.kept >= MIN_KEPT:
            return self.size
        self._paused += 1
        if self._paused < PAUSE:
            return 0
        self._paused = 0
        return MIN_DRAFT

    def feedback(self, drafted: int, kept: int) -> None:
        if drafted <= 0:
            return
        self.kept = (self.kept + kept / drafted) / 2
        if kept == drafted:
            self.size = min(MAX_DRAFT, max(self.size, MIN_DRAFT // 2) * 2)
        elif 2 * kept < drafted:
            self.size //= 2


class Lookup:
    """An index of a sequence's n-grams: where each was last followed by a known token."""

    def __init__(self) -> None:
        self._index: dict[tuple[int, ...], int] = {}
        self._done = 0  # tokens[:_done] have their n-grams indexed

    def _update(self, tokens: list[int]) -> None:
        # an n-gram ending at ``end`` is followed by tokens[end + 1]: index those ending
        # before the last token (the last one's continuation is what we are guessing)
        stop = min(len(tokens) - 1, self._done + INDEX_STEP)
        for end in range(self._done, stop):
            for n in NGRAMS:
                if end + 1 >= n:
                    self._index[tuple(tokens[end + 1 - n : end + 1])] = end + 1
        self._done = max(self._done, stop)

    def draft(self, tokens: list[int], limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the last match of the sequence's suffix."""
        self._update(tokens)
        for n in NGRAMS:
            if len(tokens) < n:
                continue
            start = self._index.get(tuple(tokens[-n:]))
            if start is not None:
                draft = tokens[start : start + limit]
                return draft if len(draft) >= MIN_DRAFT else []
        return []
