"""POST /v1/chat/completions: messages -> chat template -> engine -> ChatCompletion(Chunk)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
)
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.chat.chat_completion_message import FunctionCall
from openai.types.chat.chat_completion_message_function_tool_call import (
    Function as ToolFunction,
)
from openai.types.chat.chat_completion_token_logprob import (
    ChatCompletionTokenLogprob,
    TopLogprob,
)

from oasis.engine.base import Engine, FinishEvent, GenerationRequest, TokenEvent, TokenLogprob
from oasis.errors import InvalidRequestError, UnsupportedParameterError
from oasis.protocol.formats import JSONObjectFormat, format_dict
from oasis.protocol.requests import ChatCompletionRequest, ChatMessage, TextPart
from oasis.protocol.tools import FunctionToolCall, ToolCall
from oasis.serving import tools as tools_mod
from oasis.serving.common import (
    NO_METER,
    EngineStream,
    Meter,
    ServingContext,
    StreamTally,
    Target,
    check_context,
    check_sequences,
    fingerprint,
    new_id,
    refuse_unsupported,
    sampling_params,
    submit_all,
    usage_of,
    with_seed,
)
from oasis.serving.merge import merge
from oasis.serving.prompt import ChatTemplate
from oasis.serving.structured import answer_grammar, answer_schema


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


def _content_text(m: ChatMessage, at: str) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    parts: list[str] = []
    for j, part in enumerate(m.content):
        if not isinstance(part, TextPart):
            raise UnsupportedParameterError(
                f"Content parts of type '{part.type}' are not supported by this model; "
                "only 'text' parts are.",
                param=f"{at}.content.[{j}].type",
            )
        parts.append(part.text)
    return "".join(parts)


def _history_call(call: ToolCall, at: str) -> tuple[str, str, str]:
    """(id, name, arguments) of a tool call in an earlier assistant message (its shape is
    checked by the protocol)."""
    if not isinstance(call, FunctionToolCall):
        raise UnsupportedParameterError(
            f"Tool calls of type {call.type!r} are not supported by oasis.",
            param=f"{at}.type",
        )
    return call.id, call.function.name, call.function.arguments


def _unanswered(pending: dict[str, str], index: int) -> InvalidRequestError:
    return InvalidRequestError(
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(pending),
        param=f"messages.[{index}].role",
        code="invalid_value",
    )


def message_dicts(messages: list[ChatMessage], tools: str | None = None) -> list[dict[str, Any]]:
    """Messages as the chat template expects them; anything we cannot honour is refused.

    Earlier tool calls become text in the assistant turn and their results a user turn of
    ``<tool_response>`` blocks (see serving/tools/), so any chat template can render them;
    ``tools`` (the description of the functions) joins the system message.
    """
    out: list[dict[str, Any]] = []
    pending: dict[str, str] = {}  # tool_call_id -> function name, still waiting for a result
    pending_at = -1
    responses = -1  # index in out of the user turn collecting tool results
    for i, m in enumerate(messages):
        at = f"messages.[{i}]"
        if m.audio is not None:
            raise UnsupportedParameterError(
                f"Unsupported parameter: '{at}.audio' is not supported by oasis yet.",
                param=f"{at}.audio",
            )
        if m.role in ("tool", "function"):
            # a function's result may be null (OpenAI's function message); a tool's may not
            if m.content is None and m.role == "tool":
                raise InvalidRequestError(
                    f"Invalid value for '{at}.content': expected a string or an array of "
                    "content parts, got null.",
                    param=f"{at}.content",
                    code="invalid_type",
                )
            if m.role == "tool":
                if m.tool_call_id is None:
                    raise InvalidRequestError(
                        f"Missing required parameter: '{at}.tool_call_id'.",
                        param=f"{at}.tool_call_id",
                        code="missing_required_parameter",
                    )
                if m.tool_call_id not in pending:
                    raise InvalidRequestError(
                        "Invalid parameter: messages with role 'tool' must be a response to a "
                        f"preceding message with 'tool_calls' (no call {m.tool_call_id!r} is "
                        "waiting for its result).",
                        param=f"{at}.role",
                        code="invalid_value",
                    )
                name: str | None = pending.pop(m.tool_call_id)
            else:
                if m.name is None:
                    raise InvalidRequestError(
                        f"Missing required parameter: '{at}.name' (messages with role "
                        "'function' name the function whose result they hold).",
                        param=f"{at}.name",
                        code="missing_required_parameter",
                    )
                name = m.name
            block = tools_mod.response_text(name, _content_text(m, at))
            if responses == len(out) - 1 and responses >= 0:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
                responses = len(out) - 1
            continue
        if pending:
            raise _unanswered(pending, pending_at)
        for key in (
            ("tool_call_id",)
            if m.role == "assistant"
            else ("tool_call_id", "tool_calls", "function_call")
        ):
            if getattr(m, key) is not None:
                raise InvalidRequestError(
                    f"Invalid parameter: '{at}.{key}' is only allowed on messages with role "
                    f"'{'tool' if key == 'tool_call_id' else 'assistant'}'.",
                    param=f"{at}.{key}",
                    code="invalid_value",
                )
        if m.content is None and m.role != "assistant":
            raise InvalidRequestError(
                f"Invalid value for '{at}.content': expected a string or an array of "
                "content parts, got null.",
                param=f"{at}.content",
                code="invalid_type",
            )
        text = _content_text(m, at)
        calls: list[str] = []
        for j, raw in enumerate(m.tool_calls or []):
            call_id, fn_name, arguments = _history_call(raw, f"{at}.tool_calls[{j}]")
            pending[call_id] = fn_name
            calls.append(tools_mod.call_text(fn_name, arguments))
        pending_at = i
        if m.function_call is not None:
            calls.append(tools_mod.call_text(m.function_call.name, m.function_call.arguments))
        if calls:
            text = "\n".join([text, *calls] if text else calls)
        role = "system" if m.role == "developer" else m.role
        entry: dict[str, Any] = {"role": role, "content": text}
        if m.name is not None:
            entry["name"] = m.name
        out.append(entry)
    if pending:
        raise _unanswered(pending, pending_at)
    if tools:
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{tools}"
        else:
            out.insert(0, {"role": "system", "content": tools})
    return out


@dataclass
class _ChoiceState:
    reply: tools_mod.ReplyParser | None
    text: list[str] = field(default_factory=list)
    logprobs: list[ChatCompletionTokenLogprob] = field(default_factory=list)
    finish: FinishEvent | None = None

    def feed(self, text: str) -> list[tools_mod.Event]:
        """The text's events: plain text, or tool calls when the plan allows them."""
        if self.reply is None:
            return [tools_mod.Text(text)] if text else []
        return self.reply.feed(text)

    def finish_reason(self, plan: tools_mod.ToolPlan | None) -> Any:
        assert self.finish is not None
        # a call cut short (max_tokens, a stop sequence) keeps the engine's reason; a reply
        # parser exists only under a tool plan
        if self.reply is not None and self.reply.complete and self.finish.reason == "stop":
            assert plan is not None
            return "function_call" if plan.legacy else "tool_calls"
        return self.finish.reason


