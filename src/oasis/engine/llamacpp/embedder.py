"""Sentence embeddings on llama.cpp: one thread owns an embedding context; requests' inputs
are packed into one batch per step (several inputs per encode, each its own sequence), pooled
by the model's pooling (mean for all-MiniLM-L6-v2) and normalized to unit length, as
sentence-transformers does.

Interactive requests come first: a step fills from the interactive jobs (in arrival order)
and only then from background ones (batch lines, ``submit(background=True)``), so a live
request never waits behind a batch's hundreds of thousands of tokens; it waits at most for
the step in progress. A job is answered at the end of the step that computed its last input.

A step holds at most ``n_batch`` tokens (and ``n_seq_max`` inputs): attention in an encoder
batch runs over every token of the batch, masked per sequence, so a bigger batch does more
useless work; 512 is what llama-server uses. One input must fit a batch, so the per-input
limit is the smaller of the model's trained context and ``n_batch``, and the batch grows to
that context but never past ``MAX_INPUT_TOKENS`` (2048): an input is limited to 2048 tokens
even on a model trained on a longer context (a step of 8192 tokens would spend most of its
time on masked attention, and need compute buffers to match).

Only models llama.cpp runs as a (non-causal) encoder are served: ``llama_encode`` attends
both ways, so a decoder-only embedding model (Qwen3-Embedding and its kin, causal attention)
would give wrong vectors without an error; rerankers (rank pooling) give scores, not vectors.
``start`` refuses both, naming the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as L
import numpy as np
from numpy.typing import NDArray

from oasis.engine.base import EmbeddingModelInfo, EngineStats, Health
from oasis.engine.llamacpp.model import LoadedModel
from oasis.errors import EngineError

log = logging.getLogger(__name__)

MAX_INPUT_TOKENS = 2048
# architectures llama.cpp runs with non-causal attention whatever their GGUF says (it sets
# causal_attn = false in code for them rather than reading "<arch>.attention.causal")
_NON_CAUSAL_ARCHS = frozenset({"gemma-embedding"})


@dataclass(eq=False)
class _Job:
    """One request's inputs and where their vectors go."""

    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[NDArray[np.float32]]]
    background: bool = False
    vectors: list[NDArray[np.float32] | None] = field(default_factory=list)
    next: int = 0  # the first input not yet put in a batch
    left: int = 0  # inputs whose vectors have not come back
    evaluated: int = 0
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.inputs)
        self.left = len(self.inputs)

    async def result(self) -> list[NDArray[np.float32]]:
        try:
            return await asyncio.shield(self.future)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> None:
        self.cancelled = True


def _settle(job: _Job, outcome: list[NDArray[np.float32]] | BaseException | None) -> None:
    """On the event loop: complete a job's future (unless its request is gone); None cancels
    it (a cancelled job's inputs are dropped)."""
    if job.future.done():
        return
    if outcome is None:
        job.future.cancel()
    elif isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)


def _post(job: _Job, outcome: list[NDArray[np.float32]] | BaseException | None) -> None:
    """From the embedder's thread: settle a job on its loop (a closed loop has nobody left to
    tell)."""
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_settle, job, outcome)


def refusal(path: Path, *, pooling: int, has_encoder: bool, causal: bool) -> str | None:
    """Why llama.cpp's embedding of this model would be wrong here, or None if it is fine:
    no pooling (a chat model), rank pooling (a reranker: scores, not vectors) or causal
    attention in a model without an encoder (``llama_encode`` would run a decoder-only
    embedding model non-causally: wrong vectors, no error)."""
    if pooling == L.LLAMA_POOLING_TYPE_NONE:
        return (
            f"{path} has no pooling (not a sentence-embedding model): set its pooling in the "
            "GGUF, or serve it as a chat model"
        )
    if pooling == L.LLAMA_POOLING_TYPE_RANK:
        return (
            f"{path} is a reranker (rank pooling): it scores query-document pairs and has no "
            "sentence vectors; oasis does not serve rerankers"
        )
    if causal and not has_encoder:
        return (
            f"{path} is a decoder-only model (causal attention; Qwen3-Embedding and its kin): "
            "oasis embeds with llama.cpp's encoder path, which would give wrong vectors for "
            "it; use an encoder embedding model (BERT, nomic-bert, jina-bert, T5 encoder)"
        )
    return None


def _meta(model: Any, key: str) -> str | None:
    """A GGUF metadata value of a loaded model, as llama.cpp prints it; None if absent."""
    buf = ctypes.create_string_buffer(256)
    n = L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode(errors="replace") if n >= 0 else None


