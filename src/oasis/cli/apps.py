"""The tutorial's applications as commands: chat, complete, summarize, classify, roleplay, batch.

Every command talks to an OpenAI-compatible endpoint through the official SDK: the local oasis
server by default, or ``--base-url`` / ``OPENAI_BASE_URL`` with ``--api-key`` /
``OPENAI_API_KEY``. Expected failures are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import openai
import typer
from openai import AsyncOpenAI
from openai.types import Batch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from oasis.apps.batch import (
    BatchInputError,
    BatchSummary,
    Downloaded,
    acancel_batch,
    adownload_results,
    arun_batch,
    asubmit_batch,
    await_batch,
    read_input,
)
from oasis.apps.chat import Conversation
from oasis.apps.classify import METHODS, ClassificationError, Method, aclassify
from oasis.apps.client import DEFAULT_MODEL, ClientConfigError, async_client, resolve
from oasis.apps.errors import describe
from oasis.apps.roleplay import aroleplay, character_prompt
from oasis.apps.summarize import asummarize
from oasis.apps.text import COMPLETION_MODEL, acomplete, astream_text

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")

BaseUrl = Annotated[
    str | None,
    typer.Option("--base-url", help="API base URL [OPENAI_BASE_URL; default: local oasis]."),
]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="API key [OPENAI_API_KEY].")]
Model = Annotated[str, typer.Option("--model", "-m", help="Model name.")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for an answer.")]
EXIT_WORDS = {"exit", "quit", "退出", "/exit", "/quit"}


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True)
    return typer.Exit(code)


_OPEN: list[AsyncOpenAI] = []


def _client(base_url: str | None, api_key: str | None, timeout: float) -> AsyncOpenAI:
    """A client for this command, closed by ``_call`` before its event loop ends."""
    client = async_client(base_url, api_key, timeout=timeout)
    _OPEN.append(client)
    return client


def _call(base_url: str | None, api_key: str | None, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; any API, connection or input error becomes one line and exit status 1."""

    async def main() -> T:
        try:
            return await work()
        finally:
            while _OPEN:
                await _OPEN.pop().close()

    try:
        url, _ = resolve(base_url, api_key)
        return asyncio.run(main())
    except ClientConfigError as exc:
        raise _fail(str(exc)) from None
    except openai.APIError as exc:
        raise _fail(describe(exc, url)) from None
    except (ClassificationError, BatchInputError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None


# -- complete ----------------------------------------------------------------------------------


def complete(
    prompt: Annotated[str, typer.Argument(help="The text to continue.")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.7,
    n: Annotated[int, typer.Option("-n", min=1, help="How many completions.")] = 1,
    stop: Annotated[list[str] | None, typer.Option(help="Stop sequence (repeatable).")] = None,
    stream: Annotated[bool, typer.Option(help="Print the text as it is generated.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw API response.")] = False,
    model: Model = COMPLETION_MODEL,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    timeout: Timeout = 600.0,
) -> None:
    """Continue a prompt (the tutorial's generate_text)."""

    async def work() -> None:
        client = _client(base_url, api_key, timeout)
        opts: dict[str, Any] = dict(
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            n=n,
            stop=stop,
            client=client,
        )
        if stream and not as_json:
            # choice 0 streams live; the others (generated alongside) follow when done
            later: dict[int, list[str]] = {}
            if n > 1:
                out.print("[0] ", end="", markup=False)
            async for index, text in astream_text(prompt, **opts):
                if index == 0:
                    out.print(text, end="", markup=False)
                else:
                    later.setdefault(index, []).append(text)
            out.print()
            for index in sorted(later):
                out.print(f"[{index}] " + "".join(later[index]), markup=False)
            return
        done = await acomplete(prompt, **opts)
        if as_json:
            out.print(done.model_dump_json(indent=2), markup=False)
            return
        for choice in done.choices:
            prefix = f"[{choice.index}] " if n > 1 else ""
            out.print(prefix + choice.text.strip(), markup=False)

    _call(base_url, api_key, work)


# -- chat --------------------------------------------------------------------------------------


def chat(
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.7,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    model: Model = DEFAULT_MODEL,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    timeout: Timeout = 600.0,
) -> None:
    """A terminal chatbot: streams answers, keeps the conversation, /help for commands."""
    try:
        url, _ = resolve(base_url, api_key)
    except ClientConfigError as exc:
        raise _fail(str(exc)) from None

    def trimmed(n: int) -> None:
        err.print(f"(the conversation got too long: dropped the oldest {n} message(s))")

    conv = Conversation(
        system,
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
        client=async_client(base_url, api_key, timeout=timeout),
        on_trim=trimmed,
    )
    interactive = sys.stdin.isatty()

    async def main() -> None:
        try:
            await _chat_loop(conv, url, interactive)
        finally:
            await conv.api.close()

    asyncio.run(main())


async def _read_line(prompt: str, interactive: bool) -> str | None:
    """One line from the user, or None at end of input (Ctrl-D)."""
    try:
        if interactive:
            return await asyncio.to_thread(input, prompt)
        line = await asyncio.to_thread(sys.stdin.readline)
        return line.rstrip("\n") if line else None
    except EOFError:
        return None


async def _answer(conv: Conversation, text: str, url: str) -> None:
    """Stream one answer to the terminal."""
    try:
        async for piece in conv.astream(text):
            out.print(piece, end="", markup=False)
        out.print()
    except openai.APIError as exc:
        out.print()
        err.print(f"[red]error:[/red] {describe(exc, url)}", markup=True)


HELP = (
    "commands: /reset (forget the conversation), /system TEXT (set the system prompt), "
    "/save FILE, /load FILE, /help; exit, quit or 退出 (or Ctrl-D) to leave; "
    "Ctrl-C stops an answer"
)


async def _chat_loop(conv: Conversation, url: str, interactive: bool) -> None:
    if interactive:
        err.print(f"chatting with {conv.model} at {url} - {HELP}")
    loop = asyncio.get_running_loop()
    answering: list[asyncio.Task[None]] = []

    def on_ctrl_c() -> None:
        """Ctrl-C stops the answer being written, never the program."""
        if answering and not answering[0].done():
            answering[0].cancel()
        else:
            err.print("\n(Ctrl-D or exit to leave)")

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_ctrl_c)
    while True:
        line = await _read_line("> " if interactive else "", interactive)
        if line is None:
            if interactive:
                out.print()
            return
        text = line.strip()
        if not text:
            continue
        if text.lower() in EXIT_WORDS:
            return
        if text.startswith("/"):
            _command(conv, text)
            continue
        task = asyncio.create_task(_answer(conv, text, url))
        answering[:] = [task]
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            out.print()
            err.print("(stopped)")
        finally:
            answering.clear()


def _command(conv: Conversation, text: str) -> None:
    name, _, arg = text.partition(" ")
    arg = arg.strip()
    try:
        if name == "/reset":
            conv.reset()
            err.print("(conversation forgotten)")
        elif name == "/system":
            conv.set_system(arg)
            err.print("(system prompt set)" if arg else "(system prompt removed)")
        elif name == "/save" and arg:
            conv.save(arg)
            err.print(f"(saved {len(conv.turns)} messages to {arg})")
        elif name == "/load" and arg:
            conv.load(arg)
            err.print(f"(loaded {len(conv.turns)} messages from {arg})")
        else:
            err.print(HELP)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)


