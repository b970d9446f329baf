"""Embeddings and batches on the real engines: the bundled all-MiniLM-L6-v2's vectors against
an independent reference (numpy over the safetensors, Hugging Face's tokenizer), meaning on
hand-made triples, LangChain and the legacy SDK; batches through `oasis serve` on the bundled
chat model, a server killed with SIGKILL mid-batch and restarted; the engine serving
interactive requests before background ones."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import OpenAI

from oasis.engine.base import FinishEvent, GenerationRequest, SamplingParams
from oasis.engine.llamacpp import LlamaEngine
from oasis.models.registry import bundled_model_path
from tests.integration.conftest import LiveServer, start_server, stop_server
from tests.integration.test_legacy_sdk import legacy_python_path, run  # noqa: F401
from tests.reference_minilm import reference_embed

DATA = json.loads((Path(__file__).parents[1] / "data" / "embedding_texts.json").read_text())
EMBED = "text-embedding-3-small"
# keeps a story going: end-of-generation tokens (<|endoftext|>, <|im_end|>) are banned
NO_END = {"0": -100, "2": -100}


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- embeddings ----------------------------------------------------------------------------------

def test_vectors_match_an_independent_reference(sdk: OpenAI) -> None:
    texts = DATA["texts"]
    assert len(texts) == 50
    got = sdk.embeddings.create(model=EMBED, input=texts)  # base64 on the wire, as the SDK asks
    assert [d.index for d in got.data] == list(range(50))
    ref = reference_embed(texts)
    cosines = [cosine(d.embedding, r) for d, r in zip(got.data, ref, strict=True)]
    assert min(cosines) >= 0.999, min(cosines)
    assert all(abs(np.linalg.norm(d.embedding) - 1) < 1e-4 for d in got.data)
    # the same request as floats: the same values (packed into the same batches, computed the
    # same way; llama.cpp's results move in the last bits with the batch's shape)
    floats = sdk.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert [d.embedding for d in floats.data] == [d.embedding for d in got.data]
    assert got.usage.prompt_tokens > 50


def test_paraphrases_are_closer_than_unrelated_sentences(sdk: OpenAI) -> None:
    triples = DATA["triples"]
    assert len(triples) == 20
    flat = [t for triple in triples for t in triple]
    vecs = [d.embedding for d in sdk.embeddings.create(model=EMBED, input=flat).data]
    wins = sum(
        cosine(vecs[3 * i], vecs[3 * i + 1]) > cosine(vecs[3 * i], vecs[3 * i + 2])
        for i in range(20)
    )
    assert wins >= 19, wins


def test_limits_on_the_real_model(sdk: OpenAI, live: LiveServer) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {live.api_key}"}
    long = "word " * 600
    r = httpx.post(f"{live.v1}/embeddings", headers=headers, timeout=60,
                   json={"model": EMBED, "input": long})
    assert r.status_code == 400 and "maximum context length is 512" in r.json()["error"]["message"]
    r = httpx.post(f"{live.v1}/embeddings", headers=headers, timeout=60,
                   json={"model": EMBED, "input": [[101, 7592, 2088, 102], [7592]]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    r = httpx.post(f"{live.v1}/embeddings", headers=headers, timeout=60,
                   json={"model": EMBED, "input": [99999]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = httpx.post(f"{live.v1}/chat/completions", headers=headers, timeout=60,
                   json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "embedding model" in r.json()["error"]["message"]
    models = {m.id for m in sdk.models.list().data}
    assert {"all-MiniLM-L6-v2", EMBED, "text-embedding-ada-002"} <= models


def test_langchain_openai_embeddings(live: LiveServer, sdk: OpenAI) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: LangChain otherwise sends tiktoken's token ids, which
    # mean nothing to another model's vocabulary (and tiktoken needs a download)
    emb = OpenAIEmbeddings(model=EMBED, base_url=live.v1, api_key=live.api_key,  # type: ignore[arg-type]
                           check_embedding_ctx_length=False)
    docs = ["The cat sat on the mat.", "Stock markets fell sharply today.", "猫在垫子上。"]
    vectors = emb.embed_documents(docs)
    query = emb.embed_query("Where did the cat sit?")
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
    direct = sdk.embeddings.create(model=EMBED, input=docs).data
    for v, d in zip(vectors, direct, strict=True):
        assert cosine(v, d.embedding) > 0.9999
    assert cosine(query, vectors[0]) > cosine(query, vectors[1])


LEGACY_EMBEDDING = '''
import openai
openai.api_key = "{key}"
openai.api_base = "{base}"
r = openai.Embedding.create(model="text-embedding-ada-002", input=["hello world", "你好"])
print("DIM", len(r["data"][0]["embedding"]), len(r["data"]), r["usage"]["prompt_tokens"] > 0)
'''


def test_legacy_sdk_embedding(live: LiveServer, legacy_python_path: Path) -> None:  # noqa: F811
    out = run(LEGACY_EMBEDDING.format(key=live.api_key, base=live.v1), legacy_python_path)
    assert "DIM 384 2 True" in out


# -- batches -------------------------------------------------------------------------------------

def upload(sdk: OpenAI, lines: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
    return sdk.files.create(file=("batch.jsonl", data), purpose="batch").id


def wait(sdk: OpenAI, batch_id: str, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def chat_line(i: int, content: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-3.5-turbo", "max_tokens": 16, "temperature": 0,
                     "messages": [{"role": "user", "content": content}], **body}}


def test_chat_and_embedding_batches_on_the_real_models(sdk: OpenAI) -> None:
    questions = ["What is 2+2?", "Name a colour.", "用一句话介绍北京。", "Say hello."]
    lines = [chat_line(i, q) for i, q in enumerate(questions)]
    batch = sdk.batches.create(input_file_id=upload(sdk, lines), endpoint="/v1/chat/completions",
                               completion_window="24h")
    done = wait(sdk, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 4
    out = [json.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in out] == ["q0", "q1", "q2", "q3"]
    for x in out:
        body = x["response"]["body"]
        assert body["choices"][0]["message"]["content"].strip()
        assert body["model"] == "gpt-3.5-turbo"
    # the same question interactively, greedy: the same answer
    live = sdk.chat.completions.create(**lines[0]["body"])
    assert live.choices[0].message.content == out[0]["response"]["body"]["choices"][0][
        "message"]["content"]
    emb = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": EMBED, "input": t}} for i, t in enumerate(DATA["texts"][:6])]
    done = wait(sdk, sdk.batches.create(input_file_id=upload(sdk, emb), endpoint="/v1/embeddings",
                                        completion_window="24h").id)
    assert done.status == "completed" and done.request_counts.completed == 6
    out = [json.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
    ref = reference_embed(DATA["texts"][:6])
    for x, r in zip(out, ref, strict=True):
        assert cosine(x["response"]["body"]["data"][0]["embedding"], r) >= 0.999


def test_a_batch_survives_kill_9(tmp_path: Path) -> None:
    env = {"OASIS_BATCH_LEASE_SECONDS": "3", "OASIS_PARALLEL": "4"}
    proc, server = start_server(tmp_path, **env)
    sdk = OpenAI(base_url=server.v1, api_key=server.api_key, max_retries=2, timeout=60)
    n = 24
    lines = [chat_line(i, f"Tell me a long story about the number {i}.", max_tokens=48,
                       logit_bias=NO_END) for i in range(n)]
    try:
        batch = sdk.batches.create(input_file_id=upload(sdk, lines),
                                   endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 180
        while (sdk.batches.retrieve(batch.id).request_counts.completed or 0) < 4:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    port = server.base_url.rsplit(":", 1)[1]
    proc, server = start_server(tmp_path, OASIS_PORT=port, **env)
    try:
        mid = sdk.batches.retrieve(batch.id)
        assert mid.status in ("in_progress", "finalizing", "completed")
        assert 4 <= (mid.request_counts.completed or 0) < n or mid.status == "completed"
        done = wait(sdk, batch.id)
        assert done.status == "completed", done
        out = [json.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
        assert [x["custom_id"] for x in out] == [f"q{i}" for i in range(n)]  # each exactly once
        assert done.request_counts.completed == n and done.request_counts.failed == 0
        assert all(x["response"]["body"]["usage"]["completion_tokens"] == 48 for x in out)
    finally:
        stop_server(proc)


# -- the engine: interactive first -----------------------------------------------------------------

@pytest.fixture(scope="module")
def two_slots() -> Iterator[LlamaEngine]:
    eng = LlamaEngine(bundled_model_path(), name="smol-2", n_ctx=4096, n_parallel=2,
                      n_threads=2, n_batch=256, max_queue=8)
    eng.start()
    yield eng
    eng.close()


def story(engine: LlamaEngine, n: int, *, background: bool) -> GenerationRequest:
    prompt = engine.tokenize("Once upon a time, in a small village,", add_special=False)
    return GenerationRequest(prompt=prompt, max_tokens=n, background=background,
                             sampling=SamplingParams(temperature=0,
                                                     logit_bias={0: -100.0, 2: -100.0}))


async def first_token_times(engine: LlamaEngine, reqs: list[tuple[float, GenerationRequest]],
                            ) -> list[tuple[float, float]]:
    """(first token, finish) monotonic times of each request, submitted after its delay."""
    async def one(delay: float, req: GenerationRequest) -> tuple[float, float]:
        await asyncio.sleep(delay)
        first = 0.0
        async for ev in engine.submit(req):
            if not first:
                first = time.monotonic()
            if isinstance(ev, FinishEvent):
                return first, time.monotonic()
        raise AssertionError("no finish")
    return await asyncio.gather(*(one(d, r) for d, r in reqs))


def test_interactive_requests_are_admitted_before_waiting_background_work(
        two_slots: LlamaEngine) -> None:
    eng = two_slots
    eng._last_interactive = -1e9  # no interactive traffic yet: background may use every slot
    reqs = [(0.0, story(eng, 40, background=True)), (0.0, story(eng, 40, background=True)),
            (0.0, story(eng, 40, background=True)),  # waits for a slot
            (0.3, story(eng, 4, background=False))]  # comes later, waits too, goes first
    (_, f1), (_, f2), (b3, _), (i1, _) = asyncio.run(first_token_times(eng, reqs))
    assert i1 < b3, "the interactive request took the first free slot"
    assert b3 >= min(f1, f2)


def test_a_slot_is_kept_for_interactive_requests(two_slots: LlamaEngine) -> None:
    eng = two_slots
    # an interactive request was just seen: background work leaves one of the two slots free
    reqs = [(0.0, story(eng, 2, background=False)),
            (0.2, story(eng, 30, background=True)), (0.2, story(eng, 30, background=True))]
    _, (s1, f1), (s2, f2) = asyncio.run(first_token_times(eng, reqs))
    first_done, second_start = (f1, s2) if s1 < s2 else (f2, s1)
    assert second_start >= first_done, "the second background request waited for the first"
