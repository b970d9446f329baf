"""Several local models loaded on demand: one load for many waiters, idle unload, LRU eviction
under max_loaded that never unloads a model under its requests, the admin API and /metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from oasis.config import ModelConfig, Settings, parse_duration
from oasis.engine.base import EngineStats, Health
from oasis.engine.fake import FakeEngine
from oasis.errors import ConfigError, ModelBusyError, ModelLoadError, OverloadedError
from oasis.models.loader import ModelLoader
from oasis.models.registry import keep_alive
from oasis.server.app import create_app

ADMIN = "sk-admin-loader"


class Probe:
    """A stand-in engine recording its life: started, closed, and requests running at close."""

    def __init__(
        self, log: list[str], name: str, fail: bool = False, gate: threading.Event | None = None
    ) -> None:
        self.log, self.name, self.fail, self.gate = log, name, fail, gate
        self.running = 0

    def start(self) -> None:
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail:
            raise RuntimeError("bad file")
        self.log.append(f"start {self.name}")

    def close(self) -> None:
        self.log.append(f"close {self.name} running={self.running}")

    def stats(self) -> EngineStats:
        return EngineStats(requests_total=3)

    def health(self) -> Health:
        return Health(True)


def test_concurrent_requests_wait_for_one_load() -> None:
    log: list[str] = []
    gate = threading.Event()
    built: list[Probe] = []

    def factory() -> Probe:
        built.append(Probe(log, "a", gate=gate))
        return built[-1]

    async def scenario() -> None:
        loader = ModelLoader(max_loaded=2)
        loader.add("a", "engine", factory, keep_alive=None)
        await loader.start()
        waiters = [asyncio.create_task(loader.acquire("a")) for _ in range(10)]
        await asyncio.sleep(0.05)
        assert loader.describe("a")["load_state"] == "loading"
        assert not any(w.done() for w in waiters)
        gate.set()
        await asyncio.gather(*waiters)
        assert len(built) == 1 and loader.entries["a"].users == 10
        assert loader.engines["a"] is built[0]  # type: ignore[comparison-overlap]
        for _ in range(10):
            loader.release("a")
        # a waiter that leaves (its client went away) does not cancel the load others wait for
        await loader.unload("a")
        gate.clear()
        leaving = asyncio.create_task(loader.acquire("a"))
        staying = asyncio.create_task(loader.acquire("a"))
        await asyncio.sleep(0.05)
        leaving.cancel()
        gate.set()
        await staying
        assert loader.describe("a")["load_state"] == "loaded" and loader.entries["a"].users == 1
        loader.release("a")
        await loader.close()
        assert log == ["start a", "close a running=0", "start a", "close a running=0"]

    asyncio.run(scenario())


def test_a_failed_load_fails_its_waiters_and_the_next_request_tries_again() -> None:
    log: list[str] = []
    attempts: list[int] = []

    def factory() -> Probe:
        attempts.append(1)
        return Probe(log, "a", fail=len(attempts) == 1)

    async def scenario() -> None:
        loader = ModelLoader(retry_after=0)
        loader.add("a", "engine", factory, keep_alive=None)
        await loader.start()
        results = await asyncio.gather(
            *(loader.acquire("a") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, ModelLoadError) for r in results)
        assert len({id(r) for r in results}) == 3  # each waiter its own error
        assert "bad file" in str(loader.describe("a")["error"]) and loader.entries["a"].users == 0
        health = loader.health("a")
        assert not health.ok and "could not be loaded" in health.detail
        await loader.acquire("a")  # the second load works
        assert loader.health("a").ok and len(attempts) == 2
        loader.release("a")
        await loader.close()

    asyncio.run(scenario())


def test_idle_models_unload_after_keep_alive_and_counters_survive() -> None:
    log: list[str] = []

    async def scenario() -> None:
        loader = ModelLoader()
        loader.add("a", "engine", lambda: Probe(log, "a"), keep_alive=0.2)
        loader.add("b", "engine", lambda: Probe(log, "b"), keep_alive=None)  # -1: never
        await loader.start(preload=("a", "b"))
        await loader.acquire("a")
        await asyncio.sleep(0.5)  # busy: a request holds it, whatever its keep_alive
        assert loader.describe("a")["load_state"] == "loaded"
        loader.release("a")
        for _ in range(200):  # unloads once idle for 0.2 s
            if loader.describe("a")["load_state"] == "unloaded":
                break
            await asyncio.sleep(0.05)
        assert loader.describe("a")["load_state"] == "unloaded"
        assert loader.describe("a")["unloads"] == {"idle": 1}
        assert "a" not in loader.engines
        assert loader.stats("a").requests_total == 3  # the unloaded engine's counters stay
        await loader.acquire("a")
        loader.release("a")
        assert loader.stats("a").requests_total == 6
        assert loader.describe("b")["load_state"] == "loaded"
        await loader.close()

    asyncio.run(scenario())


def test_eviction_never_unloads_a_model_under_its_requests() -> None:
    log: list[str] = []

    async def scenario() -> None:
        loader = ModelLoader(max_loaded=1)
        loader.add("a", "engine", lambda: Probe(log, "a"), keep_alive=None)
        loader.add("b", "engine", lambda: Probe(log, "b"), keep_alive=None)
        await loader.start()
        await loader.acquire("a")
        b = asyncio.create_task(loader.acquire("b"))
        await asyncio.sleep(0.1)
        assert not b.done()  # waits: "a" serves a request
        assert loader.describe("a")["draining"] is True
        a2 = asyncio.create_task(loader.acquire("a"))  # a new request for a draining model waits
        await asyncio.sleep(0.05)
        assert not a2.done() and loader.entries["a"].users == 1
        loader.release("a")
        await b  # "a" unloaded once idle, then "b" loaded
        assert log == ["start a", "close a running=0", "start b"]
        assert loader.describe("a")["unloads"] == {"evicted": 1}
        loader.release("b")
        await a2  # and "a" again, evicting the idle "b"
        assert log[-2:] == ["close b running=0", "start a"]
        with pytest.raises(ModelBusyError, match="serving 1 request"):
            await loader.unload("a")
        loader.release("a")
        await loader.unload("a")
        assert loader.describe("a")["unloads"] == {"evicted": 1, "admin": 1}
        await loader.close()

    asyncio.run(scenario())


def test_keep_alive_durations() -> None:
    assert parse_duration("5m") == 300 and parse_duration("30s") == 30
    assert parse_duration("1.5h") == 5400 and parse_duration("-1") == -1
    assert parse_duration(" 250ms ") == 0.25 and parse_duration(7) == 7
    for bad in ("soon", "5 minutes", "m", ""):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="not a boolean"):
        parse_duration(True)
    for bad in ("nan", "inf", "-inf", "1e309s"):
        with pytest.raises(ValueError):
            Settings(keep_alive=bad)
    assert keep_alive(Settings(keep_alive="-0")) is None  # negative: never, -0 included
    assert keep_alive(Settings(keep_alive="-1")) is None
    assert keep_alive(Settings(), 0.0) == 0.0  # 0: unload as soon as idle


# -- through the server ------------------------------------------------------------------------

def two_model_app(tmp: Path, **options: Any) -> Any:
    models = [
        ModelConfig(id="model-a", path=tmp / "a.gguf", aliases=["gpt-3.5-turbo"]),
        ModelConfig(id="model-b", path=tmp / "b.gguf", keep_alive=options.pop("b_keep", None)),
        ModelConfig(id="remote", backend="upstream", replicas=["http://127.0.0.1:9/v1"]),
    ]
    settings = Settings(engine="fake", api_key=ADMIN, data_dir=tmp, models=models,
                        embeddings=False, **options)
    return create_app(settings)


@pytest.fixture
def lifecycle(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each fake engine's start and close, and its running sequences at close."""
    events: list[str] = []
    real_start, real_close = FakeEngine.start, FakeEngine.close

    def start(self: FakeEngine) -> None:
        events.append(f"start {self.info.name}")
        real_start(self)

    def close(self: FakeEngine) -> None:
        events.append(f"close {self.info.name} running={self.stats().running}")
        real_close(self)

    real_init = FakeEngine.__init__

    def init(self: FakeEngine, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.delay = 0.002  # every engine, each load's: generations overlap the switches

    monkeypatch.setattr(FakeEngine, "start", start)
    monkeypatch.setattr(FakeEngine, "close", close)
    monkeypatch.setattr(FakeEngine, "__init__", init)
    return events


@pytest.fixture
def http(tmp_path: Path, lifecycle: list[str]) -> Iterator[TestClient]:
    app = two_model_app(tmp_path, max_loaded=1)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield client


def chat(http: TestClient, model: str, **extra: Any) -> Any:
    return http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def test_every_model_is_listed_and_the_first_is_loaded_at_start(
    http: TestClient, lifecycle: list[str]
) -> None:
    ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert {"model-a", "model-b", "remote"} <= set(ids)
    states = {m["id"]: m for m in http.get("/admin/models").json()["data"]}
    assert set(states) == {"model-a", "model-b"}  # the upstream model does not load here
    assert states["model-a"]["load_state"] == "loaded"
    assert states["model-b"]["load_state"] == "unloaded"
    assert lifecycle == ["start model-a"]


def test_requests_switch_models_and_max_loaded_evicts_the_idle_one(
    http: TestClient, lifecycle: list[str]
) -> None:
    client = OpenAI(base_url="http://testserver/v1", api_key=ADMIN, http_client=http,
                    max_retries=0)
    for model in ("model-b", "model-a", "gpt-3.5-turbo", "model-b"):
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content and answer.model == model
    assert lifecycle == [
        "start model-a", "close model-a running=0", "start model-b",
        "close model-b running=0", "start model-a",
        "close model-a running=0", "start model-b",
    ]
    states = {m["id"]: m for m in http.get("/admin/models").json()["data"]}
    assert states["model-a"]["unloads"] == {"evicted": 2} and states["model-a"]["loads"] == 2
    assert sum(s["load_state"] == "loaded" for s in states.values()) == 1
    metrics = http.get("/metrics").text
    assert 'oasis_model_loaded{model="model-b"} 1.0' in metrics
    assert 'oasis_model_loaded{model="model-a"} 0.0' in metrics
    assert 'oasis_model_loads_total{model="model-a"} 2.0' in metrics
    assert 'oasis_model_unloads_total{model="model-a",reason="evicted"} 2.0' in metrics
    assert 'oasis_requests_total{model="model-a"} 2.0' in metrics  # across its two loads


def test_concurrent_requests_for_two_models_with_max_loaded_one(
    tmp_path: Path, lifecycle: list[str]
) -> None:
    """The issue's test: no request fails, none sees its model unloaded mid-generation, and
    never are two models loaded at once."""
    app = two_model_app(tmp_path, max_loaded=1)
    state = app.state.oasis
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        statuses: list[int] = []
        texts: list[str] = []
        most_loaded: list[int] = []  # models holding memory: loaded, or being unloaded

        def one(i: int) -> None:
            model = ("model-a", "model-b")[i % 2]
            stream = i % 3 == 0
            r = chat(http, model, stream=stream, max_tokens=12)
            statuses.append(r.status_code)
            texts.append(r.text)
            most_loaded.append(sum(
                e.state in ("loaded", "unloading") for e in state.loader.entries.values()))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 24, texts
        assert all(n <= 1 for n in most_loaded)
        assert all("[DONE]" in t or '"finish_reason"' in t for t in texts)
    closes = [e for e in lifecycle if e.startswith("close")]
    assert closes and all(e.endswith("running=0") for e in closes), lifecycle
    # never two started without a close between them
    live = 0
    for e in lifecycle:
        live += 1 if e.startswith("start") else -1
        assert live <= 1, lifecycle


def test_a_stream_holds_its_model_until_it_ends(tmp_path: Path, lifecycle: list[str]) -> None:
    app = two_model_app(tmp_path, max_loaded=1)
    state = app.state.oasis
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        state.loader.engines["model-a"].delay = 0.05
        order: list[str] = []

        def slow_stream() -> None:
            with http.stream("POST", "/v1/chat/completions", json={
                "model": "model-a", "messages": [{"role": "user", "content": "hi"}],
                "stream": True, "max_tokens": 10}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: [DONE]"):
                        order.append("a done")

        t = threading.Thread(target=slow_stream)
        t.start()
        while state.loader.entries["model-a"].users == 0:
            time.sleep(0.01)
        r = chat(http, "model-b")
        order.append("b answered")
        t.join()
        assert r.status_code == 200 and order == ["a done", "b answered"]
    assert lifecycle[:3] == ["start model-a", "close model-a running=0", "start model-b"]


def test_idle_unload_through_the_server(tmp_path: Path, lifecycle: list[str]) -> None:
    app = two_model_app(tmp_path, b_keep=0.3, max_loaded=2)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        assert chat(http, "model-b").status_code == 200
        for _ in range(200):
            b = next(m for m in http.get("/admin/models").json()["data"] if m["id"] == "model-b")
            if b["load_state"] == "unloaded":
                break
            time.sleep(0.05)
        assert b["load_state"] == "unloaded" and b["unloads"] == {"idle": 1}
        a = next(m for m in http.get("/admin/models").json()["data"] if m["id"] == "model-a")
        assert a["load_state"] == "loaded" and a["keep_alive"] == 300  # the server's default
        assert http.get("/health").status_code == 200  # an unloaded model is not a failure
        assert chat(http, "model-b").status_code == 200  # and loads again when asked for


def test_admin_load_and_unload(http: TestClient, lifecycle: list[str]) -> None:
    r = http.post("/admin/models/model-b/load")
    assert r.status_code == 200 and r.json()["load_state"] == "loaded"
    assert r.json()["load_seconds"] is not None
    assert lifecycle == ["start model-a", "close model-a running=0", "start model-b"]
    r = http.post("/admin/models/model-b/unload")
    assert r.status_code == 200 and r.json()["load_state"] == "unloaded"
    assert r.json()["unloads"] == {"admin": 1}
    r = http.post("/admin/models/gpt-3.5-turbo/load")  # an alias names its model
    assert r.status_code == 200 and r.json()["id"] == "model-a"
    r = http.post("/admin/models/remote/load")
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_local"
    r = http.post("/admin/models/nope/unload")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post("/admin/models/model-a/load", headers={"Authorization": "Bearer sk-wrong"})
    assert r.status_code == 401


def test_admin_unload_of_a_busy_model_is_a_409(tmp_path: Path, lifecycle: list[str]) -> None:
    app = two_model_app(tmp_path)
    state = app.state.oasis
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        state.loader.engines["model-a"].delay = 0.05
        done = threading.Event()

        def slow() -> None:
            chat(http, "model-a", max_tokens=10)
            done.set()

        t = threading.Thread(target=slow)
        t.start()
        while state.loader.entries["model-a"].users == 0:
            time.sleep(0.01)
        r = http.post("/admin/models/model-a/unload")
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_busy"
        assert "keep_alive" in r.json()["error"]["message"]
        t.join()
        assert http.post("/admin/models/model-a/unload").status_code == 200


def test_a_model_that_cannot_load_is_a_503_and_its_fallback_answers(tmp_path: Path) -> None:
    models = [
        ModelConfig(id="broken", path=tmp_path / "broken.gguf", fallbacks=["good"]),
        ModelConfig(id="lonely", path=tmp_path / "lonely.gguf"),
        ModelConfig(id="good", path=tmp_path / "good.gguf"),
    ]
    (tmp_path / "broken.gguf").write_bytes(b"not a model")
    (tmp_path / "lonely.gguf").write_bytes(b"not a model")
    settings = Settings(api_key=ADMIN, data_dir=tmp_path, models=models, embeddings=False,
                        preload=["none"])
    app = create_app(settings)
    state = app.state.oasis
    # "good" runs the fake engine; the other two the real loader on a file that is no GGUF
    state.loader.entries["good"].factory = lambda: FakeEngine(name="good")
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        r = chat(http, "lonely")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
        assert "lonely" in r.json()["error"]["message"] and r.headers["retry-after"]
        r = chat(http, "broken")
        assert r.status_code == 200 and r.json()["model"] == "good"
        health = http.get("/health")
        assert health.status_code == 503 and "lonely" in health.json()["errors"]


def test_two_loads_waiting_for_room_do_not_wait_for_each_other() -> None:
    """max_loaded=1, "a" busy, "b" and "c" asked for at once: once "a" is idle, one of them
    loads, then the other (a real server once hung here: each waiting load counted as loaded)."""
    log: list[str] = []

    async def scenario() -> None:
        loader = ModelLoader(max_loaded=1)
        for name in "abc":
            loader.add(name, "engine", lambda name=name: Probe(log, name), keep_alive=None)
        await loader.start(preload=("a",))
        await loader.acquire("a")
        b = asyncio.create_task(loader.acquire("b"))
        c = asyncio.create_task(loader.acquire("c"))
        await asyncio.sleep(0.05)
        assert loader.loaded_count() == 1 and not b.done() and not c.done()
        loader.release("a")
        first = await asyncio.wait_for(asyncio.wait({b, c}, return_when="FIRST_COMPLETED"), 10)
        winner = "b" if b in first[0] else "c"
        loader.release(winner)
        await asyncio.wait_for(asyncio.gather(b, c), 10)
        loader.release("c" if winner == "b" else "b")
        assert log[:2] == ["start a", "close a running=0"]
        assert sorted(e for e in log if e.startswith("start"))[1:] == ["start b", "start c"]
        await loader.close()

    asyncio.run(scenario())


def test_a_drain_that_is_no_longer_needed_ends() -> None:
    """max_loaded=2, "a" and "b" busy, "c" asked for: "a" (least recently used) drains; then
    "b" goes idle and "c" takes its place: "a" must serve again, not wait forever."""
    log: list[str] = []

    async def scenario() -> None:
        loader = ModelLoader(max_loaded=2)
        for name in "abc":
            loader.add(name, "engine", lambda name=name: Probe(log, name), keep_alive=None)
        await loader.start(preload=("a", "b"))
        await loader.acquire("a")
        await loader.acquire("b")
        c = asyncio.create_task(loader.acquire("c"))
        await asyncio.sleep(0.05)
        assert loader.describe("a")["draining"] is True
        a2 = asyncio.create_task(loader.acquire("a"))
        await asyncio.sleep(0.05)
        assert not a2.done()
        loader.release("b")  # "c" evicts the idle "b" instead
        await asyncio.wait_for(c, 10)
        await asyncio.wait_for(a2, 10)  # the drain ended with the load that asked for it
        assert loader.describe("a")["draining"] is False and loader.entries["a"].users == 2
        assert "close a running=0" not in log
        for name in ("a", "a", "c"):
            loader.release(name)
        await loader.close()

    asyncio.run(scenario())


def test_failed_loads_fail_fast_for_a_while() -> None:
    log: list[str] = []
    built: list[int] = []
    now = [100.0]

    def factory() -> Probe:
        built.append(1)
        return Probe(log, "bad", fail=True)

    async def scenario() -> None:
        loader = ModelLoader(max_loaded=1, retry_after=5.0, clock=lambda: now[0])
        loader.add("good", "engine", lambda: Probe(log, "good"), keep_alive=None)
        loader.add("bad", "engine", factory, keep_alive=None)
        await loader.start(preload=("good",))
        with pytest.raises(ModelLoadError) as first:
            await loader.acquire("bad")
        assert first.value.headers["Retry-After"] == "5"
        assert "bad file" not in first.value.message  # the reason is the operator's
        assert "bad file" in str(loader.describe("bad")["error"])
        assert log == ["start good", "close good running=0", "close bad running=0"]  # room, fail
        await loader.acquire("good")
        loader.release("good")
        now[0] += 2
        with pytest.raises(ModelLoadError):  # within retry_after: no load, nothing evicted
            await loader.acquire("bad")
        assert len(built) == 1 and loader.describe("good")["load_state"] == "loaded"
        now[0] += 4
        with pytest.raises(ModelLoadError):
            await loader.acquire("bad")
        assert len(built) == 2
        await loader.close()

    asyncio.run(scenario())


def test_a_request_waits_for_its_model_at_most_wait_seconds() -> None:
    log: list[str] = []

    async def scenario() -> None:
        loader = ModelLoader(max_loaded=1, wait_seconds=0.2)
        loader.add("a", "engine", lambda: Probe(log, "a"), keep_alive=None)
        loader.add("b", "engine", lambda: Probe(log, "b"), keep_alive=None)
        await loader.start(preload=("a",))
        await loader.acquire("a")  # a client that never finishes
        with pytest.raises(OverloadedError, match=r"could not be loaded within 0\.2 s"):
            await loader.acquire("b")
        assert loader.entries["b"].waiting == 0
        loader.release("a")
        await asyncio.wait_for(loader.acquire("b"), 10)  # the load went on, and is served
        loader.release("b")
        await loader.close()

    asyncio.run(scenario())


def test_an_app_can_be_started_twice(tmp_path: Path) -> None:
    app = two_model_app(tmp_path)
    for _ in range(2):
        with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            assert chat(http, "model-a").status_code == 200
            assert chat(http, "model-b").status_code == 200
    from tests.conftest import make_app

    pinned = make_app(tmp=tmp_path)
    for _ in range(2):
        with TestClient(pinned, headers={"Authorization": "Bearer sk-test"}) as http:
            assert chat(http, "fake-model").status_code in (200, 401)


def test_a_stream_the_route_cannot_send_releases_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oasis.gateway.meter import Ticket

    async def broken(self: Ticket) -> dict[str, str]:
        raise RuntimeError("the limiter is down")

    app = two_model_app(tmp_path)
    state = app.state.oasis
    monkeypatch.setattr(Ticket, "headers", broken)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"},
                    raise_server_exceptions=False) as http:
        r = chat(http, "model-a", stream=True)
        assert r.status_code == 500
        assert state.loader.entries["model-a"].users == 0  # not held forever
        assert http.post("/admin/models/model-a/unload").status_code == 200


def test_preload_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"preload: .*nope"):
        two_model_app(tmp_path, preload=["nope"])
    with pytest.raises(ConfigError, match="remote is not a local model"):
        two_model_app(tmp_path, preload=["remote"])
    app = two_model_app(tmp_path, preload=["model-b", "model-a"], max_loaded=2)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        states = {m["id"]: m["load_state"] for m in http.get("/admin/models").json()["data"]}
        assert states == {"model-a": "loaded", "model-b": "loaded"}


