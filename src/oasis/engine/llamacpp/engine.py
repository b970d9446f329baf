"""The llama.cpp engine.

One thread owns the llama.cpp context. Each request is a sequence (``seq_id``) in a slot. Every
step fills ONE ``llama_batch`` with the next token of each decoding slot plus a chunk of pending
prompt, decodes once, then samples each slot that produced logits. Asyncio handlers exchange work
and events with the thread through thread-safe queues and never block the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp as L

from oasis.engine.base import (
    EngineStats,
    Event,
    FinishEvent,
    GenerationRequest,
    ModelInfo,
    TokenEvent,
    TokenLogprob,
)
from oasis.engine.llamacpp.model import LoadedModel
from oasis.engine.llamacpp.sampling import build_sampler, free_sampler, logits_row, token_logprob
from oasis.engine.textstream import TextStream
from oasis.errors import EngineError, OverloadedError

log = logging.getLogger(__name__)


class LlamaHandle:
    """A submitted request. Iterate for events; ``cancel`` frees the slot at the next step."""

    def __init__(self, engine: LlamaEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self.request = request
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.cancelled = False
        self.done = False

    def _deliver(self, item: Event | BaseException) -> None:
        """Called on the engine thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (shutdown); nobody is listening
            self.cancelled = True

    def cancel(self) -> None:
        if not self.done and not self.cancelled:
            self.cancelled = True
            self._engine._wake()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self.done = True
                raise item
            if isinstance(item, FinishEvent):
                self.done = True
                yield item
                return
            yield item


@dataclass
class _Seq:
    handle: LlamaHandle
    seq_id: int
    prompt: list[int]
    sampler: Any
    text: TextStream
    n_past: int = 0  # tokens of this sequence in the KV cache
    generated: int = 0
    last_token: int = -1
    out_index: int = -1  # where this sequence's logits are in the current batch
    chunk: int = 0  # prompt tokens put in the current batch
    prompt_lps: list[TokenLogprob] = field(default_factory=list)
    prompt_out: list[tuple[int, int]] = field(default_factory=list)  # (batch index, prompt pos)

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)


