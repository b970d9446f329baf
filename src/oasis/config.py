"""Settings: one object, from defaults < oasis.toml < OASIS_* environment < CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The OpenAI model names the tutorial's code (and most SDK examples) use; by default they all
# resolve to the default model so that code runs unchanged.
OPENAI_ALIASES = (
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0613",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4",
    "text-davinci-002",
    "text-davinci-003",
    "davinci",
    "babbage-002",
)

# The OpenAI embedding model names, resolved to the bundled embedding model.
OPENAI_EMBEDDING_ALIASES = ("text-embedding-3-small", "text-embedding-ada-002")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "oasis"


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """A keep_alive: a number of seconds, or a string like "30s", "5m", "1.5h", "-1"."""
    if isinstance(value, bool):
        raise ValueError('a duration is a number of seconds or a string like "5m", not a boolean')
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in sorted(_UNITS, key=len, reverse=True):
            if text.endswith(unit) and text[: -len(unit)].strip():
                try:
                    return float(text[: -len(unit)]) * _UNITS[unit]
                except ValueError:
                    break
        try:
            return float(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration (seconds, or a number with s, m, h or d)"
            ) from None
    return value


class ModelConfig(BaseModel):
    """One model entry of ``oasis.toml`` (``[[models]]``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    # the GGUF file (backend "local"); none: the model called `id` in the model store
    path: Path | None = None
    aliases: list[str] = Field(default_factory=list)
    ctx_size: int | None = Field(default=None, ge=64)
    # "chat": a generative model (chat, completions, responses); "embedding": a sentence
    # embedding model served by /v1/embeddings (a GGUF llama.cpp pools, e.g. BERT)
    kind: Literal["chat", "embedding"] = "chat"
    # an embedding model trained to be shortened (Matryoshka): `dimensions` cuts its vectors
    matryoshka: bool = False
    # a local model unloads after this long without requests: seconds, or "30s", "5m", "1h";
    # -1 (or any negative) never unloads it. Default: the server's keep_alive.
    keep_alive: float | None = Field(default=None, allow_inf_nan=False)
    # which kind of backend serves it (oasis.backends.KINDS): "local" runs llama.cpp in this
    # process, "upstream" forwards to OpenAI-compatible servers
    backend: str = "local"
    # other model ids, tried in order when this one cannot take the request (every replica
    # failed, or the local engine's queue is full); the answer names the model that served it
    fallbacks: list[str] = Field(default_factory=list)
    # -- backend "upstream" ----------------------------------------------------------------
    # base URLs of the replicas, each serving the OpenAI API (".../v1")
    replicas: list[str] = Field(default_factory=list)
    # the model name the upstream knows (default: id)
    upstream_model: str | None = None
    # the environment variable holding the upstream's API key (never the key itself)
    api_key_env: str | None = None
    # "least_outstanding", or "affinity": requests sharing a prefix go to one replica
    routing: Literal["least_outstanding", "affinity"] = "least_outstanding"
    # affinity's bound: no replica above (1 + affinity_balance) x the mean in-flight count
    affinity_balance: float = Field(default=0.25, gt=0, le=10)
    # tries per request across replicas (connect errors, 5xx, 429, timeouts) before fallbacks
    max_attempts: int = Field(default=3, ge=1, le=10)
    connect_timeout: float = Field(default=5.0, gt=0)
    # to the response headers and first event of a stream; to the whole answer otherwise
    first_byte_timeout: float = Field(default=60.0, gt=0)
    timeout: float = Field(default=600.0, gt=0)
    # between chunks of a stream
    read_timeout: float = Field(default=60.0, gt=0)
    # active health probes (GET <replica>/models, or probe_path on the replica's origin)
    probe_interval: float = Field(default=5.0, gt=0)
    probe_path: str | None = None
    # passive ejection after this many consecutive failures (a refused connection: at once)
    eject_after: int = Field(default=3, ge=1)
    # the first ejection's cool-down in seconds, doubled for each further one (up to 60x)
    eject_seconds: float = Field(default=1.0, gt=0)
    # connections kept open to each replica
    max_connections: int = Field(default=256, ge=1)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> Any:
        return parse_duration(value)

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelConfig:
        if self.backend == "upstream":
            if not self.replicas:
                raise ValueError(f"model {self.id!r}: an upstream model needs replicas")
            for url in self.replicas:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"model {self.id!r}: replica {url!r} is not an http(s) URL")
            if len({u.rstrip("/") for u in self.replicas}) < len(self.replicas):
                raise ValueError(f"model {self.id!r}: a replica is listed twice")
        # a local model without a path is the model of that name in the model store (`oasis
        # pull`, an optional model), or for an embedding model the bundled all-MiniLM-L6-v2
        return self


