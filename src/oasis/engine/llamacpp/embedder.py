"""Sentence embeddings on llama.cpp: one thread owns an embedding context; requests' inputs
are packed, first come first served, into one batch per step (several inputs per encode, each
its own sequence), pooled by the model's pooling (mean for all-MiniLM-L6-v2) and normalized
to unit length, as sentence-transformers does.

A step holds at most ``n_batch`` tokens (and ``n_seq_max`` inputs): attention in an encoder
batch runs over every token of the batch, masked per sequence, so a bigger batch does more
useless work; 512 is what llama-server uses. One input must fit a batch, so the per-input
limit is the smaller of the model's trained context and ``n_batch``.
"""

from __future__ import annotations

import asyncio
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


@dataclass(eq=False)
class _Job:
    """One request's inputs and where their vectors go."""

    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[NDArray[np.float32]]]
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


def _settle(job: _Job, outcome: list[NDArray[np.float32]] | BaseException) -> None:
    """On the event loop: complete a job's future (unless its request is gone)."""
    if job.future.done():
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)


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
        self._model: LoadedModel | None = None
        self._ctx: Any = None
        self._info: EmbeddingModelInfo | None = None
        self._cls: int | None = None
        self._sep: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        model = LoadedModel.load(self.path)
        n_ctx_train = model.n_ctx_train or self.n_batch
        n_batch = max(self.n_batch, min(n_ctx_train, 8192))
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
        if L.llama_pooling_type(ctx) == L.LLAMA_POOLING_TYPE_NONE:
            L.llama_free(ctx)
            model.free()
            raise EngineError(
                f"{self.path} has no pooling (not a sentence-embedding model): set its "
                "pooling in the GGUF, or serve it as a chat model"
            )
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
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                log.error("embedder %s: the thread did not stop; not freeing", self.name)
                return
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

    def submit(self, inputs: list[list[int]]) -> _Job:
        thread = self._thread
        if thread is None or not thread.is_alive() or not self._health.ok:
            raise EngineError(f"The embedding model is down: {self._health.detail}")
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop, loop.create_future())
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
        waiting: deque[_Job] = deque()
        try:
            while not self._stopping:
                self._take(waiting, block=not waiting)
                if self._stopping:
                    break
                while waiting and waiting[0].cancelled:
                    waiting.popleft()
                if not waiting:
                    continue
                try:
                    self._step(batch, waiting)
                except Exception as exc:
                    log.exception("embedder %s: a step failed", self.name)
                    error = EngineError("The embedding model failed on this request.")
                    for job in waiting:
                        job.loop.call_soon_threadsafe(_settle, job, error)
                    waiting.clear()
                    self._stats.restarts_total += 1
                    if isinstance(exc, MemoryError):
                        raise
        except BaseException:
            log.critical("embedder %s: the thread failed", self.name, exc_info=True)
            self._health = Health(False, "the embedding thread failed")
            for job in waiting:
                job.loop.call_soon_threadsafe(
                    _settle, job, EngineError("The embedding model is down.")
                )
        finally:
            L.llama_batch_free(batch)

    def _take(self, waiting: deque[_Job], *, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is not None:
                waiting.append(item)

    def _step(self, batch: Any, waiting: deque[_Job]) -> None:
        """One encode: inputs of the waiting jobs in order, as many as fit."""
        t0 = time.perf_counter()
        placed: list[tuple[_Job, int]] = []
        n = 0
        for job in waiting:
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
            if len(placed) >= self.n_seq_max or (
                job.next < len(job.inputs) and n + len(job.inputs[job.next]) > self.n_batch
            ):
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
        while waiting and (waiting[0].left == 0 or waiting[0].cancelled):
            job = waiting.popleft()
            if job.cancelled:
                continue
            self._stats.requests_total += 1
            vectors = [v for v in job.vectors if v is not None]
            job.loop.call_soon_threadsafe(_settle, job, vectors)
        # jobs done behind an unfinished first one are settled when they reach the front