def test_an_engine_that_gives_up_is_unloaded_and_loaded_afresh() -> None:
    """What used to stop the whole server (the engine's supervisor giving up): the model is
    unloaded once its requests end, and the next request loads a new engine."""
    log: list[str] = []
    built: list[Probe] = []

    def factory() -> Probe:
        built.append(Probe(log, f"a{len(built)}"))
        return built[-1]

    async def scenario() -> None:
        loader = ModelLoader(retry_after=0)
        loader.add("a", "engine", factory, keep_alive=None)
        loader.add("b", "engine", lambda: Probe(log, "b"), keep_alive=None)
        await loader.start(preload=("a", "b"))
        await loader.acquire("a")
        await asyncio.to_thread(loader.engine_down, "a", "engine a: 4 failures in 60 s")
        await asyncio.sleep(0.05)
        assert loader.describe("a")["load_state"] == "loaded"  # its request still holds it
        later = asyncio.create_task(loader.acquire("a"))
        await asyncio.sleep(0.05)
        assert not later.done()  # waits for the broken engine to go
        loader.release("a")
        await asyncio.wait_for(later, 10)
        assert loader.describe("a")["unloads"] == {"failed": 1} and len(built) == 2
        assert loader.engines["a"] is built[1]  # type: ignore[comparison-overlap]
        assert loader.describe("b")["load_state"] == "loaded"  # the others are not touched
        loader.release("a")
        await loader.close()

    asyncio.run(scenario())


