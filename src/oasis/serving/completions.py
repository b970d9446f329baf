"""POST /v1/completions (and the legacy /v1/engines/{engine}/completions): prompt -> text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from openai.types.completion import Completion
from openai.types.completion_choice import CompletionChoice, Logprobs

from oasis.engine.base import FinishEvent, GenerationRequest, TokenEvent, TokenLogprob
from oasis.errors import InvalidRequestError
from oasis.protocol.requests import CompletionRequest
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

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the completions endpoint


@dataclass
class _LogprobAcc:
    """Builds the completions-shaped logprobs: tokens, token_logprobs, top_logprobs, offsets."""

    offset: int = 0
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add(self, lp: TokenLogprob, *, first_of_prompt: bool = False) -> None:
        text = lp.piece.decode("utf-8", errors="replace")
        self.tokens.append(text)
        self.token_logprobs.append(lp.logprob)
        self.top_logprobs.append(
            None if first_of_prompt else {p.decode("utf-8", errors="replace"): v for p, v in lp.top}
        )
        self.text_offset.append(self.offset)
        self.offset += len(text)

    def build(self) -> Logprobs:
        # With echo, the first prompt token has no logprob: OpenAI sends null there, which the
        # SDK's type does not declare, so construct without validation.
        fields: dict[str, Any] = {
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        }
        return Logprobs.model_construct(**fields)

    def take(self) -> Logprobs:
        """For streaming: the entries added since the last take."""
        out = self.build()
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return out


@dataclass
class _Seq:
    prompt_index: int
    prompt: list[int]
    text: list[str] = field(default_factory=list)
    lps: list[TokenLogprob] = field(default_factory=list)
    finish: FinishEvent | None = None

    def mean_logprob(self) -> float:
        """best_of ranks candidates by log-probability per token, as OpenAI does."""
        return sum(lp.logprob or 0.0 for lp in self.lps) / max(1, len(self.lps))


def _prompt_total(seqs: list[_Seq]) -> int:
    """Prompt tokens billed once per prompt, however many choices it has."""
    seen: set[int] = set()
    total = 0
    for s in seqs:
        if s.prompt_index not in seen:
            seen.add(s.prompt_index)
            total += len(s.prompt)
    return total


@dataclass
class _Prepared:
    """A completions request ready for admission."""

    seqs: list[_Seq]
    gens: list[GenerationRequest]
    n_prompt: int
    max_tokens: int
    culprit: str  # the parameter to name if there are too many sequences
    n: int
    best_of: int


class CompletionService:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    def _prompts(self, target: Target, req: CompletionRequest) -> list[list[int]]:
        engine = target.engine
        p = req.prompt
        if p is None:
            p = ""
        if isinstance(p, str):
            texts: list[str] | None = [p]
        elif p and all(isinstance(x, str) for x in p):
            texts = [str(x) for x in p]
        else:
            texts = None
        if texts is not None:
            # prompt text is text: "<|im_end|>" in it stays characters, never a control token
            return [
                engine.tokenize(t, add_special=engine.info.add_bos, parse_special=False)
                for t in texts
            ]
        if not p:
            raise InvalidRequestError(
                "Invalid 'prompt': the prompt list is empty.", param="prompt", code="invalid_value"
            )
        lists = [p] if isinstance(p[0], int) else p
        out: list[list[int]] = []
        for tokens in lists:
            assert isinstance(tokens, list)
            for t in tokens:
                if not isinstance(t, int) or not 0 <= t < engine.info.n_vocab:
                    raise InvalidRequestError(
                        f"Invalid token in 'prompt': {t}. Token ids must be in "
                        f"[0, {engine.info.n_vocab - 1}].",
                        param="prompt",
                        code="invalid_value",
                    )
            out.append([t for t in tokens if isinstance(t, int)])
        return out

    def _check_size(self, req: CompletionRequest) -> bool:
        """The text size limit; whether the request is big enough to be prepared in a worker
        thread."""
        p = req.prompt
        if isinstance(p, str):
            chars = len(p)
        elif p and isinstance(p[0], str):
            chars = sum(len(x) for x in p if isinstance(x, str))
        else:
            chars = 0
        self.ctx.check_chars(chars, param="prompt")
        big_lists = isinstance(p, list) and len(p) > 64
        return chars > self.ctx.limits.inline_chars or big_lists

    async def create(
        self, req: CompletionRequest, meter: Meter = NO_METER
    ) -> Completion | AsyncIterator[Completion]:
        target = self.ctx.target(req.model)
        heavy = self._check_size(req)
        prep = await self.ctx.prepare(heavy, lambda: self._prepare(req, target))
        # the rate limit reserves what the request may use: prompts + max_tokens per sequence
        await meter.admit(prep.n_prompt, prep.max_tokens * len(prep.gens))
        handles = submit_all(target.engine, prep.gens, param=prep.culprit)
        meter.track(handles)
        meta = {
            "id": new_id("cmpl"),
            "created": int(self.ctx.clock()),
            "model": target.requested,
            "system_fingerprint": fingerprint(target.spec),
        }
        seqs = prep.seqs
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = self._stream(target, req, handles, seqs, meta, include_usage, meter)
            return EngineStream(chunks, handles)
        return await self._complete(target, req, handles, seqs, meta, prep.n, prep.best_of, meter)

    def _prepare(self, req: CompletionRequest, target: Target) -> _Prepared:
        """Checks, prompts, the engine's requests: pure CPU work, off the event loop for big
        requests (ServingContext.prepare)."""
        refuse_unsupported(req.unsupported())
        engine = target.engine
        n = req.n or 1
        best_of = req.best_of if req.best_of else n
        if best_of < n:
            raise InvalidRequestError(
                f"best_of must be greater than or equal to n (got best_of={best_of}, n={n}).",
                param="best_of",
                code="invalid_value",
            )
        if req.stream and req.echo and req.logprobs is not None:
            raise InvalidRequestError(
                "Streaming with both echo and logprobs is not supported by oasis yet; "
                "use stream=false for prompt logprobs.",
                param="echo",
                code="unsupported_parameter",
            )
        if req.stream and best_of > n:
            raise InvalidRequestError(
                "Cannot stream results with best_of greater than n.",
                param="best_of",
                code="invalid_value",
            )
        p = req.prompt
        n_prompts = len(p) if isinstance(p, list) and p and not isinstance(p[0], int) else 1
        check_sequences(engine, n_prompts * best_of, "prompt" if n_prompts > 1 else "best_of")
        prompts = self._prompts(target, req)
        # 0 is allowed, with or without echo: an empty completion, finish_reason "length"
        max_tokens = DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
        for tokens in prompts:
            check_context(engine.info.n_ctx, len(tokens), max_tokens, what="prompt", param="prompt")
        params = sampling_params(req, engine.info.n_vocab)
        want_lp = req.logprobs is not None
        internal_lp = req.logprobs if want_lp else (0 if best_of > n else None)
        seqs: list[_Seq] = []
        gens: list[GenerationRequest] = []
        for pi, tokens in enumerate(prompts):
            for j in range(best_of):
                seqs.append(_Seq(pi, tokens))
                gens.append(
                    GenerationRequest(
                        prompt=tokens,
                        max_tokens=max_tokens,
                        sampling=with_seed(params, j),
                        stop=req.stop_list(),
                        logprobs=internal_lp,
                        prompt_logprobs=bool(req.echo and want_lp),
                        prompt_lookup=req.prompt_lookup,
                    )
                )
        culprit = "best_of" if best_of > n else ("prompt" if len(prompts) > 1 else "n")
        return _Prepared(seqs, gens, sum(len(p) for p in prompts), max_tokens, culprit, n, best_of)

    def _echo_text(self, target: Target, tokens: list[int]) -> str:
        return target.engine.detokenize(tokens)

    async def _complete(
        self,
        target: Target,
        req: CompletionRequest,
        handles: list[Any],
        seqs: list[_Seq],
        meta: dict[str, Any],
        n: int,
        best_of: int,
        meter: Meter,
    ) -> Completion:
        want_lp = req.logprobs is not None
        async for i, ev in merge(handles, meter.first_token):
            s = seqs[i]
            if isinstance(ev, TokenEvent):
                s.text.append(ev.text)
                if ev.logprob is not None:
                    s.lps.append(ev.logprob)
            else:
                s.text.append(ev.text)
                s.finish = ev
        choices: list[CompletionChoice] = []
        for pi in range(len({s.prompt_index for s in seqs})):
            group = [s for s in seqs if s.prompt_index == pi]
            if best_of > n:
                group.sort(key=lambda s: -s.mean_logprob())
            for s in group[:n]:
                assert s.finish is not None
                text = "".join(s.text)
                logprobs = None
                if req.echo:
                    text = self._echo_text(target, s.prompt) + text
                if want_lp:
                    acc = _LogprobAcc()
                    if req.echo and s.finish.prompt_logprobs is not None:
                        for k, plp in enumerate(s.finish.prompt_logprobs):
                            acc.add(plp, first_of_prompt=k == 0)
                    for lp in s.lps:
                        acc.add(lp)
                    logprobs = acc.build()
                meter.choice_ended(len(choices), s.finish.reason)
                choices.append(
                    CompletionChoice(
                        index=len(choices),
                        text=text,
                        logprobs=logprobs,
                        finish_reason=s.finish.reason,
                    )
                )
        return Completion(
            object="text_completion",
            choices=choices,
            usage=usage_of(_prompt_total(seqs), (s.finish for s in seqs if s.finish is not None)),
            **meta,
        )

    async def _stream(
        self,
        target: Target,
        req: CompletionRequest,
        handles: list[Any],
        seqs: list[_Seq],
        meta: dict[str, Any],
        include_usage: bool,
        meter: Meter,
    ) -> AsyncIterator[Completion]:
        want_lp = req.logprobs is not None

        def chunk(
            i: int, text: str, finish: Any = None, logprobs: Logprobs | None = None
        ) -> Completion:
            # Stream chunks carry finish_reason null until the last one, which the SDK's
            # (non-streaming) CompletionChoice type does not allow: construct without checks.
            choice = CompletionChoice.model_construct(
                index=i, text=text, logprobs=logprobs, finish_reason=finish
            )
            return Completion(object="text_completion", choices=[choice], **meta)

        echoed: set[int] = set()
        accs = [_LogprobAcc() for _ in seqs]  # text offsets run on across chunks
        tally = StreamTally(_prompt_total(seqs))
        async for i, ev in merge(handles, meter.first_token):
            s = seqs[i]
            prefix = ""
            if req.echo and i not in echoed:
                echoed.add(i)
                prefix = self._echo_text(target, s.prompt)
            if isinstance(ev, TokenEvent):
                if ev.logprob is not None:
                    accs[i].add(ev.logprob)
                yield chunk(i, prefix + ev.text, logprobs=accs[i].take() if want_lp else None)
            else:
                tally.add(ev)
                meter.choice_ended(i, ev.reason)
                yield chunk(
                    i,
                    prefix + ev.text,
                    finish=ev.reason,
                    logprobs=accs[i].take() if want_lp else None,
                )
        if include_usage:
            yield Completion(object="text_completion", choices=[], usage=tally.usage(), **meta)