# -- summarize ---------------------------------------------------------------------------------


def summarize(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Files to summarize; - for stdin.")
    ] = None,
    words: Annotated[int, typer.Option(min=5, help="Length of the summary, in words.")] = 100,
    language: Annotated[str | None, typer.Option(help="zh or en (default: the text's).")] = None,
    chunk_tokens: Annotated[int, typer.Option(min=64, help="Tokens per piece.")] = 1200,
    model: Model = DEFAULT_MODEL,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    timeout: Timeout = 600.0,
) -> None:
    """Summarize files or stdin; long documents are split by tokens and summarized map-reduce."""
    if language not in (None, "zh", "en"):
        raise _fail("--language must be zh or en", 2)
    sources = files or [Path("-")]
    texts: list[tuple[str, str]] = []
    for f in sources:
        try:
            texts.append((str(f), sys.stdin.read() if str(f) == "-" else f.read_text()))
        except OSError as exc:
            raise _fail(f"cannot read {f}: {exc.strerror}") from None

    async def work() -> None:
        client = _client(base_url, api_key, timeout)
        for name, text in texts:
            if not text.strip():
                raise ValueError(f"{name} is empty")
            summary = await asummarize(
                text,
                words=words,
                language=language,
                model=model,
                chunk_tokens=chunk_tokens,
                client=client,
            )
            if len(texts) > 1:
                out.print(f"== {name}", markup=False)
            out.print(summary, markup=False)

    _call(base_url, api_key, work)


# -- classify ----------------------------------------------------------------------------------


