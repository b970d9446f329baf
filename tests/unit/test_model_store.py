"""The model store (oasis.models.store): entries, manifests, GGUF headers, names."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from oasis.errors import InvalidModelFileError, InvalidRequestError, ModelNotFoundError
from oasis.models.store import (
    ModelStore,
    check_name,
    model_name,
    quant_from_filename,
    read_gguf_metadata,
)
from tests.fake_hub import make_gguf

OASIS = str(Path(sys.executable).with_name("oasis"))
GGUF = make_gguf(arch="qwen2", file_type=15, context_length=32768, seed=1)


def gguf_file(tmp: Path, name: str = "m-Q4_K_M.gguf", data: bytes = GGUF) -> Path:
    path = tmp / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- entries -----------------------------------------------------------------------------------


def test_add_get_list_remove(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.list() == []
    src = gguf_file(tmp_path)
    model = store.add("qwen-small", src, source="hf:a/b/m-Q4_K_M.gguf@abc", sha256=sha(GGUF))
    assert not src.exists()  # moved
    assert model.path == tmp_path / "models" / "qwen-small" / "m-Q4_K_M.gguf"
    assert model.path.read_bytes() == GGUF and model.size == len(GGUF)
    assert (model.architecture, model.quantization) == ("qwen2", "Q4_K_M")
    assert model.context_length == 32768 and model.chat_template is True
    assert model.source == "hf:a/b/m-Q4_K_M.gguf@abc" and model.sha256 == sha(GGUF)
    assert store.get("qwen-small") == model == store.find("qwen-small")
    manifest = json.loads((model.path.parent / "model.json").read_text())
    assert manifest["path"] == "m-Q4_K_M.gguf" and manifest["name"] == "qwen-small"

    other = make_gguf(arch="llama", file_type=7, context_length=None, chat_template=None)
    copied = gguf_file(tmp_path, "other.gguf", other)
    second = store.add("a-first", copied, source="pypi:x==1", sha256=sha(other), move=False)
    assert copied.exists()  # copied, not moved
    assert (second.quantization, second.context_length, second.chat_template) == (
        "Q8_0",
        None,
        False,
    )
    assert [m.name for m in store.list()] == ["a-first", "qwen-small"]

    removed = store.remove("qwen-small")
    assert removed == model and not model.path.parent.exists()
    assert store.find("qwen-small") is None
    with pytest.raises(ModelNotFoundError):
        store.get("qwen-small")
    with pytest.raises(ModelNotFoundError):
        store.remove("qwen-small")
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["a-first"]


def test_adding_a_name_again_replaces_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.add("m", gguf_file(tmp_path, "m-Q4_K_M.gguf"), source="one", sha256=sha(GGUF))
    q8 = make_gguf(file_type=7, seed=2)
    new = store.add("m", gguf_file(tmp_path, "m-Q8_0.gguf", q8), source="two", sha256=sha(q8))
    assert store.get("m") == new and new.quantization == "Q8_0" and new.source == "two"
    assert sorted(p.name for p in new.path.parent.iterdir()) == ["m-Q8_0.gguf", "model.json"]


def test_a_file_that_is_not_gguf_changes_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    bad = gguf_file(tmp_path, "x.gguf", b"PK\x03\x04 a zip file, not a model" * 10)
    with pytest.raises(InvalidModelFileError, match=r"x\.gguf: not a GGUF file"):
        store.add("x", bad, source="s", sha256=sha(b""))
    assert bad.exists() and not (tmp_path / "models" / "x").exists()
    with pytest.raises(InvalidModelFileError, match="no such file"):
        store.add("x", tmp_path / "missing.gguf", source="s", sha256=sha(b""))
    with pytest.raises(InvalidRequestError, match="sha256"):
        store.add("x", gguf_file(tmp_path), source="s", sha256="abc")
    for name in ("model.json", ".hidden.gguf"):
        with pytest.raises(InvalidModelFileError, match="not a file name the store can keep"):
            store.add("x", gguf_file(tmp_path, name), source="s", sha256=sha(GGUF))
    assert store.list() == []


@pytest.mark.parametrize(
    "damage",
    [
        "missing",
        "not json",
        "a list",
        "wrong types",
        "path escapes",
        "other name",
        "file gone",
    ],
)
def test_broken_entries_are_skipped_and_not_found(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ModelStore(tmp_path / "models")
    model = store.add("m", gguf_file(tmp_path), source="s", sha256=sha(GGUF))
    store.add("ok", gguf_file(tmp_path, "ok.gguf"), source="s", sha256=sha(GGUF))
    manifest = model.path.parent / "model.json"
    raw = json.loads(manifest.read_text())
    if damage == "missing":
        manifest.unlink()
    elif damage == "not json":
        manifest.write_text('{"name": "m", ')
    elif damage == "a list":
        manifest.write_text("[]")
    elif damage == "wrong types":
        manifest.write_text(json.dumps({**raw, "size": True}))
    elif damage == "path escapes":
        manifest.write_text(json.dumps({**raw, "path": "../ok/ok.gguf"}))
    elif damage == "other name":
        manifest.write_text(json.dumps({**raw, "name": "ok"}))
    else:
        model.path.unlink()
    with caplog.at_level(logging.WARNING, logger="oasis.models.store"):
        assert [m.name for m in store.list()] == ["ok"]
    assert "skipping the model directory" in caplog.text
    assert store.find("m") is None
    with pytest.raises(ModelNotFoundError):
        store.get("m")
    # `oasis models rm` can still clean it up
    broken = store.remove("m")
    assert broken.name == "m" and not (tmp_path / "models" / "m").exists()
    assert [m.name for m in store.list()] == ["ok"]


# -- GGUF headers ------------------------------------------------------------------------------


def test_metadata_agrees_with_gguf_reader_on_the_bundled_model() -> None:
    import gguf

    from oasis.errors import ConfigError
    from oasis.models.registry import bundled_model_path

    try:
        path = bundled_model_path()
    except ConfigError:
        pytest.skip("the bundled model is not installed")
    meta = read_gguf_metadata(path)
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    assert meta["architecture"] == arch == "llama"
    assert meta["context_length"] == reader.fields[f"{arch}.context_length"].contents()
    assert meta["quantization"] == "Q4_1"  # general.file_type 3
    assert meta["chat_template"] is ("tokenizer.chat_template" in reader.fields)


def write_header(*kvs: bytes, n_tensors: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs)) + b"".join(kvs)


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than a GGUF header"),
        (b"GGUF", "shorter than a GGUF header"),
        (b"\x7fELF" + b"\0" * 60, "does not start with the GGUF magic"),
        (write_header(version=1) + b"\0" * 16, "GGUF version 1"),
        # a key claiming 2**62 bytes
        (write_header(struct.pack("<Q", 1 << 62) + b"abc") + b"\0" * 64, "at most 65536"),
        # an array of 2**60 strings in a small file
        (
            write_header(gstr("k") + struct.pack("<IIQ", 9, 8, 1 << 60)) + b"\0" * 64,
            "items runs past the end",
        ),
        # arrays nested deeper than anyone writes
        (
            write_header(gstr("k") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 9, 1) * 8)
            + b"\0" * 64,
            "nested deeper",
        ),
        # a value of an unknown type
        (write_header(gstr("k") + struct.pack("<I", 99)) + b"\0" * 64, "unknown value type 99"),
        # a string value longer than the file
        (write_header(gstr("k") + struct.pack("<IQ", 8, 10**9)) + b"x" * 64, "past the end"),
        # more keys than could fit
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 10**12) + b"\0" * 64, "do not fit"),
        # the key is not UTF-8
        (write_header(gstr(b"\xff\xfe") + struct.pack("<IB", 0, 1)) + b"\0" * 64, "not UTF-8"),
    ],
)
def test_hostile_headers_are_clear_errors(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "evil.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidModelFileError, match=message) as exc:
        read_gguf_metadata(path)
    assert exc.value.message.startswith("evil.gguf: ")


def test_truncated_files_are_refused_at_every_length(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    cuts = {*range(0, 400), *range(400, len(GGUF), 97), len(GGUF) - 1}
    for n in sorted(cuts):
        path.write_bytes(GGUF[:n])
        with pytest.raises(InvalidModelFileError):
            read_gguf_metadata(path)
    path.write_bytes(GGUF)
    assert read_gguf_metadata(path)["architecture"] == "qwen2"


def test_damaged_headers_never_crash(tmp_path: Path) -> None:
    """Random bytes flipped in the header: a result or InvalidModelFileError, nothing else."""
    rng = random.Random(1234)
    path = tmp_path / "flipped.gguf"
    for _ in range(500):
        data = bytearray(GGUF)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(0, 600)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            meta = read_gguf_metadata(path)
        except InvalidModelFileError:
            continue
        assert set(meta) == {"architecture", "quantization", "context_length", "chat_template"}


def test_a_directory_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        read_gguf_metadata(tmp_path)
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    with pytest.raises(InvalidModelFileError, match="not a regular file"):
        read_gguf_metadata(fifo)  # would block forever if opened


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2.5-0.5b-instruct", "a", "x_1", "0" * 64])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "..", "a/b", "a\\b", "A", "-x", ".x", "a..b", "a" * 65, "modèle", "a b",
             "x\0", "ｆｕｌｌ"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidRequestError, match="Invalid model name"):
        check_name(name)


@pytest.mark.parametrize(
    ("repo", "filename", "expected"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", None, "qwen2.5-0.5b-instruct"),
        ("bartowski/Llama-3.2-1B-Instruct-GGUF", None, "llama-3.2-1b-instruct"),
        ("someone/phi_3_gguf", None, "phi_3"),
        ("someone/Model.GGUF", None, "model"),
        ("someone/GGUF", "tiny-Q4_K_M.gguf", "tiny-q4_k_m"),
        ("someone/Ünïcode Model", None, "n-code-model"),
        ("someone/" + "x" * 100 + "-GGUF", None, "x" * 64),
    ],
)
def test_model_name(repo: str, filename: str | None, expected: str) -> None:
    assert model_name(repo, filename) == expected
    assert check_name(expected) == expected


def test_model_name_gives_up_clearly() -> None:
    with pytest.raises(InvalidRequestError, match="pass one with --name"):
        model_name("someone/___", None)


@pytest.mark.parametrize(
    ("filename", "quant"),
    [
        ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
        ("Llama-3.2-1B-Instruct-IQ3_XXS.gguf", "IQ3_XXS"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("m-UD-Q4_K_XL.gguf", "Q4_K_XL"),
        ("m-f16.gguf", "F16"),
        ("m-BF16.gguf", "BF16"),
        ("qwen2-7b.gguf", None),
        ("model.gguf", None),
    ],
)
def test_quant_from_filename(filename: str, quant: str | None) -> None:
    assert quant_from_filename(filename) == quant


# -- the CLI on a store filled directly ---------------------------------------------------------


def test_models_list_and_show_on_the_command_line(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.add("zeta", gguf_file(tmp_path), source="pypi:pkg==0.9.0", sha256=sha(GGUF))
    env = {**os.environ, "OASIS_DATA_DIR": str(tmp_path), "COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OASIS, "models", *args], env=env, capture_output=True,
                              text=True, cwd=tmp_path, stdin=subprocess.DEVNULL)

    rows = run("list").stdout.splitlines()
    assert len(rows) == 2 and rows[1].split("\t")[0] == "zeta"
    assert rows[1].split("\t")[-1] == "pypi:pkg==0.9.0"
    [item] = json.loads(run("list", "--json").stdout)
    assert item["name"] == "zeta" and item["architecture"] == "qwen2"
    missing = run("show", "nope")
    assert missing.returncode == 1 and "The model `nope` does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
