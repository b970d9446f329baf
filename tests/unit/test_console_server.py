"""The console's Server page: the sampler's rates (fake clock: windows, counter restarts,
bounded memory) and GET /console/api/server through the app (fake engine, a fake upstream)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from oasis.config import ModelConfig, Settings
from oasis.engine.base import EngineStats, Health
from oasis.engine.fake import FakeEngine
from oasis.models.loader import ModelLoader
from oasis.server import create_app
from oasis.server.stats_window import Sample, Sampler, StatsWindow, increase
from tests.conftest import API_KEY, make_app
from tests.fake_upstream import running

PAGE = "/console/api/server"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


class Clock:
    """Monotonic and wall time that move only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t


class Counters:
    """A model's cumulative counters, set by the test."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, float]] = {"m": {"generated_tokens_total": 0.0}}

    def __call__(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.values.items()}

    def add(self, name: str, n: float, model: str = "m") -> None:
        self.values[model][name] = self.values[model].get(name, 0.0) + n


def _sampler(**kw: Any) -> tuple[Sampler, Clock, Counters]:
    clock, counters = Clock(), Counters()
    return Sampler(counters, clock=clock.mono, wall=clock.wall, **kw), clock, counters


def _tick(sampler: Sampler, clock: Clock, seconds: float = 5.0) -> None:
    clock.t += seconds
    sampler.sample()


def test_rates_over_the_window_end_at_a_reading_taken_now() -> None:
    sampler, clock, counters = _sampler()
    sampler.started_at = clock.t
    sampler.sample()
    assert sampler.window.delta("m", sampler.now()["m"], 300) is None  # no span yet
    for _ in range(4):
        counters.add("generated_tokens_total", 50)
        _tick(sampler, clock)
    counters.add("generated_tokens_total", 30)
    clock.t += 2.5  # between samples: the reading now counts
    delta = sampler.window.delta("m", sampler.now()["m"], 300)
    assert delta is not None
    assert delta.seconds == 22.5 and delta.increase["generated_tokens_total"] == 230
    assert delta.per_second("generated_tokens_total") == pytest.approx(230 / 22.5)
    assert sampler.uptime() == 22.5
    series = sampler.window.series("m", clock.t, 300)
    assert [round(d.per_second("generated_tokens_total"), 6) for _, d in series] == [10.0] * 4
    assert [t for t, _ in series] == [clock.wall() - 2.5 - 5 * i for i in (3, 2, 1, 0)]


def test_only_the_window_counts() -> None:
    sampler, clock, counters = _sampler(interval=5.0, keep=900.0)
    sampler.sample()
    counters.add("generated_tokens_total", 10_000)  # long ago
    _tick(sampler, clock, 5)
    for _ in range(70):  # 350 s at 1 token/s
        counters.add("generated_tokens_total", 5)
        _tick(sampler, clock)
    delta = sampler.window.delta("m", sampler.now()["m"], 300)
    assert delta is not None and delta.seconds == 300
    assert delta.per_second("generated_tokens_total") == pytest.approx(1.0)
    assert len(sampler.window.series("m", clock.t, 300)) == 60


def test_a_counter_that_falls_started_again_and_rates_are_never_negative() -> None:
    samples = [
        Sample(0, 0, {"c": 100}),
        Sample(5, 5, {"c": 150}),
        Sample(10, 10, {"c": 20}),  # the model was added again: counting from 0
        Sample(15, 15, {"c": 60}),
    ]
    assert increase(samples) == {"c": 50 + 20 + 40}
    window = StatsWindow(interval=5)
    for s in samples:
        window.record(s.mono, s.wall, {"m": s.values})
    rates = [d.per_second("c") for _, d in window.series("m", 15, 300)]
    assert rates == [10.0, 4.0, 8.0] and min(rates) >= 0


def test_memory_is_bounded_and_models_gone_are_dropped() -> None:
    sampler, clock, counters = _sampler(interval=5.0, keep=900.0)
    counters.values["other"] = {"requests_total": 1.0}
    for _ in range(1000):
        counters.add("generated_tokens_total", 1)
        _tick(sampler, clock)
    assert len(sampler.window.samples("m")) == 181  # 15 minutes of 5 s samples
    assert len(sampler.window) == 2 * 181
    del counters.values["other"]
    _tick(sampler, clock)
    assert sampler.window.samples("other") == [] and len(sampler.window) == 181


def test_the_sampler_runs_until_closed() -> None:
    reads: list[int] = []
    three = asyncio.Event()

    def read() -> dict[str, dict[str, float]]:
        reads.append(1)
        if len(reads) >= 3:
            three.set()
        return {"m": {"requests_total": float(len(reads))}}

    async def scenario() -> None:
        sampler = Sampler(read, interval=0.01)
        sampler.start()
        await asyncio.wait_for(three.wait(), 60)  # however slow the machine
        await sampler.close()
        taken = len(reads)
        assert taken >= 3 and len(sampler.window.samples("m")) == taken
        await asyncio.sleep(0.05)
        assert len(reads) == taken

    asyncio.run(scenario())


def test_an_engine_being_unloaded_is_not_counted_twice() -> None:
    """While an unloaded engine closes, its counters are in the loader's retired totals; they
    must not also be read from the engine (the counters would jump up, then back down)."""
    seen: list[EngineStats] = []

    class Engine:
        def __init__(self) -> None:
            self.loader: ModelLoader | None = None

        def start(self) -> None: ...

        def close(self) -> None:
            assert self.loader is not None
            seen.append(self.loader.stats("a"))

        def stats(self) -> EngineStats:
            return EngineStats(generated_tokens_total=7)

        def health(self) -> Health:
            return Health(True)

    engine = Engine()

    async def scenario() -> None:
        loader = ModelLoader()
        engine.loader = loader
        loader.add("a", "engine", lambda: engine, keep_alive=None)
        await loader.start()
        await loader.load("a")
        assert loader.stats("a").generated_tokens_total == 7
        await loader.unload("a")
        assert loader.stats("a").generated_tokens_total == 7
        await loader.close()

    asyncio.run(scenario())
    assert [s.generated_tokens_total for s in seen] == [7]


# -- the route ---------------------------------------------------------------------------------


def _clocked(app: Any) -> Clock:
    """The app's sampler on a fake clock (set before the app starts)."""
    clock = Clock()
    sampler = app.state.oasis.server_stats
    sampler.clock, sampler.wall = clock.mono, clock.wall
    return clock


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[TestClient, Clock]]:
    app = make_app(FakeEngine(reply="four token reply"), tmp=tmp_path)
    clock = _clocked(app)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        yield http, clock


