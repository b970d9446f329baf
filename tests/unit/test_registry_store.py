"""Models named by the model store: `--model NAME`, [[models]] without a path, and every pulled
model served beside the configured ones (never at the cost of a name already taken)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from oasis.config import ModelConfig, Settings
from oasis.errors import ConfigError
from oasis.models.registry import BUNDLED_ID, ModelRegistry, specs_from_settings
from oasis.models.store import ModelStore
from tests.fake_hub import make_gguf


def pulled(data: Path, *names: str) -> ModelStore:
    store = ModelStore(data / "models")
    for i, name in enumerate(names):
        blob = make_gguf(seed=i)
        src = data / f"{name}.gguf"
        src.write_bytes(blob)
        store.add(name, src, source=f"hf:acme/{name}/{name}.gguf@abc",
                  sha256=hashlib.sha256(blob).hexdigest())
    return store


def test_pulled_models_are_served_after_the_configured_ones(tmp_path: Path) -> None:
    store = pulled(tmp_path, "tiny-chat", "other-chat")
    specs = specs_from_settings(Settings(data_dir=tmp_path))
    ids = [s.id for s in specs]
    assert ids[0] == BUNDLED_ID and {"tiny-chat", "other-chat"} <= set(ids)
    assert next(s for s in specs if s.id == "tiny-chat").path == store.get("tiny-chat").path
    assert "gpt-3.5-turbo" in specs[0].aliases  # the OpenAI names stay with the first model
    assert [s.id for s in specs_from_settings(Settings(data_dir=tmp_path,
                                                       pulled_models=False))] == [
        BUNDLED_ID, "all-MiniLM-L6-v2"]


def test_a_pulled_name_that_is_taken_is_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pulled(tmp_path, "text-embedding-3-small", "gpt-4", "all-minilm-l6-v2")
    specs = specs_from_settings(Settings(data_dir=tmp_path))
    ModelRegistry(specs)  # no "used by two models": the server starts
    ids = [s.id for s in specs]
    assert "text-embedding-3-small" not in ids and "gpt-4" not in ids
    assert "all-minilm-l6-v2" in ids  # names are case-sensitive; this one is free
    assert "the name is taken" in caplog.text


def test_model_by_name_file_or_error(tmp_path: Path) -> None:
    store = pulled(tmp_path, "tiny-chat")
    specs = specs_from_settings(Settings(data_dir=tmp_path, model=Path("tiny-chat")))
    assert specs[0].id == "tiny-chat" and specs[0].path == store.get("tiny-chat").path
    assert [s.id for s in specs].count("tiny-chat") == 1  # not listed twice
    with pytest.raises(ConfigError, match=r"no model of that name .*tiny-chat.*oasis pull"):
        specs_from_settings(Settings(data_dir=tmp_path, model=Path("nope")))
    with pytest.raises(ConfigError, match="no such GGUF file"):
        specs_from_settings(Settings(data_dir=tmp_path, model=Path("../../etc/passwd-x")))


def test_a_configured_model_without_a_path_is_the_stored_one(tmp_path: Path) -> None:
    store = pulled(tmp_path, "tiny-chat")
    settings = Settings(data_dir=tmp_path, models=[
        ModelConfig(id="tiny-chat", keep_alive="30s"), ModelConfig(id="emb", kind="embedding")])
    specs = specs_from_settings(settings)
    assert specs[0].path == store.get("tiny-chat").path and specs[0].keep_alive == 30
    assert [s.id for s in specs] == ["tiny-chat", "emb"]  # the stored one is not added twice
    with pytest.raises(ConfigError, match="'missing'"):
        specs_from_settings(Settings(data_dir=tmp_path, models=[ModelConfig(id="missing")]))
