"""The request-level backend seam: each model's backend comes from its configured kind."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from oasis.backends import KINDS, LocalBackend, kind_of
from oasis.config import ModelConfig, Settings
from oasis.errors import ConfigError
from oasis.models.registry import ModelSpec
from oasis.server import create_app
from tests.conftest import API_KEY


def test_the_local_kind_is_the_default() -> None:
    spec = ModelSpec("m", Path(__file__))
    assert spec.backend == "local" and kind_of(spec) is KINDS["local"]


def test_an_unknown_kind_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown backend 'vllm-magic'.*local"):
        kind_of(ModelSpec("m", Path(__file__), backend="vllm-magic"))


def _settings(tmp_path: Path, backend: str) -> Settings:
    model = ModelConfig(id="tiny", path=Path(__file__), aliases=["small"], backend=backend)
    return Settings(models=[model], engine="fake", api_key=API_KEY, data_dir=tmp_path,
                    default_aliases=[])


def test_models_from_configuration_get_their_kinds_backend(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, "local"))
    backends = app.state.oasis.backends
    assert set(backends) == {"tiny"} and isinstance(backends["tiny"], LocalBackend)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for path, body in (("/v1/chat/completions",
                            {"model": "small", "messages": [{"role": "user", "content": "hi"}]}),
                           ("/v1/completions", {"model": "tiny", "prompt": "hi"})):
            r = http.post(path, json=body)
            assert r.status_code == 200, r.text
        assert http.get("/health").json()["status"] == "ok"


def test_a_configured_unknown_kind_stops_the_app_from_being_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown backend"):
        create_app(_settings(tmp_path, "nope"))