def test_the_page_lists_the_local_model_with_its_rates(
    admin: tuple[TestClient, Clock],
) -> None:
    http, clock = admin
    first = http.get(PAGE)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["window_s"] == 300 and body["uptime_s"] == 0
    (model,) = body["models"]
    assert model["id"] == "fake-model" and model["kind"] == "local"
    assert model["state"] == "loaded" and model["replicas"] is None
    assert model["slots"] == 4 and model["slots_busy"] == 0 and model["queue"] == 0
    assert model["tokens_per_s"] is None and model["series"] == []  # no span yet

    for _ in range(3):
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
    clock.t += 5
    http.app.state.oasis.server_stats.sample()  # type: ignore[attr-defined]
    clock.t += 5
    body = http.get(PAGE).json()
    assert body["uptime_s"] == 10
    (model,) = body["models"]
    generated = http.app.state.oasis.loader.stats("fake-model").generated_tokens_total  # type: ignore[attr-defined]
    prompt = http.app.state.oasis.loader.stats("fake-model").prompt_tokens_total  # type: ignore[attr-defined]
    assert generated > 0 and prompt > 0
    assert model["tokens_per_s"] == pytest.approx(generated / 10, abs=1e-3)
    assert model["prompt_tokens_per_s"] == pytest.approx(prompt / 10, abs=1e-3)
    assert model["requests_per_min"] == pytest.approx(3 * 6)
    assert model["prefix_cache_hit_rate"] == 0  # the fake engine caches nothing
    assert model["kv_used"] is None  # the fake engine has no KV cache
    (point,) = model["series"]
    assert point["t"] == pytest.approx(clock.wall() - 5)
    assert point["tokens_per_s"] == pytest.approx(generated / 5, abs=1e-3)


def test_a_user_key_is_refused_and_no_key_is_unauthorized(
    admin: tuple[TestClient, Clock],
) -> None:
    http, _ = admin
    created = http.post("/admin/keys", json={"name": "user"})
    assert created.status_code == 201, created.text
    user = created.json()["value"]
    r = http.get(PAGE, headers={"Authorization": f"Bearer {user}"})
    assert r.status_code == 403 and "models" not in r.json()
    r = http.get(PAGE, headers={"Authorization": ""})
    assert r.status_code == 401


def test_an_upstream_model_shows_its_replicas_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OASIS_TEST_UPSTREAM_KEY", "sk-upstream-secret-987")
    with running("a") as up:
        url = up.url.replace("http://", "http://user:pa55word@")
        settings = Settings(
            models=[
                ModelConfig(
                    id="up",
                    backend="upstream",
                    upstream_model="real/name",
                    replicas=[url],
                    probe_interval=60,
                ),
                ModelConfig(  # aiohttp takes no URL credentials beside an Authorization header
                    id="keyed",
                    backend="upstream",
                    upstream_model="real/name",
                    replicas=[up.url],
                    api_key_env="OASIS_TEST_UPSTREAM_KEY",
                    probe_interval=60,
                ),
                ModelConfig(id="local", path=Path(__file__)),
            ],
            engine="fake",
            api_key=API_KEY,
            data_dir=tmp_path,
            default_aliases=[],
        )
        app = create_app(settings)
        clock = _clocked(app)
        with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            for _ in range(2):
                r = http.post("/v1/chat/completions", json={**CHAT, "model": "up"})
                assert r.status_code == 200, r.text
            clock.t += 30
            r = http.get(PAGE)
    assert r.status_code == 200
    assert "pa55word" not in r.text and "sk-upstream-secret" not in r.text
    models = {m["id"]: m for m in r.json()["models"]}
    upstream = models["up"]
    assert upstream["kind"] == "upstream" and upstream["state"] == "healthy"
    assert upstream["slots"] is None and upstream["tokens_per_s"] is None
    assert upstream["requests_per_min"] == pytest.approx(2 * 2)
    (replica,) = upstream["replicas"]
    assert replica["url"] == up.url and replica["state"] == "healthy"
    assert replica["in_flight"] == 0 and replica["error_rate"] == 0
    assert replica["latency_ms_p50"] is not None and replica["latency_ms_p50"] > 0
    assert models["keyed"]["requests_per_min"] == 0
    local = models["local"]
    assert local["kind"] == "local" and local["state"] == "unloaded"  # "up" is preloaded


def test_states_of_local_models(tmp_path: Path) -> None:
    """unloaded until a request loads it; failed when its engine is not healthy."""
    settings = Settings(
        models=[
            ModelConfig(id="first", path=Path(__file__)),
            ModelConfig(id="second", path=Path(__file__)),
        ],
        engine="fake",
        api_key=API_KEY,
        data_dir=tmp_path,
        default_aliases=[],
    )
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        states = {m["id"]: m["state"] for m in http.get(PAGE).json()["models"]}
        assert states == {"first": "loaded", "second": "unloaded"}
        entry = app.state.oasis.loader.entries["second"]
        entry.error = "RuntimeError: bad file"
        states = {m["id"]: m["state"] for m in http.get(PAGE).json()["models"]}
        assert states["second"] == "failed"
