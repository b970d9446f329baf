"""POST /v1/chat/completions: messages -> chat template -> engine -> ChatCompletion(Chunk)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.chat.chat_completion_token_logprob import (
    ChatCompletionTokenLogprob,
    TopLogprob,
)

from oasis.engine.base import Engine, FinishEvent, GenerationRequest, TokenEvent, TokenLogprob
from oasis.errors import InvalidRequestError, UnsupportedParameterError
from oasis.protocol.requests import ChatCompletionRequest, ChatMessage, TextPart
from oasis.serving.common import (
    NO_METER,
    Meter,
    ServingContext,
    Target,
    check_context,
    fingerprint,
    new_id,
    parse_logit_bias,
    refuse_unsupported,
    sampling_params,
    submit_all,
    usage,
    usage_of,
    with_seed,
)
from oasis.serving.merge import merge
from oasis.serving.prompt import ChatTemplate
from oasis.serving.structured import grammar_for

SUPPORTED_ROLES = {"system", "developer", "user", "assistant"}


def _piece_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprob(lp: TokenLogprob) -> ChatCompletionTokenLogprob:
    return ChatCompletionTokenLogprob(
        token=_piece_text(lp.piece),
        bytes=list(lp.piece),
        logprob=lp.logprob if lp.logprob is not None else 0.0,
        top_logprobs=[
            TopLogprob(token=_piece_text(p), bytes=list(p), logprob=v) for p, v in lp.top
        ],
    )


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the chat template expects them; anything we cannot honour is refused."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m.role not in SUPPORTED_ROLES:
            raise UnsupportedParameterError(
                f"Messages with role '{m.role}' need tool calling, which oasis does not "
                "support yet.",
                param=f"messages.[{i}].role",
            )
        for name in ("tool_calls", "function_call", "audio", "tool_call_id"):
            if getattr(m, name) is not None:
                raise UnsupportedParameterError(
                    f"Unsupported parameter: 'messages.[{i}].{name}' is not supported by oasis "
                    "yet.",
                    param=f"messages.[{i}].{name}",
                )
        if m.content is None:
            if m.role != "assistant":
                raise InvalidRequestError(
                    f"Invalid value for 'messages.[{i}].content': expected a string or an "
                    "array of content parts, got null.",
                    param=f"messages.[{i}].content",
                    code="invalid_type",
                )
            text = ""
        elif isinstance(m.content, str):
            text = m.content
        else:
            parts: list[str] = []
            for j, part in enumerate(m.content):
                if not isinstance(part, TextPart):
                    raise UnsupportedParameterError(
                        f"Content parts of type '{part.type}' are not supported by this model; "
                        "only 'text' parts are.",
                        param=f"messages.[{i}].content.[{j}].type",
                    )
                parts.append(part.text)
            text = "".join(parts)
        role = "system" if m.role == "developer" else m.role
        entry: dict[str, Any] = {"role": role, "content": text}
        if m.name is not None:
            entry["name"] = m.name
        out.append(entry)
    return out


def _text_of(m: ChatMessage) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    return " ".join(p.text for p in m.content if isinstance(p, TextPart))


@dataclass
class _ChoiceState:
    text: list[str] = field(default_factory=list)
    logprobs: list[ChatCompletionTokenLogprob] = field(default_factory=list)
    finish: FinishEvent | None = None


class ChatService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        self._templates: dict[str, ChatTemplate] = {}

    def _template(self, target: Target) -> ChatTemplate:
        t = self._templates.get(target.spec.id)
        if t is None:
            info = target.engine.info
            t = ChatTemplate(info.chat_template, bos_token=info.bos_token, eos_token=info.eos_token)
            self._templates[target.spec.id] = t
        return t

    def prompt_tokens(self, target: Target, messages: list[ChatMessage]) -> list[int]:
        engine = target.engine
        text = self._template(target).render(message_dicts(messages))
        bos = engine.info.bos_token
        add_special = engine.info.add_bos and not (bos and text.startswith(bos))
        return engine.tokenize(text, add_special=add_special, parse_special=True)

    async def create(
        self, req: ChatCompletionRequest, meter: Meter = NO_METER
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        target = self.ctx.target(req.model)
        refuse_unsupported(req.unsupported())
        engine = target.engine
        prompt = self.prompt_tokens(target, req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens
        budget = check_context(
            engine.info.n_ctx, len(prompt), max_tokens, what="messages", param="messages"
        )
        params = sampling_params(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repeat_penalty=req.repeat_penalty,
            logit_bias=parse_logit_bias(req.logit_bias, engine.info.n_vocab),
            seed=req.seed,
        )
        n = req.n or 1
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        grammar = self._grammar(req, engine)
        gens = [
            GenerationRequest(
                prompt=prompt,
                max_tokens=budget,
                sampling=with_seed(params, i),
                stop=req.stop_list(),
                logprobs=logprobs,
                grammar=grammar,
            )
            for i in range(n)
        ]
        # the rate limit reserves what the request may use: prompt + max_tokens per choice
        await meter.admit(len(prompt), (max_tokens or 0) * n)
        handles = submit_all(engine, gens)
        meter.track(handles)
        meta = {
            "id": new_id("chatcmpl"),
            "created": int(self.ctx.clock()),
            "model": target.requested,
            "system_fingerprint": fingerprint(target.spec),
        }
        if req.service_tier is not None:
            meta["service_tier"] = "default"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._stream(
                handles, meta, n, len(prompt), logprobs is not None, include_usage, meter
            )
        return await self._complete(handles, meta, n, len(prompt), logprobs is not None, meter)

    @staticmethod
    def _grammar(req: ChatCompletionRequest, engine: Engine) -> str | None:
        """The grammar response_format asks for, checked against the engine (a 400 if it
        cannot be enforced)."""
        fmt = req.response_format
        if (
            fmt is not None
            and fmt.get("type") == "json_object"
            and not any("json" in _text_of(m).lower() for m in req.messages)
        ):
            raise InvalidRequestError(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                param="messages",
                code="invalid_value",
            )
        grammar = grammar_for(fmt)
        if grammar is not None:
            try:
                engine.check_grammar(grammar)
            except ValueError as exc:
                raise UnsupportedParameterError(
                    f"Structured outputs: the engine cannot enforce this schema ({exc}); the "
                    "request is refused rather than answered unconstrained.",
                    param="response_format",
                ) from None
        return grammar

    async def _complete(
        self,
        handles: list[Any],
        meta: dict[str, Any],
        n: int,
        n_prompt: int,
        want_lp: bool,
        meter: Meter,
    ) -> ChatCompletion:
        states = [_ChoiceState() for _ in range(n)]
        async for i, ev in merge(handles, meter.first_token):
            st = states[i]
            if isinstance(ev, TokenEvent):
                st.text.append(ev.text)
                if ev.logprob is not None:
                    st.logprobs.append(chat_logprob(ev.logprob))
            else:
                st.text.append(ev.text)
                st.finish = ev
        choices = []
        for i, st in enumerate(states):
            assert st.finish is not None
            choices.append(
                Choice(
                    index=i,
                    message=ChatCompletionMessage(
                        role="assistant", content="".join(st.text), refusal=None
                    ),
                    logprobs=ChoiceLogprobs(content=st.logprobs, refusal=None) if want_lp else None,
                    finish_reason=st.finish.reason,
                )
            )
        return ChatCompletion(
            object="chat.completion",
            choices=choices,
            usage=usage_of(n_prompt, (st.finish for st in states if st.finish is not None)),
            **meta,
        )

    async def _stream(
        self,
        handles: list[Any],
        meta: dict[str, Any],
        n: int,
        n_prompt: int,
        want_lp: bool,
        include_usage: bool,
        meter: Meter,
    ) -> AsyncIterator[ChatCompletionChunk]:
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(
            i: int,
            delta: ChoiceDelta,
            finish: Any = None,
            lps: list[ChatCompletionTokenLogprob] | None = None,
        ) -> ChatCompletionChunk:
            kw: dict[str, Any] = {}
            if want_lp:
                kw["logprobs"] = ChunkLogprobs(content=lps or [], refusal=None)
            choice = ChunkChoice(index=i, delta=delta, finish_reason=finish, **kw)
            return ChatCompletionChunk(
                object="chat.completion.chunk", choices=[choice], **meta, **extra
            )

        for i in range(n):
            yield chunk(i, ChoiceDelta(role="assistant", content="", refusal=None))
        completion_tokens = 0
        cached = 0
        async for i, ev in merge(handles, meter.first_token):
            if isinstance(ev, TokenEvent):
                lps = [chat_logprob(ev.logprob)] if ev.logprob is not None else []
                if ev.text or lps:
                    yield chunk(i, ChoiceDelta(content=ev.text), lps=lps)
            else:
                if ev.text:
                    yield chunk(i, ChoiceDelta(content=ev.text))
                completion_tokens += ev.completion_tokens
                cached = max(cached, ev.cached_tokens)
                yield chunk(i, ChoiceDelta(), finish=ev.reason)
        if include_usage:
            yield ChatCompletionChunk(
                object="chat.completion.chunk",
                choices=[],
                usage=usage(n_prompt, completion_tokens, cached),
                **meta,
            )
