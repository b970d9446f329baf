"""The llama.cpp engine: continuous batching from Python.

One thread owns the llama.cpp context. Each request is a sequence in a slot (a llama.cpp
``seq_id``). Every step fills ONE ``llama_batch`` with the next token of each decoding slot plus
chunks of pending prompts (chunked prefill: a long prompt never stalls the others' streams),
decodes once, then samples each sequence that produced logits. Asyncio handlers exchange work
and events with the thread through thread-safe queues and never block the event loop.

KV reuse: an idle slot keeps the KV of its last sequence, and a new request starts from the
longest prefix it shares with any slot (copied with ``llama_memory_seq_cp`` when it lives in
another slot), reported as ``cached_tokens``. ``n > 1`` choices of one prompt prefill it once:
the siblings follow the first and copy its KV when its prefill completes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import llama_cpp as L

from oasis.engine.base import (
    Engine,
    EngineStats,
    Event,
    FinishEvent,
    GenerationRequest,
    Health,
    ModelInfo,
    TokenEvent,
    TokenLogprob,
)
from oasis.engine.llamacpp.grammar import ConstrainedSampler, GrammarCache, Probes
from oasis.engine.llamacpp.model import LoadedModel
from oasis.engine.llamacpp.sampling import build_sampler, logits_row, token_logprob
from oasis.engine.llamacpp.slots import Seq, Slot, common_prefix
from oasis.engine.llamacpp.speculative import MAX_DRAFT, MIN_DRAFT, Lookup
from oasis.engine.textstream import TextStream
from oasis.errors import EngineError, OverloadedError

log = logging.getLogger(__name__)


# How long after an interactive request the engine keeps a slot free of background work.
INTERACTIVE_SECONDS = 10.0


class LlamaHandle:
    """A submitted request. Iterate for events; ``cancel`` frees the slot at the next step."""

    def __init__(self, engine: LlamaEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self.request = request
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.cancelled = False
        self.done = False
        # written by the engine thread, read for billing
        self.generated = 0
        self.cached_tokens = 0
        self.prompt_evaluated = 0

    def _deliver(self, item: Event | BaseException) -> None:
        """Called on the engine thread: queued, handed to the event loop at the end of the step."""
        self._engine._outbox.append((self, item))

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


def _dispatch(items: list[tuple[LlamaHandle, Event | BaseException]]) -> None:
    """On the event loop: put each event in its request's queue."""
    for handle, item in items:
        handle._queue.put_nowait(item)


