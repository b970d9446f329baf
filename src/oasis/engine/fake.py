"""A deterministic engine for unit tests: byte tokens, scripted replies, no model.

Tokens are UTF-8 bytes (id = byte + 3) plus three specials (0 BOS, 1 EOS, 2 PAD). The reply is
``reply`` when sampling is greedy; with temperature > 0 a word picked by the seeded RNG is put in
front, so seeds reproduce and ``n > 1`` choices differ.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import AsyncIterator

import numpy as np
from numpy.typing import NDArray

from oasis.engine.base import (
    EmbeddingModelInfo,
    Engine,
    EngineStats,
    Event,
    FinishEvent,
    GenerationRequest,
    Health,
    ModelInfo,
    TokenEvent,
    TokenLogprob,
)
from oasis.engine.textstream import TextStream
from oasis.errors import OverloadedError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = ("Sunny", "Cloudy", "Windy", "Rainy", "Snowy", "Misty", "Stormy", "Calm")
OFFSET = 3
BOS, EOS = 0, 1


class FakeHandle:
    def __init__(self, engine: FakeEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self._request = request
        self.cancelled = False
        self.generated = 0
        self.cached_tokens = 0
        self.prompt_evaluated = 0

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._engine._stats.cancelled_total += 1

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._run()

    async def _run(self) -> AsyncIterator[Event]:
        engine, req = self._engine, self._request
        engine._stats.running += 1
        engine._stats.requests_total += 1
        self.prompt_evaluated = len(self._request.prompt)
        try:
            s = req.sampling
            text = engine.reply
            if s.temperature > 0:
                rng = random.Random(s.seed)
                text = f"{rng.choice(WORDS)}! {text}"
            tokens = [b + OFFSET for b in text.encode()]
            for bias_token, bias in s.logit_bias.items():
                if bias >= 100:
                    tokens = [bias_token] * len(tokens)
            stream = TextStream(req.stop)
            produced = 0
            reason: str = "stop"
            for tok in [*tokens, EOS]:
                if self.cancelled:
                    return
                if produced >= req.max_tokens:
                    reason = "length"
                    break
                if engine.delay:
                    await asyncio.sleep(engine.delay)
                else:
                    await asyncio.sleep(0)
                produced += 1
                self.generated += 1
                engine._stats.generated_tokens_total += 1
                if tok == EOS:
                    break
                piece = engine.token_piece(tok)
                out = stream.feed(piece)
                lp = None
                if req.logprobs is not None:
                    top = tuple(
                        (engine.token_piece(t), -0.5 - i)
                        for i, t in enumerate([tok, *[OFFSET + ord(c) for c in "xyzuvw"]])
                    )
                    lp = TokenLogprob(tok, piece, -0.5, top[: req.logprobs])
                if stream.stopped:
                    if out:
                        yield TokenEvent(out, None)
                    break
                yield TokenEvent(out, lp)
            prompt_lps = None
            if req.prompt_logprobs:
                prompt_lps = tuple(
                    TokenLogprob(
                        t,
                        engine.token_piece(t),
                        None if i == 0 else -1.0,
                        () if i == 0 else ((engine.token_piece(t), -1.0),),
                    )
                    for i, t in enumerate(req.prompt)
                )
            engine._stats.prompt_tokens_total += len(req.prompt)
            yield FinishEvent(
                reason="length" if reason == "length" else "stop",
                text=stream.flush(),
                prompt_tokens=len(req.prompt),
                completion_tokens=produced,
                prompt_logprobs=prompt_lps,
            )
        finally:
            engine._stats.running -= 1


class FakeEngine(Engine):
    """Implements the ``Engine`` protocol without a model."""

    def __init__(
        self,
        reply: str = "Hello! I am a fake model.",
        *,
        n_ctx: int = 256,
        delay: float = 0.0,
        max_running: int | None = None,
        max_sequences: int = 1 << 30,
        name: str = "fake-model",
    ) -> None:
        self.reply = reply
        self.delay = delay
        self.max_running = max_running
        self.last_request: GenerationRequest | None = None
        self._stats = EngineStats()
        self._info = ModelInfo(
            name=name,
            n_ctx=n_ctx,
            n_vocab=256 + OFFSET,
            chat_template=CHATML_TEMPLATE,
            bos_token="<s>",
            eos_token="</s>",
            add_bos=False,
            max_sequences=max_sequences,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        ids = [b + OFFSET for b in text.encode()]
        return [BOS, *ids] if add_special and self._info.add_bos else ids

    def token_piece(self, token: int) -> bytes:
        return bytes([token - OFFSET]) if token >= OFFSET else b""

    def check_grammar(self, gbnf: str) -> None:
        """The fake engine cannot constrain: tests script a reply that fits (``reply``), and
        ``bad_grammar`` makes it refuse like llama.cpp does."""
        if "bad_grammar" in gbnf:
            raise ValueError("could not parse the grammar")

    def submit(self, request: GenerationRequest) -> FakeHandle:
        if self.max_running is not None and self._stats.running >= self.max_running:
            raise OverloadedError("The engine is busy; retry shortly.")
        self.last_request = request
        return FakeHandle(self, request)

    def stats(self) -> EngineStats:
        return self._stats

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeEmbeddingJob:
    def __init__(self, vectors: list[NDArray[np.float32]], tokens: int, delay: float) -> None:
        self._vectors = vectors
        self._delay = delay
        self.evaluated = 0
        self._tokens = tokens
        self.cancelled = False

    async def result(self) -> list[NDArray[np.float32]]:
        if self._delay:
            await asyncio.sleep(self._delay)
        self.evaluated = self._tokens
        return self._vectors

    def cancel(self) -> None:
        self.cancelled = True


class FakeEmbedder:
    """A deterministic embedding model for unit tests: word tokens (a word's id is its CRC32
    mod the vocabulary, ids 0 and 1 are the specials around an input) and a vector that is
    the normalized sum of a fixed random vector per token. ``delay`` seconds per request;
    ``last_background`` and ``backgrounds`` record the submits' background flags."""

    def __init__(
        self, *, name: str = "fake-embedding", n_ctx: int = 512, dim: int = 384, delay: float = 0.0
    ) -> None:
        self._info = EmbeddingModelInfo(name=name, n_ctx=n_ctx, n_embd=dim, n_vocab=30522)
        self.delay = delay
        self._stats = EngineStats()
        self._table = np.random.default_rng(0).standard_normal((30522, dim)).astype(np.float32)
        self.last_background: bool | None = None  # the last submit's background flag
        self.backgrounds: list[bool] = []  # every submit's, in order

    @property
    def info(self) -> EmbeddingModelInfo:
        return self._info

    def tokenize(self, text: str) -> list[int]:
        return self.wrap([2 + zlib.crc32(w.encode()) % 30520 for w in text.split()])

    def wrap(self, tokens: list[int]) -> list[int]:
        return [0, *tokens, 1]

    def submit(self, inputs: list[list[int]], *, background: bool = False) -> FakeEmbeddingJob:
        self.last_background = background
        self.backgrounds.append(background)
        vectors = []
        for tokens in inputs:
            vec = self._table[tokens].sum(axis=0)
            vectors.append((vec / np.linalg.norm(vec)).astype(np.float32))
        self._stats.requests_total += 1
        return FakeEmbeddingJob(vectors, sum(len(t) for t in inputs), self.delay)

    def stats(self) -> EngineStats:
        return self._stats

    def health(self) -> Health:
        return Health(True)

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass
