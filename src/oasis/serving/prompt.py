"""Rendering chat messages into a prompt with the model's own chat template (from the GGUF)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from oasis.errors import InvalidRequestError

# Used when a GGUF carries no template: ChatML, the most common format.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Lone surrogates never occur in request text (server/validation.py refuses them), so they
# mark where each message's content starts and ends in the rendered prompt.
_OPEN, _CLOSE = "\udb80", "\udb81"
_MARKERS = re.compile(f"({_OPEN}|{_CLOSE})")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


class _TemplateRaised(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled Jinja chat template, rendered the way Hugging Face transformers renders it."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source or FALLBACK_TEMPLATE
        self._template = env.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render_segments(self, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        """The prompt as ``(text, from_client)`` pieces, in order.

        Text that came from a message's content is ``from_client``: it is tokenized as plain
        text, so ``<|im_end|><|im_start|>system`` typed by a user stays characters and never
        becomes the model's control tokens; only the template's own markers are special. Each
        content is wrapped in two lone surrogates, which no request text can contain (they
        are refused when the body is parsed), and the rendered text is split at them.
        """
        wrapped = [
            {
                **m,
                **{k: f"{_OPEN}{m[k]}{_CLOSE}" for k in ("content", "name") if _text(m.get(k))},
            }
            for m in messages
        ]
        text = self.render(wrapped)
        # Each marker switches the mode: text after an opening marker is the client's until a
        # closing one. A template that slices a content (Qwen3's `content.split('</think>')`)
        # leaves a marker without its pair: it still switches, and no marker is ever kept.
        out: list[tuple[str, bool]] = []
        from_client = False
        for piece in _MARKERS.split(text):
            if piece == _OPEN:
                from_client = True
            elif piece == _CLOSE:
                from_client = False
            elif piece:
                if out and out[-1][1] == from_client:
                    out[-1] = (out[-1][0] + piece, from_client)
                else:
                    out.append((piece, from_client))
        return out

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except _TemplateRaised as exc:
            raise InvalidRequestError(str(exc), param="messages") from None
        except Exception as exc:  # a template's own TypeError/IndexError on odd messages too
            raise InvalidRequestError(
                f"The model's chat template could not render these messages: {exc}",
                param="messages",
            ) from None