def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated labels (default: sentiment).")
    ] = None,
    jsonl: Annotated[
        Path | None, typer.Option(help='A JSONL file of texts ({"text": ...} or strings).')
    ] = None,
    language: Annotated[str | None, typer.Option(help="zh or en sentiment labels.")] = None,
    examples: Annotated[
        Path | None,
        typer.Option(
            help='Examples for the prompt, a JSONL file of {"text": ..., "label": ...} '
            "(default: built-in ones for the sentiment labels, none for yours)."
        ),
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            help="Divide the label probabilities by the model's prior for the labels "
            "(scoring). Turn off when one of your labels means 'none of these'."
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    method: Annotated[
        str,
        typer.Option(
            help="auto (scoring, then schema, then chat), scoring (label log-probabilities), "
            "schema (enum-constrained JSON) or chat (answer checked, asked again)."
        ),
    ] = "auto",
    model: Model = DEFAULT_MODEL,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    timeout: Timeout = 600.0,
) -> None:
    """Sentiment (positive/negative/neutral, 积极/消极/中性 in Chinese) or your labels: always
    exactly one of them, with a confidence when the server gives log-probabilities."""
    items = list(texts or [])
    if jsonl is not None:
        try:
            for n, raw in enumerate(jsonl.read_text().splitlines(), 1):
                if not raw.strip():
                    continue
                value = json.loads(raw)
                text = value.get("text") if isinstance(value, dict) else value
                if not isinstance(text, str):
                    raise _fail(f"{jsonl}:{n}: expected a string or an object with 'text'")
                items.append(text)
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read {jsonl}: {exc}") from None
    if not items:
        raise _fail("nothing to classify: give texts or --jsonl FILE", 2)
    chosen = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    if method not in ("auto", *METHODS):
        raise _fail(f"--method must be auto, {', '.join(METHODS)}", 2)
    shown = _read_examples(examples) if examples is not None else None
    if shown is not None and chosen is None:
        raise _fail("--examples needs --labels", 2)

    async def work() -> None:
        client = _client(base_url, api_key, timeout)
        results = await aclassify(
            items,
            chosen,
            examples=shown,
            calibrate=calibrate,
            language=language,
            model=model,
            method=cast(Method, method),
            client=client,
        )
        for r in results:
            if as_json or jsonl is not None:
                line = {
                    "text": r.text,
                    "label": r.label,
                    "confidence": r.confidence,
                    "scores": r.scores,
                    "method": r.method,
                }
                out.print(json.dumps(line, ensure_ascii=False), markup=False)
            else:
                conf = f"  ({r.confidence:.0%})" if r.confidence is not None else ""
                out.print(f"{r.label}{conf}\t{r.text}", markup=False)

    _call(base_url, api_key, work)


def _read_examples(path: Path) -> list[tuple[str, str]]:
    """``(text, label)`` pairs from a JSONL file of ``{"text", "label"}`` objects."""
    pairs: list[tuple[str, str]] = []
    try:
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            if not raw.strip():
                continue
            value = json.loads(raw)
            if not (
                isinstance(value, dict)
                and isinstance(value.get("text"), str)
                and isinstance(value.get("label"), str)
            ):
                raise _fail(f"{path}:{n}: expected an object with 'text' and 'label' strings")
            pairs.append((value["text"], value["label"]))
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read {path}: {exc}") from None
    return pairs


# -- roleplay ----------------------------------------------------------------------------------


def roleplay(
    role: Annotated[str, typer.Option(help="The character, e.g. 医生 or doctor.")],
    scenario: Annotated[str | None, typer.Option(help="The situation.")] = None,
    turns: Annotated[int, typer.Option(min=1, max=20, help="Exchanges to generate.")] = 3,
    interactive: Annotated[bool, typer.Option(help="Talk with the character yourself.")] = False,
    model: Model = DEFAULT_MODEL,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    timeout: Timeout = 600.0,
) -> None:
    """A dialogue with a character (the tutorial's role-play), generated or interactive."""
    if interactive:
        chat(
            system=character_prompt(role, scenario),
            temperature=0.8,
            max_tokens=None,
            model=model,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
        )
        return

    async def work() -> None:
        client = _client(base_url, api_key, timeout)
        for speaker, text in await aroleplay(
            role, scenario=scenario, turns=turns, model=model, client=client
        ):
            # a turn of several lines is indented under its speaker
            body = "\n    ".join(line for line in text.splitlines() if line.strip())
            out.print(f"{speaker}: {body}", markup=False)

    _call(base_url, api_key, work)