def test_a_cancelled_request_holds_its_model_until_its_preparation_thread_ends() -> None:
    """A big request's preparation (template, tokenizer) runs in a worker thread, which
    cancelling the request (its client left) cannot stop: the model must stay loaded until the
    thread is done with it, or the thread tokenizes with a freed model."""
    from oasis.backends.local import holding
    from oasis.serving.common import in_thread

    log: list[str] = []
    inside = threading.Event()
    finish = threading.Event()

    def tokenize() -> list[int]:  # stands in for the prepare work that uses the model
        inside.set()
        finish.wait(30)
        log.append("tokenized")
        return [1, 2, 3]

    async def scenario() -> None:
        loader = ModelLoader(max_loaded=1)
        loader.add("a", "engine", lambda: Probe(log, "a"), keep_alive=None)
        await loader.start()

        async def request() -> list[int]:
            return await holding(loader, "a", lambda: in_thread(tokenize))

        task = asyncio.create_task(request())
        while not inside.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # the client left while the thread tokenizes
        unload = asyncio.create_task(loader.unload("a"))  # say, an admin unload right then
        await asyncio.sleep(0.1)
        assert not task.done() and loader.entries["a"].users == 1
        assert log == ["start a"]  # not unloaded under the thread
        finish.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ModelBusyError):  # it was asked while the request held the model
            await unload
        assert loader.entries["a"].users == 0
        await loader.unload("a")
        assert log == ["start a", "tokenized", "close a running=0"]
        await loader.close()

    asyncio.run(scenario())


def test_in_thread_passes_results_errors_and_context() -> None:
    from oasis.serving.common import BACKGROUND, in_thread

    def fail() -> None:
        raise ValueError("bad template")

    async def scenario() -> None:
        assert await in_thread(lambda: 41 + 1) == 42
        with pytest.raises(ValueError, match="bad template"):
            await in_thread(fail)
        BACKGROUND.set(True)
        assert await in_thread(BACKGROUND.get) is True  # the caller's context variables

    asyncio.run(scenario())
