"""The engine interface every backend implements, and the data that crosses it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; OpenAI's parameters plus llama.cpp's extra samplers."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: a tokenized prompt and how to continue it."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    # None: no logprobs. k >= 0: the sampled token's logprob plus the k most likely tokens.
    logprobs: int | None = None
    # Also return logprobs for the prompt tokens (completions with echo + logprobs).
    prompt_logprobs: bool = False
    # A GBNF grammar the output must follow (structured outputs); checked with check_grammar.
    grammar: str | None = None
    # Background work (a batch line): slots go to interactive requests first, one slot is
    # always left to them, and a background sequence's decode waits while an interactive
    # prompt is being read, so batches fill idle capacity without slowing live traffic.
    background: bool = False
    # Prompt-lookup drafts (speculative decoding): None leaves it to the server's default.
    prompt_lookup: bool | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A token with its log probability and the most likely alternatives at its position."""

    token: int
    piece: bytes
    logprob: float | None
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. ``text`` is what may be shown now (stop strings are held back)."""

    text: str
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class FinishEvent:
    """The sequence ended. ``text`` is any held-back text released at the end."""

    reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None


Event = TokenEvent | FinishEvent


@dataclass(frozen=True)
class ModelInfo:
    """What serving needs to know about a loaded model."""

    name: str
    n_ctx: int  # context available to one sequence
    n_vocab: int
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    # Most sequences one request may submit (slots + wait queue); more can never be admitted.
    max_sequences: int = 1 << 30


@dataclass
class EngineStats:
    """Counters for /metrics and tests."""

    running: int = 0
    waiting: int = 0
    prompt_tokens_total: int = 0
    generated_tokens_total: int = 0
    requests_total: int = 0
    cancelled_total: int = 0
    cached_tokens_total: int = 0
    prefix_cache_hits_total: int = 0
    kv_copies_total: int = 0
    step_seconds_total: float = 0.0
    steps_total: int = 0
    kv_used_cells: int = 0
    kv_total_cells: int = 0
    restarts_total: int = 0  # times the engine loop failed and was restarted
    draft_tokens_total: int = 0  # speculative tokens decoded (jump-forward, prompt lookup)
    draft_accepted_total: int = 0  # of those, kept: what sampling would have produced


@dataclass(frozen=True)
class Health:
    """Whether an engine can serve. ``detail`` says why not (shown by ``/health``)."""

    ok: bool
    detail: str = "ok"


class RequestHandle(Protocol):
    """A submitted request: iterate its events; cancel to free its slot at the next step.

    ``generated`` counts the tokens sampled so far, ``cached_tokens`` the prompt tokens
    reused from the prefix cache and ``prompt_evaluated`` the prompt tokens that are in the KV
    cache (0 while the request still waits for a slot); billing reads them, so a request whose
    client went away is charged for what the engine did, and one cancelled in the queue for
    nothing.
    """

    generated: int
    cached_tokens: int
    prompt_evaluated: int

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def cancel(self) -> None: ...


class Engine(Protocol):
    """Tokens in, token events out. Engines subclass it to share ``detokenize``."""

    @property
    def info(self) -> ModelInfo: ...

    def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool = True
    ) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str:
        """The text of tokens: pieces joined as bytes, so a character split across tokens
        comes out whole."""
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_piece(self, token: int) -> bytes: ...

    def check_grammar(self, gbnf: str) -> None:
        """Raise ValueError unless the engine can enforce this grammar."""
        ...

    def submit(self, request: GenerationRequest) -> RequestHandle: ...

    def stats(self) -> EngineStats: ...

    def health(self) -> Health:
        """Whether the engine can serve requests now."""
        return Health(True)

    def start(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EmbeddingModelInfo:
    """What serving needs to know about a loaded embedding model."""

    name: str
    n_ctx: int  # most tokens of one input, special tokens included
    n_embd: int  # the vectors' length
    n_vocab: int


class EmbeddingJob(Protocol):
    """Submitted inputs: await ``result`` for their vectors (unit length, in input order);
    ``cancel`` drops the inputs not yet computed. ``evaluated`` counts the tokens computed so
    far (billing reads it, as it reads a generation's handle)."""

    evaluated: int

    async def result(self) -> list[NDArray[np.float32]]: ...

    def cancel(self) -> None: ...


class Embedder(Protocol):
    """Token lists in, sentence vectors out: an embedding model's engine."""

    @property
    def info(self) -> EmbeddingModelInfo: ...

    def tokenize(self, text: str) -> list[int]:
        """The model's tokens for a text, with the special tokens it adds around an input."""
        ...

    def wrap(self, tokens: list[int]) -> list[int]:
        """A client's token array with the special tokens the model adds around an input."""
        ...

    def submit(self, inputs: list[list[int]], *, background: bool = False) -> EmbeddingJob:
        """Queue a request's inputs (token lists, specials included). ``background`` work (a
        batch line) is computed after every interactive request's."""
        ...

    def stats(self) -> EngineStats: ...

    def health(self) -> Health: ...

    def start(self) -> None: ...

    def close(self) -> None: ...