def _text_size(m: ChatMessage) -> int:
    """Characters of a message's text (content, and tool-call arguments)."""
    size = 0
    if isinstance(m.content, str):
        size += len(m.content)
    elif m.content is not None:
        size += sum(len(p.text) for p in m.content if isinstance(p, TextPart))
    for call in m.tool_calls or []:
        size += len(str(call))
    if m.function_call is not None:
        size += len(str(m.function_call))
    return size


@dataclass
class _Prepared:
    """A chat request ready for admission: its sequences and what the reply needs."""

    plan: tools_mod.ToolPlan | None
    n_prompt: int
    max_tokens: int | None  # as requested
    budget: int  # completion tokens each choice may use (max_tokens, or the context left)
    gens: list[GenerationRequest]
    want_lp: bool


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

    def prompt_tokens(
        self, target: Target, messages: list[ChatMessage], tools: str | None = None
    ) -> list[int]:
        """The rendered conversation as tokens. Only the chat template's own markers become
        special tokens; the messages' text is tokenized as text (no role injection)."""
        engine = target.engine
        segments = self._template(target).render_segments(message_dicts(messages, tools))
        bos = engine.info.bos_token
        first = segments[0][0] if segments and not segments[0][1] else ""
        tokens: list[int] = []
        if engine.info.add_bos and not (bos and first.startswith(bos)):
            tokens = engine.tokenize("", add_special=True, parse_special=False)
        for text, from_client in segments:
            if text:
                tokens += engine.tokenize(text, add_special=False, parse_special=not from_client)
        return tokens

    def _prepare(self, req: ChatCompletionRequest, target: Target) -> _Prepared:
        """Everything before admission: checks, prompt, grammar, the engine's requests. Pure
        CPU work, run off the event loop for big requests (ServingContext.prepare)."""
        refuse_unsupported(req.unsupported())
        engine = target.engine
        plan = tools_mod.plan_tools(req)
        tools_text = tools_mod.system_text(plan) if plan is not None else None
        prompt = self.prompt_tokens(target, req.messages, tools_text)
        # the markup a forced call must start with is prompt, not sampled completion
        prefill = tools_mod.prefill(plan)
        if prefill:
            prompt += engine.tokenize(prefill, add_special=False, parse_special=False)
        max_tokens = req.max_completion_tokens or req.max_tokens
        budget = check_context(
            engine.info.n_ctx, len(prompt), max_tokens, what="messages", param="messages"
        )
        params = sampling_params(req, engine.info.n_vocab)
        n = req.n or 1
        check_sequences(engine, n, "n")  # a 400 before admission takes from the limits
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        hidden = tools_mod.hidden_stops(plan, req)
        grammar = self._grammar(req, engine, plan, bool(hidden))
        gens = [
            GenerationRequest(
                prompt=prompt,
                max_tokens=budget,
                sampling=with_seed(params, i),
                stop=req.stop_list() + hidden,
                logprobs=logprobs,
                grammar=grammar,
                prompt_lookup=req.prompt_lookup,
            )
            for i in range(n)
        ]
        return _Prepared(plan, len(prompt), max_tokens, budget, gens, logprobs is not None)

    def _check_size(self, req: ChatCompletionRequest) -> bool:
        """The message count and text size limits; whether the request is big enough to be
        prepared in a worker thread."""
        limits = self.ctx.limits
        self.ctx.check_messages(len(req.messages))
        chars = sum(_text_size(m) for m in req.messages)
        self.ctx.check_chars(chars, param="messages")
        constrained = bool(req.tools or req.functions or req.response_format)
        many = len(req.messages) > 64  # templating and tokenizing each one add up
        return constrained or many or chars > limits.inline_chars

    async def create(
        self, req: ChatCompletionRequest, meter: Meter = NO_METER
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        target = self.ctx.target(req.model)
        heavy = self._check_size(req)
        prep = await self.ctx.prepare(heavy, lambda: self._prepare(req, target))
        n = len(prep.gens)
        # the rate limit reserves prompt + max_tokens per choice; the budget holds the most
        # the request can cost (without max_tokens: the context left, per choice)
        await meter.admit(
            prep.n_prompt, (prep.max_tokens or 0) * n, worst_completion_tokens=prep.budget * n
        )
        handles = submit_all(target.engine, prep.gens)
        meter.track(handles)
        reply = _Reply(
            meta={
                "id": new_id("chatcmpl"),
                "created": int(self.ctx.clock()),
                "model": target.requested,
                "system_fingerprint": fingerprint(target.spec),
            },
            n=n,
            n_prompt=prep.n_prompt,
            want_lp=prep.want_lp,
            plan=prep.plan,
            meter=meter,
        )
        if req.service_tier is not None:
            reply.meta["service_tier"] = "default"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EngineStream(reply.stream(handles, include_usage), handles)
        return await reply.complete(handles)

    @staticmethod
    def _grammar(
        req: ChatCompletionRequest,
        engine: Engine,
        plan: tools_mod.ToolPlan | None,
        hidden_stops: bool,
    ) -> str | None:
        """The grammar response_format and the tools ask for, checked against the engine (a
        400 if it cannot be enforced); with ``hidden_stops`` (no call can be made after tool
        markup), one that keeps an answer from starting with a tag."""
        fmt = req.response_format
        if isinstance(fmt, JSONObjectFormat) and not any(
            "json" in _content_text(m, f"messages.[{i}]").lower()
            for i, m in enumerate(req.messages)
        ):
            raise InvalidRequestError(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                param="messages",
                code="invalid_value",
            )
        answer = answer_schema(format_dict(fmt))
        if plan is not None:
            grammar: str | None = tools_mod.tool_grammar(plan, answer, prefilled=True)
            param = "functions" if plan.legacy else "tools"
        elif answer is not None:
            grammar = answer_grammar(answer)
            param = "response_format"
        elif hidden_stops:
            grammar, param = tools_mod.NO_LEADING_TAG, "tool_choice"
        else:
            return None
        assert grammar is not None
        try:
            engine.check_grammar(grammar)
        except ValueError as exc:
            raise UnsupportedParameterError(
                f"Structured outputs: the engine cannot enforce this schema ({exc}); the "
                "request is refused rather than answered unconstrained.",
                param=param,
            ) from None
        return grammar


@dataclass
class _Reply:
    """One response's choices, built from the engine's events (a body or a chunk stream)."""

    meta: dict[str, Any]
    n: int
    n_prompt: int
    want_lp: bool
    plan: tools_mod.ToolPlan | None
    meter: Meter

    def _states(self) -> list[_ChoiceState]:
        return [
            _ChoiceState(
                tools_mod.ReplyParser.for_plan(self.plan) if self.plan is not None else None
            )
            for _ in range(self.n)
        ]

    def _message(self, st: _ChoiceState) -> ChatCompletionMessage:
        text = "".join(st.text)
        if st.reply is None or not st.reply.is_calls:
            return ChatCompletionMessage(role="assistant", content=text, refusal=None)
        calls = st.reply.calls
        assert self.plan is not None
        if not calls:
            # cut (max_tokens) before a call got its name: nothing to return but the empty
            # text, never a null tool_calls / function_call (OpenAI's schema has none)
            return ChatCompletionMessage(role="assistant", content=text, refusal=None)
        if self.plan.legacy:
            fc = FunctionCall(name=calls[0].name, arguments="".join(calls[0].arguments))
            return ChatCompletionMessage(
                role="assistant", content=None, refusal=None, function_call=fc
            )
        return ChatCompletionMessage(
            role="assistant",
            content=None,
            refusal=None,
            tool_calls=[
                ChatCompletionMessageFunctionToolCall(
                    id=c.id,
                    type="function",
                    function=ToolFunction(name=c.name, arguments="".join(c.arguments)),
                )
                for c in calls
            ],
        )

    async def complete(self, handles: list[Any]) -> ChatCompletion:
        states = self._states()
        async for i, ev in merge(handles, self.meter.first_token):
            st = states[i]
            for e in st.feed(ev.text):
                if isinstance(e, tools_mod.Text):
                    st.text.append(e.text)
            if isinstance(ev, TokenEvent):
                if ev.logprob is not None:
                    st.logprobs.append(chat_logprob(ev.logprob))
            else:
                st.finish = ev
                for e in st.reply.finish() if st.reply is not None else []:
                    if isinstance(e, tools_mod.Text):
                        st.text.append(e.text)
        choices = []
        for i, st in enumerate(states):
            assert st.finish is not None
            reason = st.finish_reason(self.plan)
            self.meter.choice_ended(i, reason)
            choices.append(
                Choice(
                    index=i,
                    message=self._message(st),
                    logprobs=(
                        ChoiceLogprobs(content=st.logprobs, refusal=None) if self.want_lp else None
                    ),
                    finish_reason=reason,
                )
            )
        return ChatCompletion(
            object="chat.completion",
            choices=choices,
            usage=usage_of(self.n_prompt, (st.finish for st in states if st.finish is not None)),
            **self.meta,
        )

    def _delta(self, e: tools_mod.Event, first: bool) -> ChoiceDelta:
        """A stream delta for one event; the first of a choice carries the role."""
        head: dict[str, Any] = {"role": "assistant", "refusal": None} if first else {}
        if isinstance(e, tools_mod.Text):
            return ChoiceDelta(content=e.text, **head)
        if first:
            head["content"] = None
        assert self.plan is not None
        if isinstance(e, tools_mod.CallStart):
            if self.plan.legacy:
                return ChoiceDelta(
                    function_call=ChoiceDeltaFunctionCall(name=e.call.name, arguments=""), **head
                )
            call = ChoiceDeltaToolCall(
                index=e.index,
                id=e.call.id,
                type="function",
                function=ChoiceDeltaToolCallFunction(name=e.call.name, arguments=""),
            )
            return ChoiceDelta(tool_calls=[call], **head)
        if self.plan.legacy:
            return ChoiceDelta(function_call=ChoiceDeltaFunctionCall(arguments=e.fragment), **head)
        call = ChoiceDeltaToolCall(
            index=e.index, function=ChoiceDeltaToolCallFunction(arguments=e.fragment)
        )
        return ChoiceDelta(tool_calls=[call], **head)

    async def stream(
        self, handles: list[Any], include_usage: bool
    ) -> AsyncIterator[ChatCompletionChunk]:
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        want_lp = self.want_lp

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
                object="chat.completion.chunk", choices=[choice], **self.meta, **extra
            )

        states = self._states()
        # Plain text: the role goes first, at once. With tools, it goes with the first event,
        # when the reply is known to be text or calls (OpenAI's content "" or null).
        started = [st.reply is None for st in states]
        for i in range(self.n):
            if started[i]:
                yield chunk(i, ChoiceDelta(role="assistant", content="", refusal=None))
        tally = StreamTally(self.n_prompt)
        async for i, ev in merge(handles, self.meter.first_token):
            st = states[i]
            events = st.feed(ev.text)
            final = isinstance(ev, FinishEvent)
            if final and st.reply is not None:
                events += st.reply.finish()
            lps = (
                [chat_logprob(ev.logprob)]
                if isinstance(ev, TokenEvent) and ev.logprob is not None
                else []
            )
            if st.logprobs and (events or final):  # the ones held back come first
                lps, st.logprobs = st.logprobs + lps, []
            elif lps and not started[i] and not final:  # the reply's shape is undecided
                st.logprobs, lps = st.logprobs + lps, []
            for e in events:
                yield chunk(i, self._delta(e, not started[i]), lps=lps)
                started[i], lps = True, []
            if final and not started[i]:  # nothing written: empty text, or a call cut early
                calls = st.reply is not None and st.reply.is_calls
                role = ChoiceDelta(role="assistant", content=None if calls else "", refusal=None)
                yield chunk(i, role, lps=lps)
                started[i], lps = True, []
            if lps:
                yield chunk(i, ChoiceDelta(), lps=lps)
            if isinstance(ev, FinishEvent):
                st.finish = ev
                tally.add(ev)
                reason = st.finish_reason(self.plan)
                self.meter.choice_ended(i, reason)
                yield chunk(i, ChoiceDelta(), finish=reason)
        if include_usage:
            yield ChatCompletionChunk(
                object="chat.completion.chunk",
                choices=[],
                usage=tally.usage(),
                **self.meta,
            )