# -- batch -------------------------------------------------------------------------------------

HERE = "Sent from here (the default)"
ON_SERVER = "On the server (--server: OpenAI's Batch API)"


def batch(
    input_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="INPUT",
            help="Requests, in OpenAI's batch JSONL format (not with --attach).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where results go (JSONL); required unless --detach."),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "-j", "--jobs", min=1, max=256, help="Concurrent requests.", rich_help_panel=HERE
        ),
    ] = 4,
    retries: Annotated[
        int,
        typer.Option(min=0, help="Retries per request (429, 5xx, network).", rich_help_panel=HERE),
    ] = 5,
    input_price: Annotated[
        float | None,
        typer.Option(
            help="USD per million prompt tokens, for the cost line.", rich_help_panel=HERE
        ),
    ] = None,
    output_price: Annotated[
        float | None,
        typer.Option(help="USD per million completion tokens.", rich_help_panel=HERE),
    ] = None,
    server: Annotated[
        bool,
        typer.Option(
            "--server",
            help="Run the batch on the server instead: upload the file, create the batch, show "
            "its progress, download its output to OUTPUT and its failed lines to the errors "
            "file. The server keeps running it if this command goes away; Ctrl-C cancels it.",
            rich_help_panel=ON_SERVER,
        ),
    ] = False,
    errors: Annotated[
        Path | None,
        typer.Option(
            "--errors",
            help="Where the failed lines go (default: OUTPUT with .errors.jsonl).",
            show_default=False,
            rich_help_panel=ON_SERVER,
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Submit, print the batch id and return; the batch runs on (implies --server).",
            rich_help_panel=ON_SERVER,
        ),
    ] = False,
    attach: Annotated[
        str | None,
        typer.Option(
            "--attach",
            metavar="BATCH_ID",
            help="Wait for a batch submitted earlier (--detach, or one that Ctrl-C cancelled) "
            "and download its results (implies --server).",
            show_default=False,
            rich_help_panel=ON_SERVER,
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="The batch's endpoint (default: the first line's url).",
            show_default=False,
            rich_help_panel=ON_SERVER,
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            metavar="KEY=VALUE",
            help="Tag the batch (repeatable).",
            show_default=False,
            rich_help_panel=ON_SERVER,
        ),
    ] = None,
    poll: Annotated[
        float,
        typer.Option(min=0.05, help="Seconds between status checks.", rich_help_panel=ON_SERVER),
    ] = 1.0,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    timeout: Timeout = 600.0,
) -> None:
    """Run many requests at once: sent from here (resumable: a rerun skips the custom_ids
    already in the output), or with --server run by the server, which keeps the work and the
    results if this command goes away.

    Exit status: 0 if every request succeeded, 130 after Ctrl-C, 1 otherwise.
    """
    if not (server or detach or attach is not None):
        if input_file is None:
            raise _fail("missing INPUT: the batch file to run", 2)
        if output is None:
            raise _fail("missing -o OUTPUT: where the results go", 2)
        _batch_here(
            input_file, output, jobs, retries, input_price, output_price, base_url, api_key, timeout
        )
        return
    if attach is not None and (input_file is not None or detach):
        raise _fail("--attach BATCH_ID takes no INPUT and no --detach", 2)
    if attach is None and input_file is None:
        raise _fail("missing INPUT (or --attach BATCH_ID)", 2)
    if output is None and not detach:
        raise _fail("missing -o OUTPUT: where the results go", 2)
    errors_path = None
    if output is not None:
        errors_path = errors or output.with_suffix(".errors.jsonl")
        if errors_path.resolve() == output.resolve():
            raise _fail("--errors must be another file than OUTPUT", 2)
        for path in (output, errors_path):
            if not path.parent.is_dir():
                raise _fail(f"cannot write {path}: no directory {path.parent}", 2)
    tags: dict[str, str] = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"--metadata takes KEY=VALUE (got {item!r})", 2)
        tags[key] = value
    job = _ServerJob(
        input_file=input_file,
        output=output,
        errors=errors_path,
        attach=attach,
        detach=detach,
        endpoint=endpoint,
        metadata=tags or None,
        poll=poll,
        interactive=sys.stdout.isatty(),
    )
    try:
        code = _call(base_url, api_key, lambda: job.run(_client(base_url, api_key, timeout)))
    except KeyboardInterrupt:  # a second Ctrl-C, or one where no signal handler could be set
        err.print("interrupted")
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def _batch_here(
    input_file: Path,
    output: Path,
    jobs: int,
    retries: int,
    input_price: float | None,
    output_price: float | None,
    base_url: str | None,
    api_key: str | None,
    timeout: float,
) -> None:
    """The requests sent from this process, concurrently, resumable."""
    try:
        read_input(input_file)  # a bad file fails before any work
    except (BatchInputError, OSError) as exc:
        raise _fail(str(exc)) from None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
    )
    task = progress.add_task("batch", total=None, rate="")

    def started(s: BatchSummary) -> None:
        progress.update(task, total=s.total, completed=s.skipped)
        if s.skipped:
            err.print(f"resuming: {s.skipped} of {s.total} already in {output}")

    def advanced(s: BatchSummary) -> None:
        rate = (s.prompt_tokens + s.completion_tokens) / s.seconds if s.seconds else 0.0
        progress.update(task, completed=s.skipped + s.done + s.failed, rate=f"{rate:.0f} tok/s")

    async def work() -> BatchSummary:
        client = _client(base_url, api_key, timeout)
        return await arun_batch(
            input_file,
            output,
            concurrency=jobs,
            retries=retries,
            client=client,
            on_progress=advanced,
            on_start=started,
        )

    try:
        with progress:
            summary = _call(base_url, api_key, work)
    except KeyboardInterrupt:
        err.print(f"interrupted: what finished is in {output}; run the same command to go on")
        raise typer.Exit(130) from None
    cost = summary.cost(input_price, output_price)
    err.print(
        f"done: {summary.done} written ({summary.succeeded} ok, {summary.refused} refused by "
        f"the server), {summary.skipped} from an earlier run, {summary.failed} failed; "
        f"{summary.prompt_tokens} prompt + {summary.completion_tokens} completion tokens"
        + (f", ${cost:.6f}" if cost is not None else "")
        + f" in {summary.seconds:.1f} s"
    )
    for line in summary.errors[:5]:
        err.print(f"  {line}")
    if summary.failed:
        raise typer.Exit(1)


