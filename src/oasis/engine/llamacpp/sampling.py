"""Per-sequence samplers and log-probabilities.

Every sampler answers ``sample(ctx, index)``: the next token from the logits at ``index`` of
the last decoded batch, with its state (seeded generator, penalty history) advanced by that
token. Two kinds:

- ``FastSampler``: greedy or temperature-only sampling (OpenAI's defaults: no top_k, top_p 1),
  with logit_bias, in numpy. llama.cpp's own chain turns all 49,152 logits of a small model
  into probabilities for every token (about 0.4 ms per token on these machines, more than the
  decode's share of a token at 16 streams); this sampler computes only the handful of
  probabilities that are not negligible and draws from the whole distribution exactly
  (rejection sampling against a bound of the rest), about 30 us.
- ``ChainSampler``: llama.cpp's sampler chain, for everything else (penalties, top_k, top_p,
  min_p).
"""

from __future__ import annotations

import ctypes
import math
import os
from typing import Any, Protocol

import llama_cpp as L
import numpy as np

from oasis.engine.base import SamplingParams, TokenLogprob

FloatRow = np.ndarray[Any, np.dtype[np.float32]]

# Tokens whose weight exp((logit - max) / temperature) is below exp(-TAIL) are never put
# through exp() unless the draw lands on their bound (probability below 50,000 * e^-20 = 1e-4).
TAIL = 20.0


class Sampler(Protocol):
    def sample(self, ctx: Any, index: int) -> int: ...

    def sample_row(self, row: FloatRow) -> int: ...

    def accept(self, token: int) -> None: ...

    def free(self) -> None: ...


def logits_row(ctx: Any, index: int, n_vocab: int) -> FloatRow:
    ptr = L.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))


def seed_bits(params: SamplingParams, bits: int) -> int:
    """The request's seed as an unsigned ``bits``-bit number (OpenAI takes any int64, negative
    ones too), or a random one when it has none."""
    if params.seed is None:
        return int.from_bytes(os.urandom(bits // 8), "little")
    return params.seed & ((1 << bits) - 1)


def plain(params: SamplingParams) -> bool:
    """Whether ``params`` need nothing but logit_bias, temperature and a draw."""
    return (
        params.top_k == 0
        and params.top_p >= 1.0
        and params.min_p <= 0
        and not params.presence_penalty
        and not params.frequency_penalty
        and params.repeat_penalty == 1.0
    )


def build_sampler(params: SamplingParams, n_vocab: int, max_tokens: int) -> Sampler:
    """The sampler for one sequence of a request."""
    if plain(params):
        return FastSampler(params, n_vocab)
    return ChainSampler(build_chain(params, n_vocab, max_tokens), n_vocab)


class FastSampler:
    """Greedy, or exact sampling from softmax((logits + bias) / temperature)."""

    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.temperature = params.temperature
        self.bias_ids = np.fromiter(params.logit_bias, dtype=np.int64)
        self.bias = np.fromiter(params.logit_bias.values(), dtype=np.float32)
        self.rng = np.random.Generator(np.random.PCG64(seed_bits(params, 64)))

    def sample(self, ctx: Any, index: int) -> int:
        return self.sample_row(logits_row(ctx, index, self.n_vocab))

    def sample_row(self, row: FloatRow) -> int:
        if len(self.bias_ids):
            row = row.copy()
            row[self.bias_ids] += self.bias
        if self.temperature <= 0:
            return int(row.argmax())
        return self._draw(row)

    def _draw(self, row: FloatRow) -> int:
        """Rejection sampling: the tokens above the cut with their exact weights, each token
        below it with the bound exp(-TAIL) of its weight, accepted with probability
        weight / bound. Exact for any logits; the common case costs one pass over the row
        and one exp() per likely token."""
        t = self.temperature
        top = float(row.max())
        if not math.isfinite(top):  # nothing finite to choose from: as greedy would
            return int(row.argmax())
        head = np.flatnonzero(row >= top - TAIL * t)
        weights = np.exp((row[head].astype(np.float64) - top) / t)
        cum = np.cumsum(weights)
        total = float(cum[-1])
        n_tail = self.n_vocab - len(head)
        bound = math.exp(-TAIL)
        envelope = total + n_tail * bound
        while True:
            u = self.rng.random() * envelope
            if u < total:
                i = int(np.searchsorted(cum, u, side="right"))
                return int(head[min(i, len(head) - 1)])
            tail = np.flatnonzero(row < top - TAIL * t)
            token = int(tail[self.rng.integers(len(tail))])
            if self.rng.random() * bound < math.exp((float(row[token]) - top) / t):
                return token

    def accept(self, token: int) -> None:
        pass

    def free(self) -> None:
        pass


class ChainSampler:
    """A llama.cpp sampler chain."""

    def __init__(self, chain: Any, n_vocab: int) -> None:
        self.chain = chain
        self.n_vocab = n_vocab
        self._tokens = TokenBuffer(n_vocab)

    def sample(self, ctx: Any, index: int) -> int:
        return int(L.llama_sampler_sample(self.chain, ctx, index))

    def sample_row(self, row: FloatRow) -> int:
        """Sample from ``row`` (logits, -inf where not allowed) without accepting."""
        arr = self._tokens.apply(self.chain, row)
        data = np.ctypeslib.as_array(
            ctypes.cast(arr.data, ctypes.POINTER(ctypes.c_int32)), shape=(arr.size * 3,)
        )
        return int(data[arr.selected * 3])

    def accept(self, token: int) -> None:
        """Record a token drawn by ``sample_row`` (penalties count it)."""
        L.llama_sampler_accept(self.chain, token)

    def free(self) -> None:
        L.llama_sampler_free(self.chain)


def build_chain(params: SamplingParams, n_vocab: int, max_tokens: int) -> Any:
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
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed_bits(params, 32)))
    return chain


TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class TokenBuffer:
    """A ``llama_token_data`` array over the whole vocabulary (made on first use), to apply a
    llama.cpp sampler to a row of logits held in Python."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self._buf: np.ndarray[Any, Any] | None = None
        self._ids = np.arange(0)

    def apply(self, sampler: Any, row: FloatRow) -> Any:
        """Fill the array from ``row`` (samplers reorder it: ids are written again each time),
        apply ``sampler``; the ``llama_token_data_array`` it worked on."""
        if self._buf is None:
            self._buf = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
            self._ids = np.arange(self.n_vocab, dtype=np.int32)
        buf = self._buf
        buf["id"] = self._ids
        buf["logit"] = row
        buf["p"] = 0.0
        arr = token_array(buf.ctypes.data, self.n_vocab)
        L.llama_sampler_apply(sampler, ctypes.byref(arr))
        return arr

    def logits(self) -> FloatRow:
        """The logits after the last ``apply`` (a copy)."""
        assert self._buf is not None
        return np.ascontiguousarray(self._buf["logit"])


def token_array(data: Any, size: int) -> Any:
    """A ``llama_token_data_array`` over ``size`` entries of TOKEN_DATA at address ``data``."""
    return L.llama_token_data_array(
        data=ctypes.cast(data, L.llama_token_data_p), size=size, selected=-1, sorted=False
    )


def token_logprob(row: FloatRow, token: int, top_n: int, pieces: list[bytes]) -> TokenLogprob:
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
