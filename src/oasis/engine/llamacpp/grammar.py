"""Grammars (structured outputs): compiled once per text, sampled under, looked ahead in."""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import llama_cpp as L
import numpy as np

from oasis.engine.llamacpp.sampling import (
    TOKEN_DATA,
    Sampler,
    TokenBuffer,
    logits_row,
    token_array,
)


class GrammarError(ValueError):
    """llama.cpp could not build a sampler from the grammar."""


def compile_grammar(vocab: Any, gbnf: str) -> Any:
    """A llama.cpp grammar sampler, or GrammarError: a constraint that cannot be built is
    refused, never dropped."""
    sampler = L.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        raise GrammarError("llama.cpp could not parse the grammar")
    return sampler


class GrammarCache:
    """Compiled grammars by their text, parsed once and cloned for each sequence.

    Parsing a grammar is the expensive part (and, for a big one, too slow to repeat on the
    engine thread for every sequence of every request); ``llama_sampler_clone`` copies the
    parsed rules in their initial state. Serving prepares a request's grammar off the event
    loop (``prepare``); the engine thread clones it (``clone``). The kept templates are never
    sampled with. At most ``size`` are kept, least recently used dropped first.
    """

    def __init__(self, vocab: Any, size: int = 64) -> None:
        self.vocab = vocab
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Any] = OrderedDict()

    def prepare(self, gbnf: str) -> None:
        """Compile ``gbnf`` (GrammarError if llama.cpp cannot) unless it is cached."""
        with self._lock:
            if gbnf in self._items:
                self._items.move_to_end(gbnf)
                return
        sampler = compile_grammar(self.vocab, gbnf)  # outside the lock: may take a while
        with self._lock:
            if gbnf in self._items:
                L.llama_sampler_free(sampler)
                return
            self._items[gbnf] = sampler
            while len(self._items) > self.size:
                _, old = self._items.popitem(last=False)
                L.llama_sampler_free(old)

    def clone(self, gbnf: str) -> Any:
        """A fresh grammar sampler for one sequence."""
        while True:
            with self._lock:
                template = self._items.get(gbnf)
                if template is not None:
                    self._items.move_to_end(gbnf)
                    return L.llama_sampler_clone(template)
            self.prepare(gbnf)  # evicted since serving prepared it: compile again

    def close(self) -> None:
        with self._lock:
            for sampler in self._items.values():
                L.llama_sampler_free(sampler)
            self._items.clear()


# Characters the look-ahead tries one at a time (each is a token of its own in every
# byte-level vocabulary): what JSON's structure is written with, and more.
PROBE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "\n\t"
_SPACES = " \n\t"


class Probes:
    """The single-character tokens of a vocabulary, for looking ahead in a grammar."""

    def __init__(self, pieces: list[bytes], tokenize: Callable[[str], list[int]]) -> None:
        self.pieces = pieces
        # each character as the tokenizer writes it, where that is one token
        found = [(c, t[0]) for c in PROBE_CHARS if len(t := tokenize(c)) == 1]
        self.chars = [c for c, _ in found]
        self.ids = np.array([t for _, t in found], dtype=np.int32)
        self.token = dict(found)
        self._buf = np.zeros(len(found), dtype=TOKEN_DATA)

    def allowed(self, grammar: Any) -> list[str]:
        """The probe characters ``grammar`` accepts next (one llama.cpp call)."""
        buf = self._buf
        buf["id"] = self.ids
        buf["logit"] = 0.0
        arr = token_array(buf.ctypes.data, len(buf))
        L.llama_sampler_apply(grammar, ctypes.byref(arr))
        return [self.chars[i] for i in np.flatnonzero(np.isfinite(buf["logit"]))]


class ConstrainedSampler:
    """A sampler under a grammar (structured outputs).

    Checking the grammar against every token of the vocabulary at every step is what makes
    constrained decoding slow, so, as llama.cpp's own common sampler does, the base sampler
    draws first and only the drawn token is checked; only when the grammar rejects it is the
    grammar applied to the whole vocabulary and the base sampler asked again. Both then accept
    the token. The output follows the distribution the grammar leaves: a token the grammar
    allows is kept with its own probability, and a rejected draw is replaced by a draw from
    the allowed tokens alone.
    """

    def __init__(self, base: Sampler, grammar: Any, n_vocab: int, probes: Probes) -> None:
        self.base = base
        self.grammar = grammar
        self.n_vocab = n_vocab
        self.probes = probes
        self._tokens = TokenBuffer(n_vocab)
        self._one = (L.llama_token_data * 1)()
        self._pieces = probes.pieces
        # How this output writes JSON: whether a space came between two characters (the
        # grammars let an optional space follow punctuation and values), learnt from the
        # output so far; before any example, the style of Python's json.dumps.
        self._spaced: dict[tuple[str, str], bool] = {}
        self._tail = ("", "")  # the output's last two characters

    def _allowed(self, token: int) -> bool:
        self._one[0].id = token
        self._one[0].logit = 0.0
        self._one[0].p = 0.0
        arr = token_array(self._one, 1)
        L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return bool(np.isfinite(self._one[0].logit))

    def _masked(self, row: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        self._tokens.apply(self.grammar, row)
        return self._tokens.logits()

    def sample(self, ctx: Any, index: int) -> int:
        row = logits_row(ctx, index, self.n_vocab)
        return self.sample_row(row)

    def sample_row(self, row: np.ndarray[Any, Any]) -> int:
        token = self.base.sample_row(row)
        if not self._allowed(token):
            token = self.base.sample_row(self._masked(row))
        self.accept(token)
        return token

    def accept(self, token: int) -> None:
        L.llama_sampler_accept(self.grammar, token)
        self.base.accept(token)
        self._learn(self._pieces[token].decode("utf-8", "replace"))

    def _learn(self, text: str) -> None:
        before, last = self._tail
        for ch in text:
            if ch != " ":
                if last == " " and before not in ("", " "):
                    self._spaced[(before, ch)] = True
                elif last not in ("", " "):
                    self._spaced[(last, ch)] = False
            before, last = last, ch
        self._tail = (before, last)

    def _choose(self, allowed: list[str], prev: str) -> str | None:
        """The next character where the grammar allows exactly one, or one and an optional
        space (guessed from this output's own style); None where the model has a real choice.
        A wrong guess costs only the rest of that draft: verification keeps what the model
        would have written."""
        if len(allowed) == 1:
            return allowed[0]
        if len(allowed) != 2 or " " not in allowed:
            return None
        solid = allowed[0] if allowed[1] == " " else allowed[1]
        if solid in _SPACES:
            return None
        return " " if self._spaced.get((prev, solid), prev in ":,") else solid

    def forced_text(self, limit: int) -> str:
        """The text the grammar forces next, up to ``limit`` characters. Found by trying
        single characters: the text stops where the model has a choice, where the grammar
        ends, or where only a character that is not a probe fits (non-ASCII text)."""
        probes = self.probes
        first = self._choose(probes.allowed(self.grammar), self._tail[1])
        if first is None:
            return ""
        out = [first]
        look = L.llama_sampler_clone(self.grammar)
        try:
            while len(out) < limit:
                L.llama_sampler_accept(look, probes.token[out[-1]])
                allowed = probes.allowed(look)
                prev = out[-1] if out[-1] != " " or len(out) < 2 else out[-2]
                nxt = self._choose(allowed, prev)
                if nxt is None:
                    break
                out.append(nxt)
        finally:
            L.llama_sampler_free(look)
        return "".join(out)

    def free(self) -> None:
        self.base.free()
        L.llama_sampler_free(self.grammar)