class LlamaEngine:
    """Continuous batching over llama.cpp's C API."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        n_ctx: int = 8192,
        n_parallel: int = 4,
        n_threads: int = 2,
        n_batch: int = 512,
        max_queue: int = 64,
    ) -> None:
        self.path = path
        self.name = name
        self.n_parallel = n_parallel
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.max_queue = max_queue
        self._n_ctx_total = n_ctx
        self._inbox: queue.SimpleQueue[_Seq | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # submitted, not yet in a slot
        self._stats = EngineStats()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._model: LoadedModel | None = None
        self._ctx: Any = None
        self._info: ModelInfo | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        model = LoadedModel.load(self.path)
        n_ctx = min(self._n_ctx_total, model.n_ctx_train * self.n_parallel)
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = self.n_parallel
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.kv_unified = True
        params.no_perf = True
        ctx = L.llama_init_from_model(model.model, params)
        if not ctx:
            model.free()
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self._model, self._ctx = model, ctx
        self._n_ctx_total = L.llama_n_ctx(ctx)
        self._info = ModelInfo(
            name=self.name,
            n_ctx=min(self._n_ctx_total // self.n_parallel, model.n_ctx_train),
            n_vocab=model.n_vocab,
            chat_template=model.chat_template,
            bos_token=model.token_text(model.bos_id),
            eos_token=model.token_text(model.eos_id),
            add_bos=model.add_bos,
        )
        self._stats.kv_total_cells = self._n_ctx_total
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()
        log.info(
            "loaded %s (%s): ctx %d = %d slots x %d, %d threads",
            self.name,
            model.description,
            self._n_ctx_total,
            self.n_parallel,
            self._info.n_ctx,
            self.n_threads,
        )

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._ctx is not None:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._model.free()

    # -- the Engine protocol -----------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        assert self._info is not None, "engine not started"
        return self._info

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        assert self._model is not None
        return self._model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_piece(self, token: int) -> bytes:
        assert self._model is not None
        return self._model.pieces[token] if 0 <= token < self._model.n_vocab else b""

    def stats(self) -> EngineStats:
        with self._lock:
            self._stats.waiting = self._pending
        return self._stats

    def submit(self, request: GenerationRequest) -> LlamaHandle:
        assert self._model is not None
        with self._lock:
            if self._pending >= self.max_queue + self.n_parallel - self._stats.running:
                raise OverloadedError(
                    "The server is at capacity: all slots are busy and the wait queue is full. "
                    "Retry shortly.",
                    retry_after=1,
                )
            self._pending += 1
        handle = LlamaHandle(self, request)
        prompt = list(request.prompt) or [self._model.bos_id]
        seq = _Seq(
            handle=handle,
            seq_id=-1,
            prompt=prompt,
            sampler=None,
            text=TextStream(request.stop),
        )
        self._inbox.put(seq)
        return handle

    def _wake(self) -> None:
        self._inbox.put(None)

    # -- the engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        assert self._model is not None
        model = self._model
        batch = L.llama_batch_init(self.n_batch, 0, 1)
        mem = L.llama_get_memory(self._ctx)
        free_ids = deque(range(self.n_parallel))
        waiting: deque[_Seq] = deque()
        active: list[_Seq] = []
        try:
            while not self._stopping:
                # 1. take new work; block only when there is nothing to do
                block = not active and not waiting
                while True:
                    try:
                        item = self._inbox.get(block=block, timeout=None)
                    except queue.Empty:
                        break
                    block = False
                    if item is not None:
                        waiting.append(item)
                if self._stopping:
                    break
                # 2. drop cancelled work
                for seq in [s for s in waiting if s.handle.cancelled]:
                    waiting.remove(seq)
                    self._dequeued()
                    self._stats.cancelled_total += 1
                for seq in [s for s in active if s.handle.cancelled]:
                    self._stats.cancelled_total += 1
                    self._release(seq, active, free_ids, mem)
                # 3. admit waiting sequences into free slots
                while waiting and free_ids:
                    seq = waiting.popleft()
                    self._dequeued()
                    seq.seq_id = free_ids.popleft()
                    req = seq.handle.request
                    seq.sampler = build_sampler(req.sampling, model.n_vocab, req.max_tokens)
                    active.append(seq)
                    self._stats.requests_total += 1
                self._stats.running = len(active)
                if not active:
                    continue
                # 4. fill one batch: next token of every decoding slot, then prompt chunks
                t0 = time.perf_counter()
                n = 0
                for seq in active:
                    seq.out_index = -1
                    seq.chunk = 0
                    seq.prompt_out.clear()
                    if not seq.prefilling:
                        self._add(batch, n, seq.last_token, seq.n_past, seq.seq_id, True)
                        seq.out_index = n
                        n += 1
                for seq in active:
                    if not seq.prefilling or n >= self.n_batch:
                        continue
                    want_all = seq.handle.request.prompt_logprobs
                    take = min(len(seq.prompt) - seq.n_past, self.n_batch - n)
                    seq.chunk = take
                    for j in range(take):
                        pos = seq.n_past + j
                        last = pos == len(seq.prompt) - 1
                        self._add(batch, n, seq.prompt[pos], pos, seq.seq_id, last or want_all)
                        if want_all and not last:
                            seq.prompt_out.append((n, pos))
                        if last:
                            seq.out_index = n
                        n += 1
                batch.n_tokens = n
                rc = L.llama_decode(self._ctx, batch)
                if rc != 0:
                    err = EngineError(f"llama_decode failed with status {rc}")
                    for seq in list(active):
                        seq.handle._deliver(err)
                        self._release(seq, active, free_ids, mem)
                    continue
                # 5. advance every sequence that took part
                for seq in list(active):
                    self._after_decode(seq, active, free_ids, mem)
                self._stats.step_seconds_total += time.perf_counter() - t0
                self._stats.steps_total += 1
                self._stats.running = len(active)
                self._stats.kv_used_cells = sum(s.n_past for s in active)
        except Exception as exc:  # pragma: no cover - a bug in the engine loop
            log.exception("engine thread crashed")
            err = EngineError(f"the engine stopped: {exc}")
            for seq in [*active, *waiting]:
                seq.handle._deliver(err)
        finally:
            L.llama_batch_free(batch)

    @staticmethod
    def _add(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

    def _dequeued(self) -> None:
        with self._lock:
            self._pending -= 1

    def _after_decode(self, seq: _Seq, active: list[_Seq], free_ids: deque[int], mem: Any) -> None:
        assert self._model is not None
        model = self._model
        req = seq.handle.request
        if seq.prefilling:
            # how many prompt tokens went into this batch
            for idx, pos in seq.prompt_out:
                row = logits_row(self._ctx, idx, model.n_vocab)
                seq.prompt_lps.append(
                    token_logprob(row, seq.prompt[pos + 1], req.logprobs or 0, model.pieces)
                )
            if seq.out_index == -1:
                seq.n_past += seq.chunk
                return
            seq.n_past = len(seq.prompt)
            self._stats.prompt_tokens_total += len(seq.prompt)
            if req.max_tokens == 0:
                self._finish(seq, "length", active, free_ids, mem)
                return
        else:
            seq.n_past += 1
        if seq.out_index == -1:
            return
        token = L.llama_sampler_sample(seq.sampler, self._ctx, seq.out_index)
        seq.generated += 1
        self._stats.generated_tokens_total += 1
        if model.is_eog(token):
            self._finish(seq, "stop", active, free_ids, mem)
            return
        lp = None
        if req.logprobs is not None:
            row = logits_row(self._ctx, seq.out_index, model.n_vocab)
            lp = token_logprob(row, token, req.logprobs, model.pieces)
        text = seq.text.feed(model.pieces[token])
        if seq.text.stopped:
            if text:
                seq.handle._deliver(TokenEvent(text, None))
            self._finish(seq, "stop", active, free_ids, mem)
            return
        seq.handle._deliver(TokenEvent(text, lp))
        seq.last_token = token
        if seq.generated >= req.max_tokens or seq.n_past + 1 >= self.info.n_ctx:
            self._finish(seq, "length", active, free_ids, mem)

    def _finish(
        self, seq: _Seq, reason: str, active: list[_Seq], free_ids: deque[int], mem: Any
    ) -> None:
        req = seq.handle.request
        seq.handle._deliver(
            FinishEvent(
                reason="length" if reason == "length" else "stop",
                text=seq.text.flush(),
                prompt_tokens=len(seq.prompt),
                completion_tokens=seq.generated,
                cached_tokens=0,
                prompt_logprobs=(
                    (
                        TokenLogprob(seq.prompt[0], self.token_piece(seq.prompt[0]), None),
                        *seq.prompt_lps,
                    )
                    if req.prompt_logprobs
                    else None
                ),
            )
        )
        self._release(seq, active, free_ids, mem)

    def _release(self, seq: _Seq, active: list[_Seq], free_ids: deque[int], mem: Any) -> None:
        if seq in active:
            active.remove(seq)
        L.llama_memory_seq_rm(mem, seq.seq_id, -1, -1)
        if seq.sampler is not None:
            free_sampler(seq.sampler)
            seq.sampler = None
        free_ids.append(seq.seq_id)
        seq.handle.done = True