def _model_kind(model: Any) -> tuple[int, bool, bool]:
    """A loaded model's pooling (as its GGUF says; UNSPECIFIED if it says nothing), whether
    llama.cpp gives it an encoder, and whether its attention is causal.

    ``llama_model_has_encoder`` is true only for T5-style encoder(-decoder)s: for llama.cpp a
    BERT has no encoder (and ``llama_model_has_decoder`` is true for it, as for any chat
    model), so neither tells a BERT from a Qwen3-Embedding. The attention does: a BERT's GGUF
    says ``<arch>.attention.causal = false``; llama.cpp's default, without the key, is
    causal."""
    arch = _meta(model, "general.architecture") or ""
    value = _meta(model, f"{arch}.pooling_type")
    pooling = int(value) if value and value.isdigit() else L.LLAMA_POOLING_TYPE_UNSPECIFIED
    causal = _meta(model, f"{arch}.attention.causal") != "false" and arch not in _NON_CAUSAL_ARCHS
    return pooling, bool(L.llama_model_has_encoder(model)), causal


class LlamaEmbedder:
    """An embedding model in this process (a GGUF llama.cpp pools: BERT and its kin)."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        n_threads: int = 2,
        n_batch: int = 512,
        n_seq_max: int = 64,
    ) -> None:
        self.path = path
        self.name = name
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stats = EngineStats()
        self._health = Health(True)
        self._thread: threading.Thread | None = None
        self._stopping = False
        # set (under the lock) when no job put in the inbox would be read any more: submit
        # refuses from then on, and the jobs already in are settled by whoever set it
        self._down = False
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._ctx: Any = None
        self._info: EmbeddingModelInfo | None = None
        self._cls: int | None = None
        self._sep: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        model = LoadedModel.load(self.path)
        pooling, has_encoder, causal = _model_kind(model.model)
        why = refusal(self.path, pooling=pooling, has_encoder=has_encoder, causal=causal)
        if why is not None:  # before a context: llama.cpp aborts on a rank head it lacks
            model.free()
            raise EngineError(why)
        n_ctx_train = model.n_ctx_train or self.n_batch
        n_batch = max(self.n_batch, min(n_ctx_train, MAX_INPUT_TOKENS))
        params = L.llama_context_default_params()
        params.embeddings = True
        params.n_ctx = n_batch
        params.n_batch = n_batch
        params.n_ubatch = n_batch  # an encoder needs a whole input in one micro-batch
        params.n_seq_max = self.n_seq_max
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.no_perf = True
        ctx = L.llama_init_from_model(model.model, params)
        if not ctx:
            model.free()
            raise EngineError(f"llama.cpp could not create an embedding context for {self.path}")
        why = refusal(
            self.path, pooling=L.llama_pooling_type(ctx), has_encoder=has_encoder, causal=causal
        )
        if why is not None:
            L.llama_free(ctx)
            model.free()
            raise EngineError(why)
        self._model, self._ctx = model, ctx
        self.n_batch = n_batch
        self._info = EmbeddingModelInfo(
            name=self.name,
            n_ctx=min(n_ctx_train, n_batch),
            n_embd=L.llama_model_n_embd(model.model),
            n_vocab=model.n_vocab,
        )
        vocab = model.vocab
        if L.llama_vocab_get_add_bos(vocab):
            self._cls = L.llama_vocab_bos(vocab)
        if L.llama_vocab_get_add_eos(vocab):
            self._sep = L.llama_vocab_eos(vocab)
        self._thread = threading.Thread(target=self._run, name=f"embed-{self.name}", daemon=True)
        self._thread.start()
        log.info(
            "loaded embedding model %s (%s): %d dimensions, inputs up to %d tokens",
            self.name,
            model.description,
            self._info.n_embd,
            self._info.n_ctx,
        )

    def close(self) -> None:
        """Stop the thread; every job not answered yet fails with EngineError (none hangs),
        and ``submit`` refuses from now on."""
        with self._lock:
            self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                log.error("embedder %s: the thread did not stop; not freeing", self.name)
                return
        self._fail([])  # jobs of an embedder whose thread never ran
        if self._ctx is not None:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._model.free()
            self._model = None

    # -- the Embedder protocol ---------------------------------------------------------------
    @property
    def info(self) -> EmbeddingModelInfo:
        assert self._info is not None, "embedder not started"
        return self._info

    def tokenize(self, text: str) -> list[int]:
        assert self._model is not None
        return self._model.tokenize(text, add_special=True, parse_special=False)

    def wrap(self, tokens: list[int]) -> list[int]:
        head = [self._cls] if self._cls is not None else []
        tail = [self._sep] if self._sep is not None else []
        return [*head, *tokens, *tail]

    def submit(self, inputs: list[list[int]], *, background: bool = False) -> _Job:
        """Queue a request's inputs; ``background`` work (a batch line) waits for every
        interactive job."""
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop, loop.create_future(), background)
        with self._lock:
            thread = self._thread
            if thread is None or self._stopping or self._down or not self._health.ok:
                detail = "closed" if self._stopping else self._health.detail
                raise EngineError(f"The embedding model is down: {detail}")
            if not inputs:
                job.future.set_result([])
                return job
            self._inbox.put(job)
        return job

    def stats(self) -> EngineStats:
        return self._stats

    def health(self) -> Health:
        thread = self._thread
        if self._health.ok and thread is not None and not thread.is_alive() and not self._stopping:
            return Health(False, "embedding thread not running")
        return self._health

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        batch = L.llama_batch_init(self.n_batch, 0, 1)
        interactive: deque[_Job] = deque()
        background: deque[_Job] = deque()
        try:
            while not self._stopping:
                self._take(interactive, background, block=not (interactive or background))
                if self._stopping:
                    break
                _drop_cancelled(interactive)
                _drop_cancelled(background)
                if not (interactive or background):
                    continue
                try:
                    self._step(batch, interactive, background)
                except Exception as exc:
                    log.exception("embedder %s: a step failed", self.name)
                    for job in (*interactive, *background):
                        _post(job, EngineError("The embedding model failed on this request."))
                    interactive.clear()
                    background.clear()
                    self._stats.restarts_total += 1
                    if isinstance(exc, MemoryError):
                        raise
        except BaseException:
            log.critical("embedder %s: the thread failed", self.name, exc_info=True)
            with self._lock:
                self._health = Health(False, "the embedding thread failed")
        finally:
            try:
                self._fail([*interactive, *background])
            finally:
                L.llama_batch_free(batch)

    def _fail(self, jobs: list[_Job]) -> None:
        """No more steps: fail these jobs and every job in the inbox (and refuse new ones)."""
        with self._lock:
            self._down = True
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                jobs.append(item)
        for job in jobs:
            _post(job, EngineError("The embedding model is down."))

    def _take(self, interactive: deque[_Job], background: deque[_Job], *, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is not None:
                (background if item.background else interactive).append(item)

    def _step(self, batch: Any, interactive: deque[_Job], background: deque[_Job]) -> None:
        """One encode: inputs of the interactive jobs in arrival order, then (if all of theirs
        are in) of the background jobs, as many as fit."""
        t0 = time.perf_counter()
        placed: list[tuple[_Job, int]] = []
        n = 0
        for queue_ in (interactive, background):
            full = False
            for job in queue_:
                if job.cancelled:
                    continue
                while job.next < len(job.inputs) and len(placed) < self.n_seq_max:
                    tokens = job.inputs[job.next]
                    if n + len(tokens) > self.n_batch:
                        break
                    seq = len(placed)
                    for pos, token in enumerate(tokens):
                        batch.token[n] = token
                        batch.pos[n] = pos
                        batch.n_seq_id[n] = 1
                        batch.seq_id[n][0] = seq
                        batch.logits[n] = True
                        n += 1
                    placed.append((job, job.next))
                    job.next += 1
                if job.next < len(job.inputs):  # this step is full
                    full = True
                    break
            if full:
                break
        if not placed:
            return
        batch.n_tokens = n
        rc = L.llama_encode(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_encode failed ({rc})")
        n_embd = self.info.n_embd
        for seq, (job, index) in enumerate(placed):
            ptr = L.llama_get_embeddings_seq(self._ctx, seq)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding")
            vec = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_embd,))
            # a copy: the buffer is reused by the next encode
            out: NDArray[np.float32] = np.array(vec, dtype=np.float32)
            norm = float(np.linalg.norm(out))
            if norm > 0:
                out /= norm
            job.vectors[index] = out
            job.evaluated += len(job.inputs[index])
            job.left -= 1
        self._stats.prompt_tokens_total += n
        self._stats.steps_total += 1
        self._stats.step_seconds_total += time.perf_counter() - t0
        # every job this step finished, now, in arrival order within its queue (a queue is
        # filled in order, so its finished jobs are the ones ahead of its first unfinished one)
        for queue_ in (interactive, background):
            while queue_ and (queue_[0].left == 0 or queue_[0].cancelled):
                job = queue_.popleft()
                if job.cancelled:
                    _post(job, None)
                    continue
                self._stats.requests_total += 1
                _post(job, [v for v in job.vectors if v is not None])


def _drop_cancelled(jobs: deque[_Job]) -> None:
    """Forget the jobs whose requests are gone (their futures cancelled)."""
    if any(job.cancelled for job in jobs):
        kept = [job for job in jobs if not job.cancelled]
        for job in jobs:
            if job.cancelled:
                _post(job, None)
        jobs.clear()
        jobs.extend(kept)
