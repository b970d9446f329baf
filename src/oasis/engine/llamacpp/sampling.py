"""Per-sequence sampler chains and log-probabilities."""

from __future__ import annotations

import ctypes
import os
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
                window, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
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
