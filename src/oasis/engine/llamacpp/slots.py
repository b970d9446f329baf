"""Slots and sequences: the engine thread's bookkeeping (no llama.cpp calls here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from oasis.engine.base import TokenLogprob
from oasis.engine.llamacpp.speculative import DraftBudget, Lookup
from oasis.engine.textstream import TextStream

if TYPE_CHECKING:
    from oasis.engine.llamacpp.engine import LlamaHandle
    from oasis.engine.llamacpp.sampling import Sampler


@dataclass
class Seq:
    """One request being generated: its prompt, its place in the KV cache, its sampler."""

    handle: LlamaHandle
    prompt: list[int]
    text: TextStream
    slot: Slot | None = None
    sampler: Sampler | None = None
    lookup: Lookup | None = None  # prompt-lookup drafts, if the request has them
    budget: DraftBudget = field(default_factory=DraftBudget)  # how long its drafts may be
    draft: list[int] = field(default_factory=list)  # guessed tokens in the current batch
    tokens: list[int] = field(default_factory=list)  # prompt + sampled tokens
    n_past: int = 0  # tokens[:n_past] are in this sequence's KV cache
    generated: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache
    out_index: int = -1  # where this sequence's logits are in the current batch
    chunk: int = 0  # prompt tokens put in the current batch
    prompt_lps: list[TokenLogprob] = field(default_factory=list)
    prompt_out: list[tuple[int, int]] = field(default_factory=list)  # (batch index, prompt pos)
    leader: Seq | None = None  # an identical prompt being prefilled: copy its KV when done
    followers: list[Seq] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.handle.request.prompt_logprobs


@dataclass
class Slot:
    """A llama.cpp sequence id. Keeps the KV of its last sequence for prefix reuse."""

    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens in the KV when idle
    seq: Seq | None = None
    last_used: int = 0  # admission counter when this slot last took a sequence

    def kv_len(self) -> int:
        """How many tokens' KV this slot holds right now."""
        return len(self.cached) if self.seq is None else self.seq.n_past

    def shared_prefix(self, prompt: list[int]) -> int:
        """How many leading tokens of ``prompt`` this slot's KV already holds."""
        if self.seq is None:
            return common_prefix(self.cached, prompt)
        return common_prefix(self.seq.tokens, prompt, limit=self.seq.n_past)


def common_prefix(a: list[int], b: list[int], limit: int | None = None) -> int:
    """Length of the common prefix of ``a`` and ``b`` (at most ``limit``)."""
    n = min(len(a), len(b)) if limit is None else min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
