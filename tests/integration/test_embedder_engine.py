"""The embedding engine (LlamaEmbedder) on the bundled all-MiniLM-L6-v2, without a server:
interactive jobs ahead of background ones, every job settled when the engine closes or its
thread dies, the models it refuses (rerankers, decoder-only embedders), the per-input cap."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import llama_cpp as L
import numpy as np
import pytest

from oasis.engine.llamacpp import embedder as embedder_module
from oasis.engine.llamacpp.embedder import LlamaEmbedder, refusal
from oasis.engine.llamacpp.model import LoadedModel
from oasis.errors import EngineError
from oasis.models.embedding_gguf import bundled_embedding_gguf

pytestmark = pytest.mark.integration

HANG_GUARD = 120.0  # seconds: only there to turn a hang into a failure


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return bundled_embedding_gguf(Path.home() / ".cache" / "oasis")


@pytest.fixture
def embedder(gguf_path: Path) -> Iterator[LlamaEmbedder]:
    emb = LlamaEmbedder(gguf_path, name="minilm")
    emb.start()
    try:
        yield emb
    finally:
        emb.close()


def texts(n: int, tag: str) -> list[str]:
    """Short distinct inputs (about 6 tokens: the steps are short on a busy machine)."""
    return [f"{tag} {i} {('cat', 'sea', 'war', 'tax')[i % 4]}" for i in range(n)]


async def completion_order(emb: LlamaEmbedder, jobs: list[tuple[str, list[list[int]], bool]]
                           ) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    """Submit every job at once (no await in between), then the names in the order their
    results came back, and the vectors."""
    order: list[str] = []
    vectors: dict[str, list[np.ndarray]] = {}

    async def wait(name: str, job: Any) -> None:
        vectors[name] = await job.result()
        order.append(name)

    submitted = [(name, emb.submit(inputs, background=bg)) for name, inputs, bg in jobs]
    waits = [wait(name, job) for name, job in submitted]
    await asyncio.wait_for(asyncio.gather(*waits), HANG_GUARD)
    return order, vectors


def test_an_interactive_job_overtakes_background_ones(embedder: LlamaEmbedder,
                                                      gguf_path: Path) -> None:
    bg_texts = {f"bg{k}": texts(64, f"b{k}") for k in range(20)}
    live_text = "a live request: what is the weather like in Lisbon?"
    jobs = [(name, [embedder.tokenize(t) for t in ts], True) for name, ts in bg_texts.items()]
    jobs.append(("live", [embedder.tokenize(live_text)], False))
    order, got = asyncio.run(completion_order(embedder, jobs))

    background = [name for name in order if name != "live"]
    assert background == list(bg_texts)  # a queue completes in arrival order
    # submitted last, behind 1280 inputs (20+ full steps), answered after at most the step
    # in progress and the one it joined
    assert order.index("live") < order.index("bg19")
    assert order.index("live") <= 2, order

    # the same vectors as an idle fresh engine gives (llama.cpp's results move only in the
    # last bits with a batch's shape)
    fresh = LlamaEmbedder(gguf_path, name="fresh")
    fresh.start()
    try:
        sample = ["bg0", "bg7", "bg19"]
        ref_jobs = [(name, [fresh.tokenize(t) for t in bg_texts[name]], False) for name in sample]
        ref_jobs.append(("live", [fresh.tokenize(live_text)], False))
        _, ref = asyncio.run(completion_order(fresh, ref_jobs))
    finally:
        fresh.close()
    for name in [*sample, "live"]:
        assert len(got[name]) == len(ref[name])
        for a, b in zip(got[name], ref[name], strict=True):
            assert a.shape == (384,)
            assert float(a @ b) > 0.9999  # unit vectors: the dot product is the cosine


def test_background_jobs_fill_the_steps_interactive_ones_leave(embedder: LlamaEmbedder) -> None:
    """A background job alone is not starved: it runs when no interactive job waits."""
    inputs = [embedder.tokenize(t) for t in texts(10, "alone")]
    order, got = asyncio.run(completion_order(embedder, [("bg", inputs, True)]))
    assert order == ["bg"] and len(got["bg"]) == 10


def test_close_settles_every_job_and_submit_then_refuses(gguf_path: Path) -> None:
    emb = LlamaEmbedder(gguf_path, name="closing")
    emb.start()

    async def scenario() -> list[BaseException | list[np.ndarray]]:
        many = [emb.tokenize(t) for t in texts(1500, "long")]  # a couple of dozen steps
        running = emb.submit(many)
        queued = emb.submit(many[:3], background=True)
        await asyncio.sleep(0.05)  # the thread is inside a step (or about to be)
        await asyncio.to_thread(emb.close)
        outcomes = await asyncio.wait_for(
            asyncio.gather(running.result(), queued.result(), return_exceptions=True),
            HANG_GUARD)
        with pytest.raises(EngineError):
            emb.submit([emb.wrap([2023])])
        return outcomes

    outcomes = asyncio.run(scenario())
    for outcome in outcomes:
        assert isinstance(outcome, EngineError), outcome
        assert outcome.message == "The embedding model is down."


def test_close_from_the_loop_thread_settles_jobs_still_in_the_inbox(gguf_path: Path) -> None:
    emb = LlamaEmbedder(gguf_path, name="closing")
    emb.start()

    async def scenario() -> list[BaseException | list[np.ndarray]]:
        jobs = [emb.submit([emb.tokenize(t) for t in texts(64, f"j{k}")]) for k in range(5)]
        emb.close()  # on the loop, before the loop could run anything
        return await asyncio.wait_for(
            asyncio.gather(*(j.result() for j in jobs), return_exceptions=True), HANG_GUARD)

    outcomes = asyncio.run(scenario())
    # the step in progress may have finished a job; every other one fails, none hangs
    assert all(isinstance(o, EngineError | list) for o in outcomes)
    assert isinstance(outcomes[-1], EngineError)


class _Killed(BaseException):
    """Not an Exception: the thread's death, not a failed step."""


