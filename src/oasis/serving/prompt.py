"""Rendering chat messages into a prompt with the model's own chat template (from the GGUF)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2 import TemplateError
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
            {**m, "content": f"{_OPEN}{m['content']}{_CLOSE}"}
            if isinstance(m.get("content"), str) and m["content"]
            else m
            for m in messages
        ]
        text = self.render(wrapped)
        out: list[tuple[str, bool]] = []
        rest = text
        while rest:
            start = rest.find(_OPEN)
            if start < 0:
                break
            end = rest.find(_CLOSE, start + 1)
            if end < 0:
                break
            if start:
                out.append((rest[:start], False))
            inner = rest[start + 1 : end]
            if _OPEN in inner:  # a template that nests or slices contents: not ours to split
                break
            out.append((inner, True))
            rest = rest[end + 1 :]
        else:
            return out
        if _OPEN in rest or _CLOSE in rest:
            # The template cut a content apart (a slice, a filter that reorders): its markers
            # cannot be told from the content's, so all of the text is treated as content.
            return [(text.replace(_OPEN, "").replace(_CLOSE, ""), True)]
        out.append((rest, False))
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
        except TemplateError as exc:
            raise InvalidRequestError(
                f"The model's chat template could not render these messages: {exc}",
                param="messages",
            ) from None
