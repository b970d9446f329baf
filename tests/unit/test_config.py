"""Settings from flags, OASIS_* variables and oasis.toml; the model registry they build."""

from __future__ import annotations

from pathlib import Path

import pytest

from oasis.config import OPENAI_ALIASES, load_settings
from oasis.errors import ConfigError, ModelNotFoundError
from oasis.models.registry import BUNDLED_ID, ModelRegistry, ModelSpec, specs_from_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.host, s.port, s.parallel, s.ctx_size) == ("127.0.0.1", 8000, 4, 8192)
    assert s.api_key is None


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OASIS_HOST", "0.0.0.0")
    monkeypatch.setenv("OASIS_PORT", "9001")
    monkeypatch.setenv("OASIS_PARALLEL", "8")
    monkeypatch.setenv("OASIS_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("OASIS_ALIAS", "a, b")
    s = load_settings(port=9002)
    assert (s.host, s.port, s.parallel) == ("0.0.0.0", 9002, 8)
    assert s.data_dir == tmp_path / "state"
    assert s.alias == ["a", "b"]


def test_bundled_model_answers_to_the_openai_names(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    reg = ModelRegistry(specs_from_settings(load_settings()))
    for name in (BUNDLED_ID, *OPENAI_ALIASES):
        assert reg.resolve(name).id == BUNDLED_ID
    assert reg.resolve("gpt-3.5-turbo").path.name.endswith(".gguf")
    with pytest.raises(ModelNotFoundError):
        reg.resolve("gpt-5")


def test_model_flag_with_alias(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    reg = ModelRegistry(specs_from_settings(load_settings(model=gguf, alias=["mine"])))
    assert reg.resolve("mine").id == "tiny"
    assert reg.resolve("gpt-4").id == "tiny"
    with pytest.raises(ConfigError):
        specs_from_settings(load_settings(model=tmp_path / "missing.gguf"))


def test_toml_with_several_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    (tmp_path / "oasis.toml").write_text(
        'port = 8123\ndefault_aliases = ["gpt-4o"]\n'
        f'[[models]]\nid = "a"\npath = "{tmp_path / "a.gguf"}"\naliases = ["first"]\n'
        f'[[models]]\nid = "b"\npath = "{tmp_path / "b.gguf"}"\nctx_size = 1024\n'
    )
    s = load_settings()
    assert s.port == 8123
    reg = ModelRegistry(specs_from_settings(s))
    assert reg.resolve("first").id == "a"
    assert reg.resolve("gpt-4o").id == "a"
    assert reg.resolve("b").ctx_size == 1024
    with pytest.raises(ModelNotFoundError):
        reg.resolve("gpt-3.5-turbo")
    monkeypatch.setenv("OASIS_PORT", "8124")
    assert load_settings().port == 8124


def test_speculative_settings_reach_the_engine(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """`--prompt-lookup` / `--no-jump-forward` (or OASIS_PROMPT_LOOKUP / OASIS_JUMP_FORWARD)
    are what the llama.cpp engine of each local model is built with; by default jump-forward
    is on and prompt lookup is left to each request."""
    from oasis.backends.local import LocalKind
    from oasis.engine.llamacpp import LlamaEngine
    from oasis.models.registry import bundled_model_path

    monkeypatch.chdir(tmp_path)
    spec = ModelSpec(id="m", path=bundled_model_path())

    def built(**flags: object) -> LlamaEngine:
        engine = LocalKind().engine(spec, load_settings(**flags), None)
        assert isinstance(engine, LlamaEngine)  # built, not started: no model is loaded
        return engine

    default = built()
    assert (default.jump_forward, default.prompt_lookup) == (True, False)
    flagged = built(jump_forward=False, prompt_lookup=True)
    assert (flagged.jump_forward, flagged.prompt_lookup) == (False, True)
    monkeypatch.setenv("OASIS_PROMPT_LOOKUP", "true")
    monkeypatch.setenv("OASIS_JUMP_FORWARD", "false")
    env = built()
    assert (env.jump_forward, env.prompt_lookup) == (False, True)