def test_a_dead_thread_settles_its_jobs_and_the_inbox(embedder: LlamaEmbedder,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    inside, release = threading.Event(), threading.Event()

    def dying_step(*args: Any) -> None:
        inside.set()
        release.wait(HANG_GUARD)
        raise _Killed

    monkeypatch.setattr(embedder, "_step", dying_step)

    async def scenario() -> list[BaseException | list[np.ndarray]]:
        first = embedder.submit([embedder.tokenize("in the step")])
        assert await asyncio.to_thread(inside.wait, HANG_GUARD)
        waiting = embedder.submit([embedder.tokenize("in the inbox")])
        late = embedder.submit([embedder.tokenize("also waiting")], background=True)
        release.set()
        outcomes = await asyncio.wait_for(
            asyncio.gather(first.result(), waiting.result(), late.result(),
                           return_exceptions=True), HANG_GUARD)
        with pytest.raises(EngineError):
            embedder.submit([embedder.tokenize("after")])
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, EngineError) for o in outcomes), outcomes
    assert not embedder.health().ok


def test_a_closed_loop_does_not_kill_the_thread(embedder: LlamaEmbedder) -> None:
    async def submit_and_leave() -> None:
        embedder.submit([embedder.tokenize(t) for t in texts(100, "orphan")])

    asyncio.run(submit_and_leave())  # the loop closes before the vectors come back
    inputs = [embedder.tokenize("still alive")]
    order, _ = asyncio.run(completion_order(embedder, [("after", inputs, False)]))
    assert order == ["after"] and embedder.health().ok


# -- the models it refuses -----------------------------------------------------------------------

def _edited_copy(src: Path, dst: Path, key: str, value: Any) -> Path:
    """A copy of a GGUF with one scalar metadata value changed in place."""
    shutil.copyfile(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    field = reader.fields[key]
    field.parts[field.data[0]][0] = value
    reader.data.flush()
    del reader
    return dst


def test_refuses_a_decoder_only_model_naming_the_file(gguf_path: Path, tmp_path: Path) -> None:
    causal = _edited_copy(gguf_path, tmp_path / "causal.gguf", "bert.attention.causal", True)
    emb = LlamaEmbedder(causal, name="causal")
    with pytest.raises(EngineError) as err:
        emb.start()
    assert str(causal) in err.value.message and "decoder-only" in err.value.message


def test_refuses_a_reranker_naming_the_file(gguf_path: Path, tmp_path: Path) -> None:
    rank = _edited_copy(gguf_path, tmp_path / "rank.gguf", "bert.pooling_type",
                        L.LLAMA_POOLING_TYPE_RANK)
    emb = LlamaEmbedder(rank, name="rank")
    with pytest.raises(EngineError) as err:
        emb.start()
    assert str(rank) in err.value.message and "reranker" in err.value.message


def test_the_bundled_bert_is_accepted_though_llama_cpp_gives_it_no_encoder(
        gguf_path: Path) -> None:
    """llama_model_has_encoder is false for a BERT (true only for T5-style models), and
    llama_model_has_decoder is true: the GGUF's non-causal attention is what admits it."""
    model = LoadedModel.load(gguf_path)
    try:
        assert not L.llama_model_has_encoder(model.model)
        assert L.llama_model_has_decoder(model.model)
        assert embedder_module._model_kind(model.model) == (L.LLAMA_POOLING_TYPE_MEAN, False,
                                                             False)
    finally:
        model.free()


@pytest.mark.parametrize(("pooling", "has_encoder", "causal", "refused"), [
    (L.LLAMA_POOLING_TYPE_MEAN, False, False, None),  # BERT
    (L.LLAMA_POOLING_TYPE_CLS, False, False, None),  # BERT, CLS pooling (bge)
    (L.LLAMA_POOLING_TYPE_UNSPECIFIED, False, False, None),  # decided by the context
    (L.LLAMA_POOLING_TYPE_MEAN, True, True, None),  # a T5 encoder
    (L.LLAMA_POOLING_TYPE_LAST, False, True, "decoder-only"),  # Qwen3-Embedding
    (L.LLAMA_POOLING_TYPE_UNSPECIFIED, False, True, "decoder-only"),  # a chat model
    (L.LLAMA_POOLING_TYPE_RANK, False, False, "reranker"),  # bge-reranker
    (L.LLAMA_POOLING_TYPE_NONE, False, False, "no pooling"),
])
def test_refusal(pooling: int, has_encoder: bool, causal: bool, refused: str | None) -> None:
    why = refusal(Path("/models/x.gguf"), pooling=pooling, has_encoder=has_encoder,
                  causal=causal)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why and "/models/x.gguf" in why


# -- the per-input cap ---------------------------------------------------------------------------

def test_a_long_context_model_gets_2048_token_steps(gguf_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A model trained on 8192 tokens: steps (and inputs) of 2048 tokens, not 8192."""
    load = LoadedModel.load

    def long_context(path: Path) -> LoadedModel:
        model = load(path)
        model.n_ctx_train = 8192
        return model

    monkeypatch.setattr(LoadedModel, "load", staticmethod(long_context))
    emb = LlamaEmbedder(gguf_path, name="long")
    emb.start()
    try:
        assert emb.n_batch == 2048 and emb.info.n_ctx == 2048
    finally:
        emb.close()
    small = LlamaEmbedder(gguf_path, name="small")
    monkeypatch.undo()
    small.start()
    try:
        assert small.n_batch == 512 and small.info.n_ctx == 512  # trained on 512
    finally:
        small.close()