class LlamaEngine(Engine):
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
        prefix_cache: bool = True,
        min_copy: int = 16,
        max_restarts: int = 3,
        restart_window: float = 60.0,
        on_fatal: Callable[[str], None] | None = None,
        jump_forward: bool = True,
        prompt_lookup: bool = False,
        draft_batch: int = 16,
    ) -> None:
        self.path = path
        self.name = name
        self.n_parallel = n_parallel
        self.n_threads = n_threads
        # every decoding slot needs a place in the batch, whatever the settings say
        self.n_batch = max(n_batch, n_parallel)
        self.max_queue = max_queue
        self.prefix_cache = prefix_cache
        # Copying another slot's KV stream costs a buffer copy: only worth it for this many
        # tokens or more.
        self.min_copy = min_copy
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        # called (on the engine thread) when the engine gives up; the server exits
        self.on_fatal = on_fatal
        # Speculative drafts (speculative.py): the grammar's forced text for structured
        # outputs; prompt lookup for requests that ask for it (or all, if on by default).
        # Drafts fill a step's batch up to ``draft_batch`` tokens at most, and only in steps
        # that read no prompt: on a CPU a few more tokens in a small batch cost little, in a
        # full one nearly as much as decoding them one by one (and at 64 tokens llama.cpp
        # changes kernels: see _fill_batch).
        self.jump_forward = jump_forward
        self.prompt_lookup = prompt_lookup
        self.draft_batch = draft_batch
        self._probes: Probes | None = None
        self._drafts_ok = False
        self._health = Health(True)
        self._down = False
        self._grammars: GrammarCache | None = None
        self._n_ctx_total = n_ctx
        self._inbox: queue.SimpleQueue[Seq | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # submitted, not yet in a slot
        # of those, background work (batch lines): it has a queue of its own, so a batch can
        # never fill the queue interactive requests wait in
        self._pending_background = 0
        self._last_interactive = -INTERACTIVE_SECONDS  # when the last non-background request came
        self._stats = EngineStats()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._model: LoadedModel | None = None
        self._ctx: Any = None
        self._mem: Any = None
        self._info: ModelInfo | None = None
        self._slots: list[Slot] = []
        self._admissions = 0
        # events of the current step, handed to the event loop(s) in one call per step
        self._outbox: list[tuple[LlamaHandle, Event | BaseException]] = []

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
        # One KV stream per slot (as llama-server does): attention only visits the slot's own
        # cells. A unified buffer would make every token attend over all slots' cells, masked,
        # which costs as much as the weights themselves at 16 streams of a small model.
        params.kv_unified = False
        params.no_perf = True
        ctx = L.llama_init_from_model(model.model, params)
        if not ctx:
            model.free()
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self._model, self._ctx = model, ctx
        self._grammars = GrammarCache(model.vocab)
        self._probes = Probes(
            model.pieces, lambda c: model.tokenize(c, add_special=False, parse_special=False)
        )
        # a recurrent state cannot drop the positions of rejected drafts
        self._drafts_ok = not (
            L.llama_model_is_recurrent(model.model) or L.llama_model_is_hybrid(model.model)
        )
        self._mem = L.llama_get_memory(ctx)
        self._n_ctx_total = L.llama_n_ctx(ctx)
        self._info = ModelInfo(
            name=self.name,
            n_ctx=min(self._n_ctx_total // self.n_parallel, model.n_ctx_train),
            n_vocab=model.n_vocab,
            chat_template=model.chat_template,
            bos_token=model.token_text(model.bos_id),
            eos_token=model.token_text(model.eos_id),
            add_bos=model.add_bos,
            max_sequences=self.n_parallel + self.max_queue,
        )
        self._slots = [Slot(i) for i in range(self.n_parallel)]
        self._stats.kv_total_cells = self._n_ctx_total
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()
        log.info(
            "loaded %s (%s): ctx %d = %d slots x %d, %d threads, batch %d",
            self.name,
            model.description,
            self._n_ctx_total,
            self.n_parallel,
            self._info.n_ctx,
            self.n_threads,
            self.n_batch,
        )

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():  # still inside a decode: freeing now would crash
                log.error("engine %s: the engine thread did not stop; not freeing", self.name)
                return
        if self._ctx is not None:
            L.llama_free(self._ctx)
            self._ctx = None
        if self._grammars is not None:
            self._grammars.close()
            self._grammars = None
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

    def check_grammar(self, gbnf: str) -> None:
        """Raise GrammarError unless llama.cpp can build a sampler from this grammar. The
        compiled grammar is kept: the request's sequences clone it instead of parsing again."""
        assert self._grammars is not None
        self._grammars.prepare(gbnf)

    def token_piece(self, token: int) -> bytes:
        assert self._model is not None
        return self._model.pieces[token] if 0 <= token < self._model.n_vocab else b""

    def stats(self) -> EngineStats:
        with self._lock:
            self._stats.waiting = self._pending
        return self._stats

    def health(self) -> Health:
        thread = self._thread
        if self._health.ok and thread is not None and not thread.is_alive() and not self._stopping:
            return Health(False, "engine thread not running")
        return self._health

    def submit(self, request: GenerationRequest) -> LlamaHandle:
        assert self._model is not None
        handle = LlamaHandle(self, request)
        prompt = list(request.prompt) or [self._model.bos_id]
        seq = Seq(handle=handle, prompt=prompt, text=TextStream(request.stop))
        with self._lock:
            thread = self._thread
            if self._down or (thread is not None and not thread.is_alive()):
                raise EngineError("The engine is down: " + self._health.detail)
            free = self.n_parallel - self._stats.running
            if request.background:
                if self._pending_background >= self.max_queue:
                    raise OverloadedError(
                        "The server's queue for background work is full. Retry shortly.",
                        retry_after=1,
                    )
                self._pending_background += 1
            elif self._pending - self._pending_background >= self.max_queue + max(0, free):
                raise OverloadedError(
                    "The server is at capacity: all slots are busy and the wait queue is full. "
                    "Retry shortly.",
                    retry_after=1,
                )
            self._pending += 1
            if not request.background:
                self._last_interactive = time.monotonic()
            self._inbox.put(seq)
        return handle

    def _wake(self) -> None:
        self._inbox.put(None)

    # -- the engine thread -------------------------------------------------------------------
    def _run(self) -> None:
        """The engine thread, supervised: a failure of the loop fails the requests it held
        (500s in OpenAI's shape), resets the KV cache and slots, and starts the loop again.
        More than ``max_restarts`` failures within ``restart_window`` seconds leave the engine
        down: it refuses new work, reports unhealthy and calls ``on_fatal`` (the server exits
        loudly rather than look healthy while answering nothing)."""
        batch = L.llama_batch_init(self.n_batch, 0, 1)
        waiting: deque[Seq] = deque()
        active: list[Seq] = []
        failures: deque[float] = deque()
        try:
            while not self._stopping:
                try:
                    self._loop(batch, waiting, active)
                    return
                except Exception as exc:
                    log.exception("engine %s: the engine loop failed", self.name)
                    self._health = Health(False, f"engine loop failed: {type(exc).__name__}")
                    now = time.monotonic()
                    failures.append(now)
                    while failures and now - failures[0] > self.restart_window:
                        failures.popleft()
                    if len(failures) > self.max_restarts:
                        self._go_down(
                            f"the engine failed {len(failures)} times in "
                            f"{self.restart_window:g} s (last: {type(exc).__name__})"
                        )
                        if self.on_fatal is not None:
                            self.on_fatal(f"engine {self.name}: {self._health.detail}")
                        self._recover(waiting, active, exc)
                        return
                    self._stats.restarts_total += 1
                    self._recover(waiting, active, exc)
                    log.warning("engine %s: restarted after a failure", self.name)
        except BaseException as exc:  # the supervisor itself failed: down, loudly
            log.critical("engine %s: the engine thread failed", self.name, exc_info=True)
            self._go_down(f"the engine thread failed ({type(exc).__name__})")
            for seq in [*active, *waiting]:
                seq.handle._deliver(EngineError("The engine is down."))
            if self.on_fatal is not None:
                self.on_fatal(f"engine {self.name}: {self._health.detail}")
            if not isinstance(exc, Exception):
                raise
        finally:
            self._flush_outbox()
            L.llama_batch_free(batch)

    def _loop(self, batch: Any, waiting: deque[Seq], active: list[Seq]) -> None:
        while not self._stopping:
            self._flush_outbox()
            self._take_work(waiting, block=not active and not waiting)
            if self._stopping:
                break
            self._drop_cancelled(waiting, active)
            self._admit(waiting, active)
            self._stats.running = len(active)
            if not active:
                continue
            t0 = time.perf_counter()
            n = self._fill_batch(batch, active)
            if n:
                rc = L.llama_decode(self._ctx, batch)
                if rc != 0:
                    raise EngineError(f"llama_decode failed ({rc})")
                for seq in list(active):
                    if seq in active:
                        self._guarded(seq, active, self._after_decode)
            self._stats.step_seconds_total += time.perf_counter() - t0
            self._stats.steps_total += 1
            self._stats.running = len(active)
            self._stats.kv_used_cells = sum(s.kv_len() for s in self._slots)

    def _guarded(self, seq: Seq, active: list[Seq], work: Any) -> None:
        """Run one sequence's work; an exception fails that request alone (its slot is
        cleared), the others go on."""
        try:
            work(seq, active)
        except Exception:
            log.exception("engine %s: a request failed", self.name)
            seq.handle._deliver(EngineError("The engine failed on this request."))
            # its followers (if it was still prefilling) go on by themselves (_release)
            self._release(seq, active, keep_kv=False)

    def _recover(self, waiting: deque[Seq], active: list[Seq], exc: Exception) -> None:
        """After a loop failure: fail every held request, clear the KV cache and the slots."""
        for seq in [*active, *waiting]:
            # one error object per request: the route adds that request's own headers to it
            seq.handle._deliver(EngineError("The engine failed and was restarted; retry."))
            seq.handle.done = True
            try:
                self._free_sampler(seq)
            except Exception:  # pragma: no cover - best effort while recovering
                log.exception("engine %s: freeing a sampler failed", self.name)
        with self._lock:
            self._pending -= len(waiting)
            self._pending_background -= sum(s.handle.request.background for s in waiting)
        waiting.clear()
        active.clear()
        L.llama_memory_clear(self._mem, True)
        for slot in self._slots:
            slot.seq = None
            slot.cached = []
        self._stats.running = 0
        if not self._down:
            self._health = Health(True)
        self._flush_outbox()  # the failed requests hear of it once the engine is ready again

    def _go_down(self, reason: str) -> None:
        """Refuse new work from now on and fail what is still in the inbox."""
        log.critical("engine %s is down: %s", self.name, reason)
        with self._lock:
            self._health = Health(False, f"engine down: {reason}")
            self._down = True
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._dequeued(item)
                item.handle._deliver(EngineError("The engine is down."))

    def _flush_outbox(self) -> None:
        """One wake-up of each event loop per step, however many tokens the step made."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[LlamaHandle, Any]]] = {}
        for handle, item in self._outbox:
            by_loop.setdefault(handle._loop, []).append((handle, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_dispatch, items)
            except RuntimeError:  # that loop is closed: nobody is listening
                for handle, _ in items:
                    handle.cancelled = True

    def _take_work(self, waiting: deque[Seq], *, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is not None:
                waiting.append(item)

    def _dequeued(self, seq: Seq) -> None:
        with self._lock:
            self._pending -= 1
            if seq.handle.request.background:
                self._pending_background -= 1

    def _drop_cancelled(self, waiting: deque[Seq], active: list[Seq]) -> None:
        for seq in [s for s in waiting if s.handle.cancelled]:
            waiting.remove(seq)
            self._dequeued(seq)
            seq.handle.done = True
            self._stats.cancelled_total += 1
        for seq in [s for s in active if s.handle.cancelled]:
            self._stats.cancelled_total += 1
            self._release(seq, active)

    def _admit(self, waiting: deque[Seq], active: list[Seq]) -> None:
        assert self._model is not None
        free = [s for s in self._slots if s.seq is None]
        while waiting and free:
            seq = self._next_waiting(waiting, active, len(free))
            if seq is None:
                break
            self._dequeued(seq)
            try:
                self._make_sampler(seq)
            except Exception:
                log.exception("engine %s: could not build a request's sampler", self.name)
                self._free_sampler(seq)
                seq.handle._deliver(EngineError("The engine could not sample this request."))
                seq.handle.done = True
                continue
            leader = None
            if not seq.wants_prompt_logprobs:
                leader = next(
                    (
                        a
                        for a in active
                        if a.leader is None and a.prefilling and a.prompt == seq.prompt
                    ),
                    None,
                )
            slot = self._pick_slot(free, seq.prompt)
            free.remove(slot)
            # active (so a failure in the KV work below is recovered from) but the slot's own
            # kept KV still visible to _reuse_prefix: slot.seq is set after it
            seq.slot = slot
            active.append(seq)
            self._stats.requests_total += 1
            if leader is not None:
                L.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.cached = []
                seq.leader = leader
                leader.followers.append(seq)
            else:
                self._reuse_prefix(seq, slot)
            slot.seq = seq

    def _next_waiting(self, waiting: deque[Seq], active: list[Seq], free: int) -> Seq | None:
        """The next sequence to admit: the first interactive one, else the first background
        one, unless it would take the last free slot while interactive requests are about
        (one came in the last ``INTERACTIVE_SECONDS``): that slot is kept for them, so a live
        request never waits for a batch line to finish. Batches alone use every slot."""
        for seq in waiting:
            if not seq.handle.request.background:
                waiting.remove(seq)
                return seq
        recent = time.monotonic() - self._last_interactive < INTERACTIVE_SECONDS
        if free <= 1 and self.n_parallel > 1 and recent:
            return None
        return waiting.popleft()

    def _make_sampler(self, seq: Seq) -> None:
        model = self._model
        assert model is not None and self._grammars is not None and self._probes is not None
        req = seq.handle.request
        seq.sampler = build_sampler(req.sampling, model.n_vocab, req.max_tokens)
        if req.grammar is not None:
            # compiled by serving (check_grammar) before submit: cloned, not parsed again
            grammar = self._grammars.clone(req.grammar)
            seq.sampler = ConstrainedSampler(seq.sampler, grammar, model.n_vocab, self._probes)
        lookup = self.prompt_lookup if req.prompt_lookup is None else req.prompt_lookup
        seq.lookup = Lookup() if lookup else None

    @staticmethod
    def _free_sampler(seq: Seq) -> None:
        if seq.sampler is not None:
            seq.sampler.free()
        seq.sampler = None

    def _pick_slot(self, free: list[Slot], prompt: list[int]) -> Slot:
        """A free slot for ``prompt``.

        A slot whose kept conversation the prompt continues (it shares at least 90% of the
        kept tokens) wins; otherwise the least recently used slot, so that a shared system
        prompt alone never evicts a conversation that another free slot could have spared.
        """
        self._admissions += 1
        best = min(free, key=lambda s: s.last_used)
        if self.prefix_cache:
            n, hit = max(
                ((common_prefix(s.cached, prompt), s) for s in free), key=lambda pair: pair[0]
            )
            if n > 0 and 10 * n >= 9 * len(hit.cached):
                best = hit
        best.last_used = self._admissions
        return best

    def _reuse_prefix(self, seq: Seq, slot: Slot) -> None:
        """Start from the longest prefix of the prompt whose KV any slot holds.

        The slot's own kept KV is reused in place; another slot's is copied (llama.cpp copies
        a whole per-slot KV stream, then the tail past the prefix is dropped).
        """
        best, reuse = slot, 0
        if self.prefix_cache and not seq.wants_prompt_logprobs:
            for other in self._slots:
                n = other.shared_prefix(seq.prompt)
                if n > reuse or (n == reuse and other is slot):
                    best, reuse = other, n
        reuse = min(reuse, len(seq.prompt) - 1)  # the last prompt token is decoded for logits
        if reuse > 0 and best is not slot and reuse < self.min_copy:
            best, reuse = slot, min(common_prefix(slot.cached, seq.prompt), reuse)
        if reuse > 0 and best is not slot:
            self._copy_kv(best.seq_id, slot.seq_id)
        L.llama_memory_seq_rm(self._mem, slot.seq_id, reuse if reuse > 0 else -1, -1)
        slot.cached = []
        seq.n_past = reuse
        seq.cached_tokens = seq.handle.cached_tokens = reuse
        seq.handle.prompt_evaluated = reuse
        if reuse > 0:
            self._stats.prefix_cache_hits_total += 1
            self._stats.cached_tokens_total += reuse

    def _copy_kv(self, src: int, dst: int) -> None:
        """Copy one slot's whole KV stream into another's (the copy runs at the next decode)."""
        L.llama_memory_seq_rm(self._mem, dst, -1, -1)
        L.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        self._stats.kv_copies_total += 1

    def _fill_batch(self, batch: Any, active: list[Seq]) -> int:
        """Next token of every decoding sequence first, then prompt chunks in arrival order.
        While an interactive prompt is being read, background sequences sit the step out:
        the interactive request's first token comes as fast as on an idle engine."""
        n = 0
        hold = any(
            s.prefilling and s.leader is None and not s.handle.request.background for s in active
        ) and any(s.handle.request.background for s in active)
        # the sequences in this step (a follower waits for its leader's prompt)
        taking = [
            s for s in active if s.leader is None and not (hold and s.handle.request.background)
        ]
        decoding = [s for s in taking if not s.prefilling]
        reading = [s for s in taking if s.prefilling]
        # Drafts only in small steps without prompt chunks: llama.cpp computes a batch of 64
        # tokens or more with other matrix kernels (logits differ by up to a whole unit here),
        # so a drafted token decoded in such a batch could be sampled differently than when
        # decoded on its own. Below that, rows come out bit for bit the same as long as the
        # sequence's context fits in 256 KV cells; past it they round differently too
        # (bench/batch_shapes.py, README "Speculative decoding").
        spare = 0 if reading else min(self.draft_batch, self.n_batch) - len(decoding)
        for seq in active:
            seq.out_index = -1
            seq.chunk = 0
            seq.prompt_out.clear()
            seq.draft = []
        for seq in decoding:
            assert seq.slot is not None
            self._add(batch, n, seq.tokens[seq.n_past], seq.n_past, seq.slot.seq_id, True)
            seq.out_index = n
            n += 1
            if spare > 0 and self._drafts_ok:
                try:
                    seq.draft = self._draft(seq, spare)
                except Exception:  # a draft is only ever an optimisation
                    log.exception("engine %s: drafting failed", self.name)
                    seq.draft = []
                spare -= len(seq.draft)
                for j, token in enumerate(seq.draft):
                    self._add(batch, n, token, seq.n_past + 1 + j, seq.slot.seq_id, True)
                    n += 1
        for seq in reading:
            if n >= self.n_batch:
                break
            assert seq.slot is not None
            want_all = seq.wants_prompt_logprobs
            take = min(len(seq.prompt) - seq.n_past, self.n_batch - n)
            seq.chunk = take
            for j in range(take):
                pos = seq.n_past + j
                last = pos == len(seq.prompt) - 1
                self._add(batch, n, seq.prompt[pos], pos, seq.slot.seq_id, last or want_all)
                if want_all and not last:
                    seq.prompt_out.append((n, pos))
                if last:
                    seq.out_index = n
                n += 1
        batch.n_tokens = n
        return n

    def _draft(self, seq: Seq, spare: int) -> list[int]:
        """Guessed next tokens for ``seq`` (at most ``spare``): the grammar's forced text, else
        a prompt-lookup match, else none."""
        assert self._model is not None
        req = seq.handle.request
        limit = min(
            spare,
            MAX_DRAFT,
            req.max_tokens - seq.generated - 1,
            self.info.n_ctx - len(seq.tokens) - 2,
        )
        if limit < MIN_DRAFT:
            return []
        limit = min(limit, seq.budget.allowed())
        if limit < MIN_DRAFT:
            return []
        sampler = seq.sampler
        if self.jump_forward and isinstance(sampler, ConstrainedSampler):
            text = sampler.forced_text(4 * limit)
            # parse_special: a forced "<tool_call>" is the special token the model writes.
            # The last token is dropped: it may be the start of a longer one the model would
            # write across the point where the grammar leaves a choice.
            tokens = self._model.tokenize(text, add_special=False, parse_special=True)[:-1]
            if len(tokens) >= MIN_DRAFT:
                return tokens[:limit]
        if seq.lookup is not None:
            return seq.lookup.draft(seq.tokens, limit)
        return []

    @staticmethod
    def _add(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

    def _after_decode(self, seq: Seq, active: list[Seq]) -> None:
        assert self._model is not None
        if seq.leader is not None:
            return
        if seq.prefilling:
            req = seq.handle.request
            for idx, pos in seq.prompt_out:
                row = logits_row(self._ctx, idx, self._model.n_vocab)
                seq.prompt_lps.append(
                    token_logprob(row, seq.prompt[pos + 1], req.logprobs or 0, self._model.pieces)
                )
            if seq.out_index == -1:
                seq.n_past += seq.chunk
                seq.handle.prompt_evaluated = seq.n_past
                return
            seq.n_past = seq.handle.prompt_evaluated = len(seq.prompt)
            self._stats.prompt_tokens_total += len(seq.prompt) - seq.cached_tokens
            followers, seq.followers = seq.followers, []
            for f in followers:  # each on its own: one that fails fails alone
                self._guarded(f, active, lambda s, a, leader=seq: self._follow(s, leader, a))
            if req.max_tokens == 0:
                self._finish(seq, "length", active)
                return
            self._sample(seq, seq.out_index, active)
        elif seq.out_index != -1:
            self._verify(seq, active)

    def _verify(self, seq: Seq, active: list[Seq]) -> None:
        """Sample the step's token and, while the draft agrees with what is sampled, the
        drafted positions after it; the KV of the drafted tokens not kept is dropped."""
        draft, seq.draft = seq.draft, []
        kept = 0
        for j in range(len(draft) + 1):
            seq.n_past += 1  # the token decoded at this position is now in the KV
            token = self._sample(seq, seq.out_index + j, active)
            if token is None or j == len(draft) or token != draft[j]:
                break
            kept += 1
        if not draft:
            return
        self._stats.draft_tokens_total += len(draft)
        self._stats.draft_accepted_total += kept
        seq.budget.feedback(len(draft), kept)
        if seq.slot is not None and kept < len(draft):
            L.llama_memory_seq_rm(self._mem, seq.slot.seq_id, seq.n_past, -1)

    def _follow(self, seq: Seq, leader: Seq, active: list[Seq]) -> None:
        """The leader's prompt is in its KV: share it and sample from the same logits."""
        assert seq.slot is not None and leader.slot is not None
        self._copy_kv(leader.slot.seq_id, seq.slot.seq_id)
        seq.leader = None
        seq.n_past = seq.handle.prompt_evaluated = len(seq.prompt)
        seq.cached_tokens = seq.handle.cached_tokens = leader.cached_tokens
        if seq.handle.request.max_tokens == 0:
            self._finish(seq, "length", active)
            return
        self._sample(seq, leader.out_index, active)

    def _sample(self, seq: Seq, index: int, active: list[Seq]) -> int | None:
        """Sample the token at ``index`` and send it; None if the sequence ended there."""
        assert self._model is not None and seq.sampler is not None
        model = self._model
        req = seq.handle.request
        token = seq.sampler.sample(self._ctx, index)
        seq.generated += 1
        seq.handle.generated = seq.generated
        self._stats.generated_tokens_total += 1
        if model.is_eog(token):
            self._finish(seq, "stop", active)
            return None
        lp = None
        if req.logprobs is not None:
            row = logits_row(self._ctx, index, model.n_vocab)
            lp = token_logprob(row, token, req.logprobs, model.pieces)
        text = seq.text.feed(model.pieces[token])
        if seq.text.stopped:
            if text:
                seq.handle._deliver(TokenEvent(text, None))
            self._finish(seq, "stop", active)
            return None
        seq.handle._deliver(TokenEvent(text, lp))
        seq.tokens.append(token)
        if seq.generated >= req.max_tokens or seq.n_past + 1 >= self.info.n_ctx:
            self._finish(seq, "length", active)
            return None
        return token

    def _finish(self, seq: Seq, reason: str, active: list[Seq]) -> None:
        prompt_lps = None
        if seq.wants_prompt_logprobs:
            first = TokenLogprob(seq.prompt[0], self.token_piece(seq.prompt[0]), None)
            prompt_lps = (first, *seq.prompt_lps)
        seq.handle._deliver(
            FinishEvent(
                reason="length" if reason == "length" else "stop",
                text=seq.text.flush(),
                prompt_tokens=len(seq.prompt),
                completion_tokens=seq.generated,
                cached_tokens=seq.cached_tokens,
                prompt_logprobs=prompt_lps,
            )
        )
        self._release(seq, active)

    def _release(self, seq: Seq, active: list[Seq], *, keep_kv: bool = True) -> None:
        """Free the slot; its KV stays for prefix reuse unless ``keep_kv`` is false."""
        if seq in active:
            active.remove(seq)
        if seq.leader is not None:
            if seq in seq.leader.followers:
                seq.leader.followers.remove(seq)
            seq.leader = None
        for f in seq.followers:  # the leader went away before its prefill completed
            f.leader = None
            f.n_past = 0
        seq.followers = []
        slot = seq.slot
        if slot is not None:
            if keep_kv and self.prefix_cache and not seq.prefilling:
                slot.cached = seq.tokens[: seq.n_past]
                # drafted positions past the kept tokens
                L.llama_memory_seq_rm(self._mem, slot.seq_id, seq.n_past, -1)
            else:
                L.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.cached = []
            slot.seq = None
            seq.slot = None
        self._free_sampler(seq)
        seq.handle.done = True