class PriceConfig(BaseModel):
    """What a model's tokens cost, in USD per million tokens (``[prices."model-name"]``)."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    output: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    cached_input: float | None = Field(default=None, ge=0, allow_inf_nan=False)


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every setting is also an environment variable ``OASIS_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="OASIS_", extra="ignore", toml_file="oasis.toml", env_ignore_empty=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Field(default_factory=_default_data_dir)
    api_key: SecretStr | None = None
    # Serve without any key check (local tinkering only; refused on non-loopback addresses).
    no_auth: bool = False
    # SQLAlchemy URL; default: SQLite (WAL) at <data_dir>/oasis.db
    database_url: str | None = None
    # The model to serve instead of the bundled SmolLM2-135M-Instruct: a GGUF file, or the name
    # of a model in the model store (`oasis models list`; an optional model such as
    # qwen2.5-coder-0.5b is assembled into the store the first time).
    model: Path | None = None
    # Extra names for `model`.
    alias: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Names that resolve to the default (first) model; set empty to turn them off.
    default_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(OPENAI_ALIASES)
    )
    models: list[ModelConfig] = Field(default_factory=list)
    ctx_size: int = Field(default=8192, ge=256)
    parallel: int = Field(default=4, ge=1, le=64)
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    batch_size: int = Field(default=512, ge=16)
    max_queue: int = Field(default=64, ge=0)
    prefix_cache: bool = True
    # Speculative decoding (engine/llamacpp/speculative.py): guessed tokens verified in the
    # step's batch, outputs unchanged. Jump-forward drafts the text a grammar forces (on);
    # prompt lookup drafts what followed the last few tokens earlier in the prompt or output
    # (off by default: it wins where answers quote their input, and a request may ask for it
    # with "prompt_lookup": true).
    jump_forward: bool = True
    prompt_lookup: bool = False
    log_level: str = "info"
    # Share rate limits and spend counters between replicas (redis://host:port/db).
    redis_url: str | None = None
    # Key prefix in Redis, to share one Redis between several oasis deployments.
    redis_prefix: str = "oasis"
    # How often journaled usage records are written to the database.
    usage_flush_seconds: float = Field(default=0.2, gt=0)
    # Prices per model name (or "*" for any other), USD per million tokens.
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    # How long a verified key is trusted before the database is asked again.
    key_cache_seconds: float = Field(default=1.0, ge=0)
    # "fake": a scripted engine without a model, for gateway benchmarks and tests.
    engine: Literal["llama", "fake"] = "llama"
    # Request limits, checked before any expensive work; over one: a 400 naming it.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_json_depth: int = Field(default=64, ge=8, le=512)
    max_messages: int = Field(default=2048, ge=1)
    # Characters of prompt text (all messages, or all prompts) before tokenizing.
    max_prompt_chars: int = Field(default=1_000_000, ge=1000)
    # How long stored responses (/v1/responses with store) are kept, in days (OpenAI: 30).
    responses_retention_days: float = Field(default=30.0, gt=0, le=3650)
    # Serve the bundled embedding model (all-MiniLM-L6-v2) beside the chat model(s), unless
    # oasis.toml lists models (then list it there with kind = "embedding" to keep it).
    embeddings: bool = True
    # Names that resolve to the bundled embedding model.
    embedding_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(OPENAI_EMBEDDING_ALIASES)
    )
    # Where converted models are cached (the bundled embedding model's GGUF).
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "oasis")
    # The largest file /v1/files accepts, in bytes (OpenAI: 200 MB for a batch input file).
    max_file_bytes: int = Field(default=200 * 1000 * 1000, ge=1024)
    # Local models load when first asked for and unload after keep_alive without requests
    # (seconds, or "30s", "5m", "1h"; -1: never). At most max_loaded load at once: to load
    # another, the least recently used idle one unloads. preload: loaded at start (default:
    # the first chat model; "none" for none).
    keep_alive: float = Field(default=300.0, allow_inf_nan=False)
    max_loaded: int = Field(default=3, ge=1, le=64)
    preload: Annotated[list[str], NoDecode] | None = None
    # Serve every model pulled into <data_dir>/models (`oasis pull`) beside the configured ones.
    pulled_models: bool = True
    # Longest a request waits for its model to be loaded (behind busy models when max_loaded
    # are loaded) before a 503 with Retry-After.
    model_wait_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    # Batches (/v1/batches): the price discount of a batch line (OpenAI: 0.5, half price) and
    # how many lines run at once, across all batches (default: the engine's slots; the engine
    # serves interactive requests first and keeps a slot for them while they come).
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    batch_concurrency: int | None = Field(default=None, ge=1, le=256)
    # How long a server's claim on a running batch lasts unrenewed: a server killed mid-batch
    # is taken over (by itself restarted, or another replica) after at most this long.
    batch_lease_seconds: float = Field(default=20.0, ge=1, le=3600)

    @field_validator("alias", "default_aliases", "embedding_aliases", "preload", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> Any:
        return parse_duration(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("OASIS_CONFIG", "oasis.toml")
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )


def load_settings(**overrides: Any) -> Settings:
    """Build settings; ``overrides`` are CLI flags (``None`` means "not given")."""
    given = {k: v for k, v in overrides.items() if v is not None and v != []}
    return Settings(**given)