class _Interrupted(Exception):
    """Ctrl-C, while awaiting something ``_interruptible`` ran."""


async def _interruptible(work: Awaitable[T]) -> T:
    """Await ``work``; Ctrl-C cancels it and raises _Interrupted, so the caller can still use
    the network (to cancel the batch). A second Ctrl-C is a KeyboardInterrupt as usual."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    hooked, hit = False, False

    def on_ctrl_c() -> None:
        nonlocal hooked, hit
        hit = True
        task.cancel()
        loop.remove_signal_handler(signal.SIGINT)
        hooked = False

    # Not possible off the main thread or without signals: Ctrl-C stays a KeyboardInterrupt.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, on_ctrl_c)
        hooked = True
    try:
        return await task
    except asyncio.CancelledError:
        if hit:
            raise _Interrupted from None
        raise
    finally:
        if hooked:
            loop.remove_signal_handler(signal.SIGINT)


@dataclass
class _ServerJob:
    """``oasis batch --server``: submit (or attach), follow, download, report."""

    input_file: Path | None
    output: Path | None
    errors: Path | None
    attach: str | None
    detach: bool
    endpoint: str | None
    metadata: dict[str, str] | None
    poll: float
    interactive: bool  # stdout is a terminal: a person watches (else only the summary)

    def collect_hint(self, batch_id: str) -> str:
        return f"`oasis batch --attach {batch_id} -o {self.output or 'OUTPUT'}`"

    async def run(self, client: AsyncOpenAI) -> int:
        """The exit status."""
        if self.attach is None:
            assert self.input_file is not None
            try:
                batch_id = await _interruptible(
                    asubmit_batch(
                        self.input_file,
                        endpoint=self.endpoint,
                        metadata=self.metadata,
                        client=client,
                    )
                )
            except _Interrupted:
                err.print("interrupted before the batch was created")
                return 130
            if self.detach:
                out.print(batch_id, markup=False)
                err.print(f"submitted {batch_id}; {self.collect_hint(batch_id)} collects it")
                return 0
            if self.interactive:
                err.print(
                    f"submitted {batch_id}: Ctrl-C cancels it on the server, --detach would "
                    "leave it running"
                )
        else:
            batch_id = self.attach
            if self.interactive:
                err.print(f"waiting for {batch_id}: Ctrl-C cancels it on the server")
        final = await self.follow(client, batch_id)
        if final is None:
            return 130
        got = None
        if final.status != "failed" or final.output_file_id or final.error_file_id:
            assert self.output is not None
            try:
                got = await adownload_results(final, self.output, self.errors, client=client)
            except OSError as exc:
                raise _fail(
                    f"{batch_id} ended ({final.status}) but its results could not be written: "
                    f"{exc}; {self.collect_hint(batch_id)} downloads them again"
                ) from None
        return self.report(final, got)

    async def follow(self, client: AsyncOpenAI, batch_id: str) -> Batch | None:
        """The batch once it ended, with a progress bar; None after Ctrl-C cancelled it."""
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]}"),
            TimeElapsedColumn(),
            console=err,
            disable=not self.interactive,
        )
        task = progress.add_task("batch", total=None, failed="")

        def show(b: Batch) -> None:
            counts = b.request_counts
            failed = counts.failed if counts else 0
            progress.update(
                task,
                description=f"batch {b.status}",
                total=counts.total if counts and counts.total else None,
                completed=(counts.completed + failed) if counts else 0,
                failed=f"{failed} failed" if failed else "",
            )

        try:
            with progress:
                return await _interruptible(
                    await_batch(batch_id, client=client, poll=self.poll, on_progress=show)
                )
        except _Interrupted:
            try:
                now = await acancel_batch(batch_id, client=client)
            except openai.APIError as exc:
                err.print(
                    f"interrupted, but cancelling {batch_id} failed "
                    f"({describe(exc, str(client.base_url))}); it may run on: "
                    f"{self.collect_hint(batch_id)}",
                    markup=False,
                )
                return None
            err.print(
                f"interrupted: asked the server to cancel {batch_id} (now {now.status}); "
                f"the requests that finished are kept - {self.collect_hint(batch_id)} "
                "downloads them",
                markup=False,
            )
            return None
        except openai.NotFoundError:
            raise _fail(f"no batch {batch_id!r} here (for this API key)") from None
        except (openai.APIConnectionError, openai.InternalServerError):
            err.print(f"lost track of {batch_id}, which runs on: {self.collect_hint(batch_id)}")
            raise

    def report(self, b: Batch, got: Downloaded | None) -> int:
        """The summary line (and what went wrong) on stderr; the exit status."""
        problems = b.errors.data if b.errors and b.errors.data else []
        counts = b.request_counts
        done, failed = (counts.completed, counts.failed) if counts else (0, 0)
        if got is None:  # nothing to download: the batch failed (its input, or the server)
            n = len(problems)
            err.print(
                f"{b.status} ({n} error{'s' if n != 1 else ''} from the server); batch {b.id}",
                markup=False,
            )
        else:
            total = counts.total if counts and counts.total else done + failed
            tokens = (
                f"; {b.usage.input_tokens} input + {b.usage.output_tokens} output tokens"
                if b.usage is not None
                else ""
            )
            where = f" -> {self.output}"
            if got.error_lines:
                where += f", failed lines -> {self.errors}"
            err.print(
                f"{b.status}: {done} of {total} requests succeeded, {failed} failed{tokens}; "
                f"batch {b.id}{where}",
                markup=False,
            )
        for e in problems:
            where = f"line {e.line}: " if e.line is not None else ""
            code = f" ({e.code})" if e.code else ""
            err.print(f"  {where}{e.message or 'no message'}{code}", markup=False)
        if self.interactive and got is not None and got.error_lines and self.errors is not None:
            for line in _failures(self.errors, got.error_lines):
                err.print(f"  {line}", markup=False)
        return 0 if b.status == "completed" and not failed else 1


def _failures(path: Path, count: int, show: int = 5) -> list[str]:
    """The first lines of an error file, one line each: custom_id, status, what went wrong."""
    found: list[str] = []
    with path.open(encoding="utf-8") as f:
        for raw in f:
            if len(found) == show:
                break
            try:
                line = json.loads(raw)
                response = line.get("response") or {}
                error = line.get("error") or (response.get("body") or {}).get("error") or {}
            except (ValueError, AttributeError):
                continue
            status = response.get("status_code")
            code = error.get("code") or error.get("type") or "error"
            found.append(
                f"{line.get('custom_id')}: "
                + (f"{status} " if status else "")
                + f"{code}: {error.get('message', '')}"
            )
    if count > len(found):
        found.append(f"... and {count - len(found)} more in {path}")
    return found


def register(app: typer.Typer) -> None:
    for command in (chat, complete, summarize, classify, roleplay, batch):
        app.command(command.__name__)(command)
