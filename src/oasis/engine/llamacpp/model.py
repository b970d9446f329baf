"""Loading a GGUF model with llama.cpp's C API, and its vocabulary."""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as L

from oasis.errors import ConfigError

log = logging.getLogger(__name__)

_native_log = logging.getLogger("oasis.llama_cpp")


@L.llama_log_callback  # type: ignore[untyped-decorator,misc]
def _forward_native_log(level: int, text: bytes, user_data: Any) -> None:
    """llama.cpp's own log lines go to Python logging at DEBUG (failures surface as errors)."""
    if _native_log.isEnabledFor(logging.DEBUG):
        _native_log.debug(text.decode("utf-8", errors="replace").rstrip())


L.llama_log_set(_forward_native_log, ctypes.c_void_p(0))


@dataclass
class LoadedModel:
    """A llama.cpp model and its vocabulary, with every token's bytes precomputed."""

    model: Any
    vocab: Any
    n_vocab: int
    n_ctx_train: int
    pieces: list[bytes]
    chat_template: str | None
    bos_id: int
    eos_id: int
    add_bos: bool
    description: str

    @classmethod
    def load(cls, path: Path) -> LoadedModel:
        if not path.is_file():
            raise ConfigError(f"model file not found: {path}")
        L.llama_backend_init()
        params = L.llama_model_default_params()
        model = L.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ConfigError(f"llama.cpp could not load {path} (is it a GGUF file?)")
        vocab = L.llama_model_get_vocab(model)
        n_vocab = L.llama_vocab_n_tokens(vocab)
        buf = ctypes.create_string_buffer(256)
        pieces: list[bytes] = []
        for tok in range(n_vocab):
            n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, False)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                n = L.llama_token_to_piece(vocab, tok, big, len(big), 0, False)
                pieces.append(big.raw[:n])
            else:
                pieces.append(buf.raw[:n])
        template = L.llama_model_chat_template(model, None)
        desc = ctypes.create_string_buffer(256)
        L.llama_model_desc(model, desc, len(desc))
        return cls(
            model=model,
            vocab=vocab,
            n_vocab=n_vocab,
            n_ctx_train=L.llama_model_n_ctx_train(model),
            pieces=pieces,
            chat_template=template.decode() if template else None,
            bos_id=L.llama_vocab_bos(vocab),
            eos_id=L.llama_vocab_eos(vocab),
            add_bos=bool(L.llama_vocab_get_add_bos(vocab)),
            description=desc.value.decode(errors="replace"),
        )

    def token_text(self, token: int) -> str:
        """A special token's text as the chat template writes it (e.g. ``<|im_end|>``)."""
        if token < 0 or token >= self.n_vocab:
            return ""
        raw = L.llama_vocab_get_text(self.vocab, token)
        return raw.decode(errors="replace") if raw else ""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        cap = len(data) + 8
        out = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            out = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        return list(out[:n])

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def free(self) -> None:
        if self.model:
            L.llama_model_free(self.model)
            self.model = None
