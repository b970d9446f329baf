"""The llama.cpp engine directly: chunked prefill, concurrency, cancellation (real model)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from oasis.engine.base import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from oasis.engine.llamacpp import LlamaEngine
from oasis.models.registry import bundled_model_path

GREEDY = SamplingParams(temperature=0)
# keeps a story going: end-of-generation tokens (<|endoftext|>, <|im_end|>) are banned
NO_END = SamplingParams(temperature=0, logit_bias={0: -100.0, 2: -100.0})


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    # a small batch so that prompts are prefilled in several chunks
    eng = LlamaEngine(bundled_model_path(), name="smol", n_ctx=4096, n_parallel=4,
                      n_threads=2, n_batch=32, max_queue=2)
    eng.start()
    yield eng
    eng.close()


async def collect(engine: LlamaEngine, req: GenerationRequest) -> tuple[str, FinishEvent]:
    text = []
    async for ev in engine.submit(req):
        text.append(ev.text)
        if isinstance(ev, FinishEvent):
            return "".join(text), ev
    raise AssertionError("no finish event")


def test_long_prompt_is_prefilled_in_chunks(engine: LlamaEngine) -> None:
    prompt = engine.tokenize("The quick brown fox jumps over the lazy dog. " * 12,
                             add_special=False)
    assert len(prompt) > 3 * engine.n_batch
    req = GenerationRequest(prompt=prompt, max_tokens=8, sampling=GREEDY, logprobs=0,
                            prompt_logprobs=True)
    text, fin = asyncio.run(collect(engine, req))
    assert fin.prompt_tokens == len(prompt)
    assert fin.prompt_logprobs is not None and len(fin.prompt_logprobs) == len(prompt)
    assert fin.completion_tokens == 8 and text
    # the same prompt in one chunk scores every token the same and continues the same way
    whole = LlamaEngine(bundled_model_path(), name="smol-1", n_ctx=4096, n_parallel=4,
                        n_threads=2, n_batch=512)
    whole.start()
    try:
        text1, fin1 = asyncio.run(collect(whole, req))
    finally:
        whole.close()
    assert fin1.prompt_logprobs is not None
    assert fin.prompt_logprobs[0].logprob is None
    # Different batch shapes round differently in ggml's quantized kernels, so scores agree
    # closely, not bit for bit; a token at a wrong position would be off by whole nats.
    diffs = []
    for a, b in zip(fin.prompt_logprobs[1:], fin1.prompt_logprobs[1:], strict=True):
        assert a.token == b.token
        assert a.logprob is not None and b.logprob is not None
        diffs.append(abs(a.logprob - b.logprob))
    assert max(diffs) < 0.5
    assert sum(diffs) / len(diffs) < 0.05
    assert text1


def test_concurrent_sequences_match_their_solo_runs(engine: LlamaEngine) -> None:
    prompts = [engine.tokenize(f"List of {w}:", add_special=False)
               for w in ("fruits", "colors", "animals", "cities")]

    def req(p: list[int]) -> GenerationRequest:
        return GenerationRequest(prompt=p, max_tokens=12, sampling=GREEDY)

    solo = [asyncio.run(collect(engine, req(p)))[0] for p in prompts]

    async def together() -> list[str]:
        results = await asyncio.gather(*[collect(engine, req(p)) for p in prompts])
        return [t for t, _ in results]

    assert asyncio.run(together()) == solo


def test_cancel_frees_the_slot_while_others_continue(engine: LlamaEngine) -> None:
    async def scenario() -> tuple[int, str]:
        prompt = engine.tokenize("Write a very long story about a dragon.", add_special=False)
        long_req = GenerationRequest(prompt=prompt, max_tokens=400, sampling=NO_END)
        other = asyncio.create_task(collect(engine, GenerationRequest(
            prompt=prompt, max_tokens=30, sampling=NO_END)))
        handle = engine.submit(long_req)
        seen = 0
        async for ev in handle:
            assert isinstance(ev, TokenEvent)
            seen += 1
            if seen == 5:
                break
        before = engine.stats().cancelled_total
        handle.cancel()
        text, _ = await other
        for _ in range(100):
            if engine.stats().running == 0:
                break
            await asyncio.sleep(0.02)
        return engine.stats().cancelled_total - before, text

    cancelled, other_text = asyncio.run(scenario())
    assert cancelled == 1
    assert engine.stats().running == 0
    assert other_text


def test_full_queue_is_refused_and_the_engine_recovers(engine: LlamaEngine) -> None:
    from oasis.errors import OverloadedError

    async def scenario() -> int:
        prompt = engine.tokenize("Count:", add_special=False)
        handles = []
        refused = 0
        for _ in range(10):  # 4 slots + 2 queued fit; the rest are refused
            try:
                handles.append(engine.submit(GenerationRequest(
                    prompt=prompt, max_tokens=4, sampling=GREEDY)))
            except OverloadedError:
                refused += 1
        for h in handles:
            async for _ in h:
                pass
        await collect(engine, GenerationRequest(prompt=prompt, max_tokens=2, sampling=GREEDY))
        return refused

    assert asyncio.run(scenario()) == 4
