"""Local models loaded on demand: the first request for a model loads it, idle ones unload.

Every local model (a chat model's engine, an embedding model's embedder) is an entry here.
``acquire`` makes sure the model is loaded and counts the request as a user of it until
``release``; the serving layer reads the loaded engines from ``engines`` / ``embedders``, which
only ever hold loaded models.

- Concurrent requests for a model that is not loaded wait for one load (a task of its own, so
  a client that leaves does not cancel a load others wait for).
- ``keep_alive`` (seconds; ``None`` = never) unloads a model idle that long.
- At most ``max_loaded`` models are loaded (or loading) at once: to load another, the least
  recently used idle one is unloaded. A model with requests in flight is never unloaded under
  them: when every loaded model is busy, the chosen one *drains* (new requests for it wait)
  and is unloaded when its last request ends, so a steady stream of requests for one model
  cannot starve another.
- Models given already loaded (``add(..., loaded=engine)``: tests, embedded use) are pinned:
  never unloaded and not counted against ``max_loaded``.

Counters survive reloads: ``stats`` adds the totals of the engines a model had before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from anyio import to_thread

from oasis.engine.base import Embedder, Engine, EngineStats, Health
from oasis.errors import ModelBusyError, ModelLoadError, ModelNotFoundError, OverloadedError

log = logging.getLogger(__name__)

State = Literal["unloaded", "loading", "loaded", "unloading"]
# the EngineStats fields that count since start (summed across reloads); the rest are gauges
_COUNTERS = tuple(f.name for f in dataclasses.fields(EngineStats) if f.name.endswith("_total"))


class Runnable(Protocol):
    """What a loader runs: an Engine or an Embedder."""

    def start(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> EngineStats: ...

    def health(self) -> Health: ...


@dataclass
class Entry:
    """One local model and its load state."""

    id: str
    kind: Literal["engine", "embedder"]
    factory: Callable[[], Runnable] | None  # None: pinned (given loaded)
    keep_alive: float | None
    state: State = "unloaded"
    obj: Runnable | None = None
    users: int = 0
    waiting: int = 0  # requests waiting to use it (its load, its drain): not idle for them
    draining: bool = False  # chosen for eviction: new requests wait until it is unloaded
    admitted: bool = False  # loading and given its room (a load waiting for room is not)
    last_used: float = 0.0
    loaded_at: float | None = None  # wall clock
    load_seconds: float | None = None  # the last load's duration
    loads: int = 0
    load_seconds_total: float = 0.0
    unloads: dict[str, int] = field(default_factory=dict)  # reason -> count
    error: str | None = None  # the last failed load's reason (cleared by a load)
    failed_at: float | None = None  # when a load last failed: loads wait ``retry_after``
    drain_for: str | None = None  # the model whose load asked this one to drain
    task: asyncio.Task[None] | None = None
    retired: EngineStats = field(default_factory=EngineStats)

    @property
    def pinned(self) -> bool:
        return self.factory is None


class ModelLoader:
    """Loads and unloads the local models (see the module docstring)."""

    def __init__(
        self,
        *,
        max_loaded: int | None = None,
        wait_seconds: float | None = None,
        retry_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_loaded = max_loaded
        self.wait_seconds = wait_seconds  # longest a request waits for its model; None: no limit
        self.retry_after = retry_after  # after a failed load, requests fail fast this long
        self.clock = clock
        self.entries: dict[str, Entry] = {}
        self.engines: dict[str, Engine] = {}
        self.embedders: dict[str, Embedder] = {}
        self._changed = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- setup ----------------------------------------------------------------------------------
    def add(
        self,
        model_id: str,
        kind: Literal["engine", "embedder"],
        factory: Callable[[], Runnable] | None = None,
        *,
        keep_alive: float | None = None,
        loaded: Runnable | None = None,
    ) -> None:
        """A model to serve: built by ``factory`` when first needed, or ``loaded`` (pinned)."""
        if (factory is None) == (loaded is None):
            raise ValueError("give a factory or a loaded engine")
        entry = Entry(model_id, kind, factory, keep_alive if factory else None)
        self.entries[model_id] = entry
        if loaded is not None:
            self._install(entry, loaded)

    async def start(self, preload: tuple[str, ...] = ()) -> None:
        """Start the pinned engines, load ``preload`` and begin unloading idle models."""
        self._changed = asyncio.Event()  # of this event loop (an app may be started again)
        self._loop = asyncio.get_running_loop()
        for entry in self.entries.values():
            if entry.pinned and entry.obj is not None:
                entry.obj.start()
        for model_id in preload:
            await self.load(model_id)
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="oasis-loader")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for entry in self.entries.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()  # it may wait for room that no one will make now
                with contextlib.suppress(BaseException):
                    await entry.task
            try:
                if entry.pinned and entry.obj is not None:
                    await to_thread.run_sync(entry.obj.close)  # stays installed: start() again
                elif entry.obj is not None and entry.state == "loaded":
                    entry.users = entry.waiting = 0  # the server is stopping
                    await self._unload(entry, "stop")
            except Exception:
                log.exception("closing the model %s failed", entry.id)

    # -- requests -------------------------------------------------------------------------------
    async def acquire(self, model_id: str) -> None:
        """Wait until the model is loaded and count the caller as its user (``release`` ends
        that). Raises ModelLoadError when the load fails."""
        entry = self._entry(model_id)
        entry.waiting += 1
        try:
            async with asyncio.timeout(self.wait_seconds):
                await self._until_loaded(entry)
        except TimeoutError:
            raise OverloadedError(
                f"The model '{model_id}' could not be loaded within {self.wait_seconds:g} s: "
                "the models loaded now are busy (max_loaded). Try again later.",
                retry_after=5,
            ) from None
        finally:
            entry.waiting -= 1
            self._notify()  # a load waiting for room counts this model's waiters
        entry.users += 1
        entry.last_used = self.clock()
        self._notify()  # a load waiting for room may now choose this model to drain

    async def _until_loaded(self, entry: Entry) -> None:
        model_id = entry.id
        while True:
            if entry.state == "loaded" and not entry.draining:
                return
            if entry.state == "unloaded":
                if (
                    entry.failed_at is not None
                    and self.clock() - entry.failed_at < self.retry_after
                ):
                    raise self._failed(entry)  # fail fast: do not evict others for it again
                entry.state = "loading"
                entry.task = asyncio.get_running_loop().create_task(
                    self._load(entry), name=f"oasis-load-{model_id}"
                )
                # its outcome is read by the waiters, if any are left
                entry.task.add_done_callback(lambda t: t.cancelled() or t.exception())
                self._notify()
            if entry.state == "loading" and entry.task is not None:
                task = entry.task
                await asyncio.wait({task})  # not shield(): a leaving client must not log its error
                if task.cancelled():
                    raise ModelLoadError(f"Loading the model '{model_id}' was cancelled.")
                if task.exception() is not None:
                    raise self._failed(entry)
                continue
            await self._wait()  # draining or unloading: try again once that is done

    def _failed(self, entry: Entry) -> ModelLoadError:
        """What a request for a model that could not be loaded hears (the reason, which may
        name server paths, is in the log, ``/admin/models`` and not in the answer)."""
        wait = self.retry_after
        if entry.failed_at is not None:
            wait = max(1.0, self.retry_after - (self.clock() - entry.failed_at))
        return ModelLoadError(
            f"The model '{entry.id}' could not be loaded; try again later (the server's log and "
            "GET /admin/models say why).",
            retry_after=max(1, round(wait)),
        )

    def release(self, model_id: str) -> None:
        entry = self._entry(model_id)
        entry.users -= 1
        entry.last_used = self.clock()
        assert entry.users >= 0, f"{model_id}: released more often than acquired"
        self._notify()

    @contextlib.asynccontextmanager
    async def use(self, model_id: str) -> Any:
        await self.acquire(model_id)
        try:
            yield
        finally:
            self.release(model_id)

    # -- admin ----------------------------------------------------------------------------------
    async def load(self, model_id: str) -> Entry:
        """Load a model now (as a request would), without keeping it busy."""
        await self.acquire(model_id)
        self.release(model_id)
        return self.entries[model_id]

    async def unload(self, model_id: str, reason: str = "admin") -> Entry:
        """Unload an idle model now. ModelBusyError when it serves requests or is pinned."""
        entry = self._entry(model_id)
        if entry.pinned:
            raise ModelBusyError(f"the model '{model_id}' was given loaded and stays loaded")
        if entry.state == "loading" and entry.task is not None:
            await asyncio.wait({entry.task})
        if entry.users:
            raise ModelBusyError(
                f"the model '{model_id}' is serving {entry.users} request(s); it unloads by "
                "itself once idle for its keep_alive"
            )
        if entry.state == "loaded":
            await self._unload(entry, reason)
        return entry

    def engine_down(self, model_id: str, reason: str) -> None:
        """An engine gave up (its supervisor saw repeated failures); called from its thread.
        The model is unloaded once its requests have ended, and the next request after
        ``retry_after`` loads a fresh one: one broken model does not stop the server."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def schedule() -> None:
            task = loop.create_task(self._replace(self._entry(model_id), reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        loop.call_soon_threadsafe(schedule)

    async def _replace(self, entry: Entry, reason: str) -> None:
        if entry.state != "loaded" or entry.pinned:
            return
        log.error(
            "the model %s is down (%s): unloading it; the next request reloads it", entry.id, reason
        )
        entry.error, entry.failed_at = reason, self.clock()
        entry.draining = True  # new requests wait for the unload (then retry_after applies)
        while entry.users and entry.state == "loaded":
            await self._wait()
        if entry.state == "loaded":
            await self._unload(entry, "failed")

    # -- state ----------------------------------------------------------------------------------
    def stats(self, model_id: str) -> EngineStats:
        """The model's counters since start (across reloads) and its gauges now."""
        entry = self._entry(model_id)
        # an engine being unloaded is already in ``retired``: counting it again would make the
        # counters jump up and back down while it closes
        live = entry.obj if entry.state != "unloading" else None
        now = live.stats() if live is not None else EngineStats()
        out = dataclasses.replace(now)
        for name in _COUNTERS:
            setattr(out, name, getattr(entry.retired, name) + getattr(now, name))
        return out

    def health(self, model_id: str) -> Health:
        entry = self._entry(model_id)
        if entry.obj is not None:
            return entry.obj.health()
        if entry.error is not None:
            return Health(False, "could not be loaded (see the server's log)")
        return Health(True, "loading" if entry.state == "loading" else "not loaded")

    def describe(self, model_id: str) -> dict[str, Any]:
        """The model's load state for ``/admin/models`` and ``/admin/backends``."""
        e = self._entry(model_id)
        now = self.clock()
        idle = now - e.last_used if e.state == "loaded" and not e.users else None
        return {
            "load_state": e.state,
            "in_use": e.users,
            "draining": e.draining,
            "pinned": e.pinned,
            "keep_alive": -1 if e.keep_alive is None else e.keep_alive,
            "idle_seconds": None if idle is None else round(idle, 3),
            "unloads_in": (
                None
                if idle is None or e.keep_alive is None
                else round(max(0.0, e.keep_alive - idle), 3)
            ),
            "loaded_at": None if e.loaded_at is None else int(e.loaded_at),
            "load_seconds": None if e.load_seconds is None else round(e.load_seconds, 3),
            "loads": e.loads,
            "unloads": dict(e.unloads),
            "error": e.error,
        }

    def loaded_count(self) -> int:
        """Models that count against ``max_loaded``: loaded, being loaded (past waiting for
        room) or being unloaded."""
        return sum(
            1
            for e in self.entries.values()
            if not e.pinned
            and (e.state in ("loaded", "unloading") or (e.state == "loading" and e.admitted))
        )

    # -- internals ------------------------------------------------------------------------------
    def _entry(self, model_id: str) -> Entry:
        try:
            return self.entries[model_id]
        except KeyError:
            raise ModelNotFoundError(model_id) from None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, timeout: float | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _load(self, entry: Entry) -> None:
        try:
            await self._make_room(entry)
            entry.admitted = True  # no await since the room was made: it is this load's
            assert entry.factory is not None
            started = self.clock()
            obj = entry.factory()
            try:
                await to_thread.run_sync(obj.start)
            except BaseException:
                with contextlib.suppress(Exception):
                    await to_thread.run_sync(obj.close)
                raise
        except Exception as exc:
            entry.state, entry.admitted = "unloaded", False
            entry.error = f"{type(exc).__name__}: {exc}"
            entry.failed_at = self.clock()
            log.error("could not load the model %s: %s", entry.id, entry.error)
            self._notify()
            raise self._failed(entry) from exc
        except BaseException:
            entry.state, entry.admitted = "unloaded", False
            self._notify()
            raise
        entry.load_seconds = self.clock() - started
        entry.loads += 1
        entry.load_seconds_total += entry.load_seconds
        entry.error = entry.failed_at = None
        entry.admitted = False
        self._install(entry, obj)
        log.info("loaded the model %s in %.2f s", entry.id, entry.load_seconds)
        self._notify()

    def _install(self, entry: Entry, obj: Runnable) -> None:
        entry.obj = obj
        entry.state = "loaded"
        entry.loaded_at = time.time()
        entry.last_used = self.clock()
        if entry.kind == "engine":
            self.engines[entry.id] = obj  # type: ignore[assignment]
        else:
            self.embedders[entry.id] = obj  # type: ignore[assignment]

    def _forget(self, entry: Entry) -> None:
        (self.engines if entry.kind == "engine" else self.embedders).pop(entry.id, None)  # type: ignore[attr-defined]

    async def _make_room(self, entry: Entry) -> None:
        """Wait until ``entry`` may load without passing ``max_loaded``, unloading the least
        recently used idle model (or draining the least recently used busy one) as needed."""
        if self.max_loaded is None:
            return
        try:
            await self._find_room(entry)
        finally:
            for other in self.entries.values():  # drains it asked for that are not needed now
                if other.drain_for == entry.id:
                    other.draining, other.drain_for = False, None
            self._notify()

    async def _find_room(self, entry: Entry) -> None:
        assert self.max_loaded is not None
        while self.loaded_count() >= self.max_loaded:
            loaded = [
                e
                for e in self.entries.values()
                if e is not entry and not e.pinned and e.state == "loaded"
            ]
            # a model just loaded for requests that have not taken it yet is not idle; a
            # draining one is idle once its last request ends (its waiters wait for that)
            idle = [e for e in loaded if e.users == 0 and (e.draining or not e.waiting)]
            if idle:
                victim = min(idle, key=lambda e: e.last_used)
                try:
                    await self._unload(victim, "evicted")
                except Exception:  # its state is "unloaded" all the same
                    log.exception("unloading the model %s failed", victim.id)
                continue
            # drain the least recently used busy one (one just loaded for requests that have
            # not taken it yet is left to them: they will, and then it can drain)
            busy = [e for e in loaded if e.users]
            if busy and not any(e.draining for e in loaded):
                victim = min(busy, key=lambda e: e.last_used)
                victim.draining, victim.drain_for = True, entry.id
                log.info("model %s drains: %s waits to load", victim.id, entry.id)
            await self._wait()

    async def _unload(self, entry: Entry, reason: str) -> None:
        obj = entry.obj
        assert obj is not None and entry.users == 0
        entry.state = "unloading"
        self._forget(entry)
        self._notify()
        try:
            retired = obj.stats()
            for name in _COUNTERS:
                setattr(entry.retired, name, getattr(entry.retired, name) + getattr(retired, name))
            await to_thread.run_sync(obj.close)
        finally:
            entry.obj = None
            entry.state = "unloaded"
            entry.draining, entry.drain_for = False, None
            entry.loaded_at = None
            entry.unloads[reason] = entry.unloads.get(reason, 0) + 1
            log.info("unloaded the model %s (%s)", entry.id, reason)
            self._notify()

    async def _reap(self) -> None:
        """Unload models idle longer than their keep_alive; sleep until the next deadline."""
        while True:
            now = self.clock()
            deadline: float | None = None
            for entry in list(self.entries.values()):
                if (
                    entry.state != "loaded"
                    or entry.users
                    or entry.waiting
                    or entry.keep_alive is None
                ):
                    continue
                due = entry.last_used + entry.keep_alive
                if due <= now:
                    try:
                        await self._unload(entry, "idle")
                    except Exception:
                        log.exception("unloading the idle model %s failed", entry.id)
                    continue
                deadline = due if deadline is None else min(deadline, due)
            await self._wait(None if deadline is None else max(0.01, deadline - self.clock()))
