"""The engine thread's supervisor, on the real llama.cpp engine.

A failure inside one request's work fails that request alone; a failure of the loop fails
every request it held with a 500-shaped EngineError, resets the KV cache and slots and starts
again; failures that repeat take the engine down for good (unhealthy, new work refused at
once, ``on_fatal`` called). In no case does a request hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from oasis.engine.base import FinishEvent, GenerationRequest, SamplingParams
from oasis.engine.llamacpp import LlamaEngine
from oasis.engine.llamacpp import engine as engine_mod
from oasis.errors import EngineError
from oasis.models.registry import bundled_model_path

pytestmark = pytest.mark.integration

GREEDY = SamplingParams(temperature=0)


@pytest.fixture
def fatal() -> list[str]:
    return []


@pytest.fixture
def engine(fatal: list[str]) -> Iterator[LlamaEngine]:
    eng = LlamaEngine(bundled_model_path(), name="smol-sup", n_ctx=2048, n_parallel=2,
                      n_threads=2, n_batch=64, max_restarts=2, restart_window=60,
                      on_fatal=fatal.append)
    eng.start()
    yield eng
    eng.close()


def _request(engine: LlamaEngine, text: str = "Hello", **kw: Any) -> GenerationRequest:
    prompt = engine.tokenize(text, add_special=False)
    return GenerationRequest(prompt=prompt, max_tokens=kw.pop("max_tokens", 6),
                             sampling=kw.pop("sampling", GREEDY), **kw)


async def _run(engine: LlamaEngine, req: GenerationRequest) -> FinishEvent | BaseException:
    try:
        async with asyncio.timeout(60):
            async for ev in engine.submit(req):
                if isinstance(ev, FinishEvent):
                    return ev
    except EngineError as exc:
        return exc
    raise AssertionError("no finish event")


def test_a_request_whose_sampler_fails_fails_alone(engine: LlamaEngine,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine_mod.build_sampler

    def flaky(params: SamplingParams, n_vocab: int, max_tokens: int) -> Any:
        if params.seed == 666:
            raise TypeError("bad sampler arguments")
        return real(params, n_vocab, max_tokens)

    monkeypatch.setattr(engine_mod, "build_sampler", flaky)

    async def main() -> list[FinishEvent | BaseException]:
        bad = _request(engine, sampling=SamplingParams(temperature=0.5, seed=666))
        return list(await asyncio.gather(_run(engine, _request(engine)), _run(engine, bad),
                                         _run(engine, _request(engine, "Good morning"))))

    good, bad, other = asyncio.run(main())
    assert isinstance(bad, EngineError) and bad.status == 500
    assert isinstance(good, FinishEvent) and isinstance(other, FinishEvent)
    assert engine.health().ok and engine.stats().restarts_total == 0


def test_a_failing_loop_fails_its_requests_and_restarts(engine: LlamaEngine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_fill = engine._fill_batch
    calls = {"n": 0}

    def fill_once_broken(batch: Any, active: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure in the engine loop")
        return real_fill(batch, active)

    monkeypatch.setattr(engine, "_fill_batch", fill_once_broken)

    async def main() -> list[FinishEvent | BaseException]:
        return list(await asyncio.gather(*(_run(engine, _request(engine, f"Story {i}",
                                                                  max_tokens=20))
                                           for i in range(3))))

    results = asyncio.run(main())
    assert all(isinstance(r, EngineError) and r.status == 500 for r in results)
    assert engine.stats().restarts_total == 1
    assert engine.health().ok
    # the engine serves again, from a clean KV cache
    after = asyncio.run(_run(engine, _request(engine)))
    assert isinstance(after, FinishEvent) and after.completion_tokens > 0


def test_repeated_failures_take_the_engine_down(engine: LlamaEngine, fatal: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def always_broken(batch: Any, active: Any) -> int:
        raise RuntimeError("the engine is broken")

    monkeypatch.setattr(engine, "_fill_batch", always_broken)
    for _ in range(3):  # max_restarts=2: the third failure is one too many
        result = asyncio.run(_run(engine, _request(engine)))
        assert isinstance(result, EngineError)
    health = engine.health()
    assert not health.ok and "down" in health.detail
    assert fatal and "engine smol-sup" in fatal[0]
    # new work is refused at once, never left waiting
    async def submit() -> None:
        engine.submit(_request(engine))

    with pytest.raises(EngineError):
        asyncio.run(submit())


def test_a_failing_follower_fails_alone(engine: LlamaEngine,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """n > 1: the second choice follows the first's prefill and copies its KV. If that step
    fails for the follower, the follower's request fails; the leader goes on, and the loop is
    not restarted."""
    real = engine._follow

    def broken_follow(seq: Any, leader: Any, active: Any) -> None:
        if seq.handle.request.sampling.seed == 5:
            raise RuntimeError("simulated failure while following")
        real(seq, leader, active)

    monkeypatch.setattr(engine, "_follow", broken_follow)
    prompt_text = "The same prompt for both sequences"

    async def main() -> list[FinishEvent | BaseException]:
        leader = _request(engine, prompt_text, sampling=SamplingParams(temperature=0.5, seed=4))
        follower = _request(engine, prompt_text,
                            sampling=SamplingParams(temperature=0.5, seed=5))
        return list(await asyncio.gather(_run(engine, leader), _run(engine, follower)))

    first, second = asyncio.run(main())
    assert isinstance(first, FinishEvent) and first.completion_tokens > 0
    assert isinstance(second, EngineError)
    assert engine.stats().restarts_total == 0 and engine.health().ok
    again = asyncio.run(_run(engine, _request(engine)))
    assert isinstance(again, FinishEvent)
