"""Speculative decoding on the real engine: drafts change the speed, never the output.

Greedy outputs (and seeded samples: the same logits and the same draws) with prompt lookup
or jump-forward on equal those with it off, token for token; drafts were really made and
kept (the counters prove the comparison is not between two plain runs); max_tokens, stop
strings and logprobs hold inside accepted drafts; and through the server, the
``prompt_lookup`` extension is honoured or refused with OpenAI's 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from oasis.engine.base import FinishEvent, GenerationRequest, SamplingParams
from oasis.engine.llamacpp import LlamaEngine
from oasis.models.registry import bundled_model_path
from tests.integration.conftest import LiveServer

DOC = (
    "The city council met on Tuesday to discuss the new park. The park will have a "
    "playground, a pond with ducks, and a long walking path around the lake. Construction "
    "begins in March and ends in October. The budget is two million dollars, paid by the "
    "city and a local bank."
)
ASKS = [
    "Repeat this text exactly: " + DOC,
    "Summarize: " + DOC,
    "Extract the dates from: " + DOC,
    "List the facts in: " + DOC,
    "Write a poem about the sea.",
]
CALL = "\n".join([
    r'root ::= "{" space "\"name\"" space ":" space "\"get_weather\"" space "," space '
    r'"\"arguments\"" space ":" space args "}" space',
    r'args ::= "{" space "\"city\"" space ":" space str "," space "\"unit\"" space ":" space '
    r'("\"celsius\"" | "\"fahrenheit\"") space "}" space',
    r'str ::= "\"" [a-zA-Z ]{1,30} "\"" space',
    r'space ::= " "?',
])
GREEDY = SamplingParams(temperature=0)


def chat(text: str) -> str:
    return (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        f"Face<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    # No prefix cache: every run prefills its prompt the same way, so the two runs compared
    # differ only by the drafts.
    eng = LlamaEngine(bundled_model_path(), name="smol-spec", n_ctx=8192, n_parallel=4,
                      n_threads=2, prefix_cache=False)
    eng.start()
    yield eng
    eng.close()


async def collect(engine: LlamaEngine, req: GenerationRequest) -> tuple[str, FinishEvent, list]:
    text, lps = [], []
    async for ev in engine.submit(req):
        text.append(ev.text)
        if isinstance(ev, FinishEvent):
            return "".join(text), ev, lps
        lps.append(ev.logprob)
    raise AssertionError("no finish event")


def run(engine: LlamaEngine, req: GenerationRequest) -> tuple[str, FinishEvent, list]:
    return asyncio.run(collect(engine, req))


def kept(engine: LlamaEngine) -> int:
    return engine.stats().draft_accepted_total


def test_prompt_lookup_keeps_greedy_outputs_token_for_token(engine: LlamaEngine) -> None:
    before = kept(engine)
    for ask in ASKS:
        prompt = engine.tokenize(chat(ask), add_special=False)
        off = run(engine, GenerationRequest(prompt=prompt, max_tokens=96, sampling=GREEDY,
                                            prompt_lookup=False))
        on = run(engine, GenerationRequest(prompt=prompt, max_tokens=96, sampling=GREEDY,
                                           prompt_lookup=True))
        assert on[0] == off[0], ask
        assert on[1].completion_tokens == off[1].completion_tokens
        assert on[1].reason == off[1].reason
    assert kept(engine) - before > 100  # the answers quote the document: drafts were kept


def test_seeded_sampling_draws_the_same_with_and_without_drafts(engine: LlamaEngine) -> None:
    prompt = engine.tokenize(chat(ASKS[0]), add_special=False)
    for params in (SamplingParams(temperature=0.7, seed=5),
                   SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=9),
                   SamplingParams(temperature=0.6, presence_penalty=0.5, seed=2)):
        before = kept(engine)
        off = run(engine, GenerationRequest(prompt=prompt, max_tokens=80, sampling=params))
        on = run(engine, GenerationRequest(prompt=prompt, max_tokens=80, sampling=params,
                                           prompt_lookup=True))
        assert on[0] == off[0], params
        assert kept(engine) > before, params


def test_jump_forward_keeps_greedy_outputs(engine: LlamaEngine) -> None:
    engine.check_grammar(CALL)
    prompt = engine.tokenize(chat("What is the weather in Paris? Answer with a JSON tool call."),
                             add_special=False)
    outputs = {}
    for on in (False, True):
        engine.jump_forward = on
        before = kept(engine)
        try:
            outputs[on] = run(engine, GenerationRequest(prompt=prompt, max_tokens=80,
                                                        sampling=GREEDY, grammar=CALL))
        finally:
            engine.jump_forward = True
        assert (kept(engine) > before) == on
    assert outputs[True][0] == outputs[False][0]
    assert outputs[True][1].completion_tokens == outputs[False][1].completion_tokens
    assert '"name": "get_weather"' in outputs[True][0]


def test_max_tokens_stop_strings_and_logprobs_hold_inside_drafts(engine: LlamaEngine) -> None:
    prompt = engine.tokenize(chat(ASKS[0]), add_special=False)
    for extra in ({"max_tokens": 13}, {"max_tokens": 60, "stop": ("ducks",)},
                  {"max_tokens": 30, "logprobs": 2}):
        off = run(engine, GenerationRequest(prompt=prompt, sampling=GREEDY, **extra))
        on = run(engine, GenerationRequest(prompt=prompt, sampling=GREEDY, prompt_lookup=True,
                                           **extra))
        assert on[0] == off[0], extra
        assert on[1].completion_tokens == off[1].completion_tokens
        assert on[1].reason == off[1].reason
        if "stop" in extra:
            assert on[1].reason == "stop" and "ducks" not in on[0] and "pond" in on[0]
        if "logprobs" in extra:
            assert [(a.token, a.logprob, a.top) for a in on[2]] == [
                (b.token, b.logprob, b.top) for b in off[2]
            ]
    assert off[1].completion_tokens == 30


def test_concurrent_drafting_sequences_match_their_solo_runs(engine: LlamaEngine) -> None:
    """Four sequences drafting in one batch give their solo answers, up to near-ties: a batch
    of several sequences is computed with other matrix kernels than one sequence alone (the
    same holds without drafts, see test_batching), so where two tokens are almost equally
    likely the choice can flip; the first divergence must be such a tie (< 0.5 nats apart in
    the solo run's own logprobs)."""
    prompts = [engine.tokenize(chat(a), add_special=False) for a in ASKS[:4]]
    solo = [run(engine, GenerationRequest(prompt=p, max_tokens=48, sampling=GREEDY,
                                          logprobs=5))[2] for p in prompts]
    before = kept(engine)

    async def together() -> list[list]:
        results = await asyncio.gather(*[
            collect(engine, GenerationRequest(prompt=p, max_tokens=48, sampling=GREEDY,
                                              prompt_lookup=True, logprobs=0))
            for p in prompts
        ])
        return [r[2] for r in results]

    same = 0
    for alone, drafted in zip(solo, asyncio.run(together()), strict=True):
        a, b = [t.token for t in alone], [t.token for t in drafted]
        if a == b:
            same += 1
            continue
        i = next(k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
        alternatives = dict(alone[i].top)
        piece = drafted[i].piece
        assert piece in alternatives, (i, piece, alternatives)
        assert alone[i].logprob - alternatives[piece] < 0.5, "not a near-tie"
    assert same >= 2  # most answers are identical; a flip is the exception
    assert kept(engine) > before


def test_prompt_lookup_through_the_sdk(live: LiveServer, sdk: OpenAI) -> None:
    messages = [{"role": "user", "content": ASKS[0]}]
    # once to fill the prefix cache: the two answers compared then read their prompt the same
    # way (a cold prompt is computed in other batch shapes; this prompt sits at a near-tie)
    sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=1)
    before = live.metric("oasis_draft_tokens_accepted_total")
    plain = sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=48,
                                        temperature=0)
    fast = sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=48,
                                       temperature=0, extra_body={"prompt_lookup": True})
    assert fast.choices[0].message.content == plain.choices[0].message.content
    assert fast.usage is not None and plain.usage is not None
    assert fast.usage.completion_tokens == plain.usage.completion_tokens
    assert live.metric("oasis_draft_tokens_accepted_total") > before
    # a negative seed (clients send -1 for "random") is a seed like any other
    seeded = sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=8,
                                         temperature=0.8, seed=-1)
    assert seeded.choices[0].message.content
    legacy = sdk.completions.create(model="gpt-4o-mini", prompt=ASKS[0][:200], max_tokens=24,
                                    temperature=0, extra_body={"prompt_lookup": True})
    assert legacy.choices[0].text
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=4,
                                    extra_body={"prompt_lookup": "yes"})
    assert bad.value.status_code == 400
    assert "prompt_lookup" in str(bad.value.body)
    # the counters are on /metrics for anyone watching how much the drafts save
    text = httpx.get(f"{live.base_url}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {live.api_key}"}).text
    assert "oasis_draft_tokens_total" in text


def test_prompt_lookup_takes_hostile_prompts(live: LiveServer) -> None:
    """A lone surrogate, and a long prompt made of one repeated phrase (an n-gram match at
    every position), with drafts on: answered, and the server answers the next request."""
    headers = {"Authorization": f"Bearer {live.api_key}", "Content-Type": "application/json"}
    url = f"{live.v1}/chat/completions"
    lone = ('{"model": "gpt-4o-mini", "max_tokens": 8, "temperature": 0, "prompt_lookup": true,'
            ' "messages": [{"role": "user", "content": "Repeat: abc \\ud800 abc"}]}')
    r = httpx.post(url, content=lone, headers=headers, timeout=120)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["type"] == "invalid_request_error"
    repeated = "the cat sat on the mat " * 250  # about 1500 tokens of one n-gram
    r = httpx.post(url, json={"model": "gpt-4o-mini", "max_tokens": 32, "temperature": 0,
                              "prompt_lookup": True,
                              "messages": [{"role": "user", "content": repeated}]},
                   headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] > 0
    r = httpx.post(url, json={"model": "gpt-4o-mini", "max_tokens": 4,
                              "messages": [{"role": "user", "content": "Hi"}]},
                   headers=headers, timeout=60)
    assert r.status_code == 200
