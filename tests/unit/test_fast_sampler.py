"""The numpy sampler (greedy and temperature-only): exactly the distribution llama.cpp's chain
draws from, including its tail, which it reaches by rejection sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oasis.engine.base import SamplingParams
from oasis.engine.llamacpp import sampling
from oasis.engine.llamacpp.sampling import ChainSampler, FastSampler, build_sampler, plain


def softmax(row: np.ndarray, t: float) -> np.ndarray:
    x = row.astype(np.float64) / t
    e = np.exp(x - x.max())
    return e / e.sum()


def draws(s: FastSampler, row: np.ndarray, n: int) -> np.ndarray:
    return np.bincount([s.sample_row(row) for _ in range(n)], minlength=len(row))


def chi2_ok(counts: np.ndarray, p: np.ndarray) -> bool:
    """Pearson's test at the 99.9% level over the cells expected 5 times or more (fixed seeds:
    the outcome is the same on every run)."""
    n = counts.sum()
    keep = p * n >= 5
    expected = p[keep] * n
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    rest = counts[~keep].sum()
    if rest:
        e = p[~keep].sum() * n
        stat += (rest - e) ** 2 / max(e, 1e-9)
    df = int(keep.sum()) - (0 if rest else 1)
    # Wilson-Hilferty: the 99.9% quantile of chi-square with df degrees of freedom
    z = 3.09
    limit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat < limit


def test_plain_requests_get_the_fast_sampler_and_the_rest_llama_cpp_chains() -> None:
    assert isinstance(build_sampler(SamplingParams(temperature=0.7), 100, 16), FastSampler)
    assert isinstance(build_sampler(SamplingParams(temperature=0), 100, 16), FastSampler)
    for params in (SamplingParams(top_k=40), SamplingParams(top_p=0.9), SamplingParams(min_p=0.1),
                   SamplingParams(presence_penalty=1.0), SamplingParams(repeat_penalty=1.1)):
        assert not plain(params)
        chain = build_sampler(params, 100, 16)
        assert isinstance(chain, ChainSampler)
        chain.free()


def test_greedy_is_the_argmax_after_logit_bias() -> None:
    row = np.array([0.0, 5.0, 4.9, -1.0], dtype=np.float32)
    assert FastSampler(SamplingParams(temperature=0), 4).sample_row(row) == 1
    biased = FastSampler(SamplingParams(temperature=0, logit_bias={2: 1.0, 1: -100.0}), 4)
    assert biased.sample_row(row) == 2
    assert row[1] == 5.0  # the model's logits are not changed in place


def test_temperature_sampling_follows_softmax() -> None:
    rng = np.random.default_rng(0)
    row = rng.normal(0, 2, 200).astype(np.float32)
    for t in (0.3, 0.8, 1.5):
        s = FastSampler(SamplingParams(temperature=t, seed=7), len(row))
        assert chi2_ok(draws(s, row, 20_000), softmax(row, t))


def test_logit_bias_shifts_the_distribution_as_openai_defines_it() -> None:
    row = np.zeros(10, dtype=np.float32)
    s = FastSampler(SamplingParams(temperature=1.0, seed=3, logit_bias={4: math.log(9.0)}), 10)
    p = softmax(row + np.eye(10, dtype=np.float32)[4] * math.log(9.0), 1.0)
    assert chi2_ok(draws(s, row, 20_000), p)


def test_the_tail_below_the_cut_is_drawn_with_its_exact_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With a cut of 1 nat, most of this distribution's mass lies below it: only rejection
    # sampling against the bound gives these tokens their exact share.
    monkeypatch.setattr(sampling, "TAIL", 1.0)
    row = np.linspace(0, -4, 40).astype(np.float32)
    s = FastSampler(SamplingParams(temperature=1.0, seed=11), len(row))
    counts = draws(s, row, 30_000)
    assert counts[row < -1].sum() > 10_000
    assert chi2_ok(counts, softmax(row, 1.0))


def test_masked_tokens_are_never_drawn() -> None:
    row = np.full(1000, -np.inf, dtype=np.float32)
    row[[3, 500, 999]] = [1.0, 2.0, 0.5]
    s = FastSampler(SamplingParams(temperature=2.0, seed=5), len(row))
    seen = {s.sample_row(row) for _ in range(3000)}
    assert seen == {3, 500, 999}


def test_same_seed_same_draws() -> None:
    row = np.random.default_rng(1).normal(0, 1, 500).astype(np.float32)
    a = FastSampler(SamplingParams(temperature=0.9, seed=42), 500)
    b = FastSampler(SamplingParams(temperature=0.9, seed=42), 500)
    assert [a.sample_row(row) for _ in range(50)] == [b.sample_row(row) for _ in range(50)]


def test_any_int64_seed_is_taken() -> None:
    # OpenAI accepts negative seeds (and clients send -1 for "random"); they seed as their
    # 64-bit pattern, reproducibly
    row = np.random.default_rng(2).normal(0, 1, 100).astype(np.float32)
    for seed in (-1, -(2**63), 2**63 - 1):
        a = FastSampler(SamplingParams(temperature=0.9, seed=seed), 100)
        b = FastSampler(SamplingParams(temperature=0.9, seed=seed), 100)
        assert [a.sample_row(row) for _ in range(20)] == [b.sample_row(row) for _ in range(20)]
