"""Per-sequence sampler chains and log-probabilities."""

from __future__ import annotations

import ctypes
import os
import threading
from collections import OrderedDict
from typing import Any

import llama_cpp as L
import numpy as np

from oasis.engine.base import SamplingParams, TokenLogprob


def build_sampler(params: SamplingParams, n_vocab: int, max_tokens: int) -> Any:
    """A llama.cpp sampler chain with OpenAI's semantics.

    Logit bias and presence/frequency penalties come first (they change the distribution), then
    truncation (top_k, top_p, min_p), temperature and a seeded draw; temperature 0 is greedy.
    Penalties see only generated tokens, as OpenAI's do.
    """
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if params.logit_bias:
        items = (L.llama_logit_bias * len(params.logit_bias))()
        for i, (tok, bias) in enumerate(params.logit_bias.items()):
            items[i].token = tok
            items[i].bias = bias
        L.llama_sampler_chain_add(
            chain, L.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), items)
        )
    if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
        window = max(1, min(max_tokens, 1 << 20))
        L.llama_sampler_chain_add(
            chain,
            L.llama_sampler_init_penalties(
                n_vocab,
                window,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    if params.temperature <= 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(params.min_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(params.temperature))
    seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


def free_sampler(chain: Any) -> None:
    L.llama_sampler_free(chain)


def logits_row(ctx: Any, index: int, n_vocab: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    ptr = L.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))


def token_logprob(
    row: np.ndarray[Any, np.dtype[np.float32]], token: int, top_n: int, pieces: list[bytes]
) -> TokenLogprob:
    """The model's log-probability of ``token`` and its ``top_n`` most likely alternatives."""
    x = row.astype(np.float64)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum()))
    top: tuple[tuple[bytes, float], ...] = ()
    if top_n > 0:
        idx = np.argpartition(-x, top_n)[:top_n]
        idx = idx[np.argsort(-x[idx])]
        top = tuple((pieces[int(i)], float(x[i] - lse)) for i in idx)
    return TokenLogprob(token, pieces[token], float(x[token] - lse), top)


class GrammarError(ValueError):
    """llama.cpp could not build a sampler from the grammar."""


def compile_grammar(vocab: Any, gbnf: str) -> Any:
    """A llama.cpp grammar sampler, or GrammarError: a constraint that cannot be built is
    refused, never dropped."""
    sampler = L.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        raise GrammarError("llama.cpp could not parse the grammar")
    return sampler


class GrammarCache:
    """Compiled grammars by their text, parsed once and cloned for each sequence.

    Parsing a grammar is the expensive part (and, for a big one, too slow to repeat on the
    engine thread for every sequence of every request); ``llama_sampler_clone`` copies the
    parsed rules in their initial state. Serving prepares a request's grammar off the event
    loop (``prepare``); the engine thread clones it (``clone``). The kept templates are never
    sampled with. At most ``size`` are kept, least recently used dropped first.
    """

    def __init__(self, vocab: Any, size: int = 64) -> None:
        self.vocab = vocab
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Any] = OrderedDict()

    def prepare(self, gbnf: str) -> None:
        """Compile ``gbnf`` (GrammarError if llama.cpp cannot) unless it is cached."""
        with self._lock:
            if gbnf in self._items:
                self._items.move_to_end(gbnf)
                return
        sampler = compile_grammar(self.vocab, gbnf)  # outside the lock: may take a while
        with self._lock:
            if gbnf in self._items:
                L.llama_sampler_free(sampler)
                return
            self._items[gbnf] = sampler
            while len(self._items) > self.size:
                _, old = self._items.popitem(last=False)
                L.llama_sampler_free(old)

    def clone(self, gbnf: str) -> Any:
        """A fresh grammar sampler for one sequence."""
        while True:
            with self._lock:
                template = self._items.get(gbnf)
                if template is not None:
                    self._items.move_to_end(gbnf)
                    return L.llama_sampler_clone(template)
            self.prepare(gbnf)  # evicted since serving prepared it: compile again

    def close(self) -> None:
        with self._lock:
            for sampler in self._items.values():
                L.llama_sampler_free(sampler)
            self._items.clear()


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class ConstrainedSampler:
    """A sampler chain under a grammar (structured outputs).

    Checking the grammar against every token of the vocabulary at every step is what makes
    constrained decoding slow, so, as llama.cpp's own common sampler does, the chain samples
    first and only the sampled token is checked; only when the grammar rejects it is the
    grammar applied to the whole vocabulary and the chain asked again. Both samplers then
    accept the token.
    """

    def __init__(self, chain: Any, grammar: Any, n_vocab: int, *, stateful: bool = True) -> None:
        self.chain = chain
        self.grammar = grammar
        self.n_vocab = n_vocab
        # A chain without penalties keeps no history, so its first draw may go through
        # llama.cpp's own sample call (which also "accepts" the token into the chain).
        self.stateful = stateful
        self._buf = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._one = (L.llama_token_data * 1)()
        self.full_checks = 0  # steps where the grammar had to mask the whole vocabulary

    def _array(self, data: Any, size: int) -> Any:
        return L.llama_token_data_array(
            data=ctypes.cast(data, L.llama_token_data_p), size=size, selected=-1, sorted=False
        )

    def _apply(self, sampler: Any, row: np.ndarray[Any, Any], mask: bool) -> int:
        buf = self._buf
        buf["id"] = self._ids
        buf["logit"] = row
        buf["p"] = 0.0
        arr = self._array(buf.ctypes.data, self.n_vocab)
        if mask:
            L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        L.llama_sampler_apply(sampler, ctypes.byref(arr))
        data = np.ctypeslib.as_array(
            ctypes.cast(arr.data, ctypes.POINTER(ctypes.c_int32)), shape=(arr.size * 3,)
        )
        return int(data[arr.selected * 3])

    def _allowed(self, token: int) -> bool:
        self._one[0].id = token
        self._one[0].logit = 0.0
        self._one[0].p = 0.0
        arr = self._array(self._one, 1)
        L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return bool(np.isfinite(self._one[0].logit))

    def sample(self, ctx: Any, index: int) -> int:
        if self.stateful:
            row = logits_row(ctx, index, self.n_vocab)
            token = self._apply(self.chain, row, mask=False)
        else:
            token = L.llama_sampler_sample(self.chain, ctx, index)
        if not self._allowed(token):
            self.full_checks += 1
            token = self._apply(self.chain, logits_row(ctx, index, self.n_vocab), mask=True)
        L.llama_sampler_accept(self.grammar, token)
        if self.stateful:
            L.llama_sampler_accept(self.chain, token)
        return token

    def free(self) -> None:
        L.llama_sampler_free(self.chain)
        L.llama_sampler_free(self.grammar)
