"""The applications as a person runs them, against the live server on the bundled model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pexpect
import pytest

from oasis.apps import (
    agenerate_text,
    chat,
    classify,
    generate_text,
    roleplay,
    run_batch,
    summarize,
    sync_client,
)
from tests.integration.conftest import LiveServer, start_server, stop_server

OASIS = str(Path(sys.executable).with_name("oasis"))


def env_for(live: LiveServer, **extra: str) -> dict[str, str]:
    return {**os.environ, "OPENAI_BASE_URL": live.v1, "OPENAI_API_KEY": live.api_key,
            "COLUMNS": "200", **extra}


def oasis(live: LiveServer, *args: str, stdin: str | None = None,
          **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OASIS, *args], env=env_for(live, **extra), input=stdin,
                          capture_output=True, text=True, timeout=300)


def one_clear_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- complete ----------------------------------------------------------------------------------

def test_complete(live: LiveServer) -> None:
    r = oasis(live, "complete", "Once upon a time", "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    raw = oasis(live, "complete", "One, two,", "--max-tokens", "6", "-n", "2", "--stop", "\n",
                "--temperature", "0.9", "--json")
    body = json.loads(raw.stdout)
    assert body["object"] == "text_completion" and len(body["choices"]) == 2
    assert all("\n" not in c["text"] for c in body["choices"])
    assert body["usage"]["completion_tokens"] <= 12
    streamed = oasis(live, "complete", "The sky is", "--max-tokens", "8", "--stream")
    assert streamed.returncode == 0 and streamed.stdout.strip()


# -- chat --------------------------------------------------------------------------------------

def test_chat_from_a_pipe_answers_each_line(live: LiveServer) -> None:
    r = oasis(live, "chat", "--max-tokens", "12", stdin="Hello!\nWhat is your name?\n")
    assert r.returncode == 0, r.stderr
    assert len([x for x in r.stdout.splitlines() if x.strip()]) >= 2


def test_chat_in_a_terminal(live: LiveServer, tmp_path: Path) -> None:
    child = pexpect.spawn(OASIS, ["chat", "--max-tokens", "400", "--system", "Be brief."],
                          env=env_for(live), encoding="utf-8", timeout=120, cwd=str(tmp_path))
    try:
        child.expect("chatting with")
        child.expect("> ")
        child.sendline("Hi! Who are you?")
        child.expect("\r\n> ")  # the answer streamed, then the prompt again
        assert child.before.strip()
        # Ctrl-C stops a long answer, not the program
        child.sendline("Write a very long story about the sea, with many chapters.")
        child.expect_exact("chapters.\r\n")  # the terminal's echo of the line
        child.expect(r"\S")  # the first piece of the answer: interrupt it right away
        child.sendintr()
        child.expect(r"\(stopped\)")
        child.expect("> ")
        child.sendline(f"/save {tmp_path / 'talk.json'}")
        child.expect(r"saved (\d+) messages")
        assert int(child.match.group(1)) == 4
        child.sendline("/reset")
        child.expect("conversation forgotten")
        child.sendline("退出")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "talk.json").read_text())
    assert saved["system"] == "Be brief." and saved["turns"][0]["role"] == "user"


def test_chat_quits_on_ctrl_d(live: LiveServer) -> None:
    child = pexpect.spawn(OASIS, ["chat"], env=env_for(live), encoding="utf-8", timeout=60)
    child.expect("> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_conversation_keeps_history_and_trims_when_too_long(live: LiveServer) -> None:
    trims: list[int] = []
    client = sync_client(live.v1, live.api_key)
    conv = chat("You are terse.", max_tokens=8, client=client, on_trim=trims.append)
    conv.send("My name is Ada.")
    conv.send("What is my name?")
    assert [t["role"] for t in conv.turns] == ["user", "assistant", "user", "assistant"]
    # a history longer than a slot's context (16384 / 8 slots = 2048 tokens) is trimmed
    conv.turns = [{"role": r, "content": "word " * 300}
                  for _ in range(6) for r in ("user", "assistant")]
    conv.send("Still there?")
    assert trims and conv.turns[-2]["content"] == "Still there?"


# -- summarize, classify, roleplay -------------------------------------------------------------

def test_summarize_a_long_file_map_reduce(live: LiveServer, tmp_path: Path) -> None:
    para = ("The water cycle moves water from oceans to clouds and back. Sunlight heats the "
            "sea, vapour rises, cools into clouds and falls as rain or snow. ")
    doc = tmp_path / "water.txt"
    doc.write_text("\n".join(para * 4 for _ in range(12)))
    before = live.metric("oasis_requests_total")
    r = oasis(live, "summarize", str(doc), "--words", "30", "--chunk-tokens", "300")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    # counted with the server's tokenizer, then several pieces and one final summary
    assert live.metric("oasis_requests_total") - before >= 4
    piped = oasis(live, "summarize", "-", "--words", "20", stdin=para)
    assert piped.returncode == 0 and piped.stdout.strip()


def test_classify_always_gives_a_listed_label(live: LiveServer) -> None:
    texts = [
        "I love this phone!", "Terrible service, never again.", "The bus leaves at noon.",
        "What a wonderful surprise", "I am so disappointed", "It is a table.",
        "Best concert of my life", "The food was cold and bland", "Meeting moved to Tuesday",
        "Absolutely fantastic work", "This is awful", "The report has ten pages.",
        "今天天气很好，我很开心", "这个产品太差了", "会议在三点开始", "我非常喜欢这本书",
        "服务态度很差", "他买了一本书", "", "?!", "12345", "ok", "meh", "Not bad at all",
        "I can't say I hated it", "Could be better, could be worse", "Wow.", "Ugh.",
        "The sun rose.", "I'm thrilled and terrified", "Refund my money now!",
        "Thanks a lot, you saved my day", "The package arrived.", "Worst. Movie. Ever.",
        "A calm lake at dawn", "I lost my keys again", "Happy birthday!", "No comment",
        "The price is 10 dollars", "😀😀😀", "😡", "lorem ipsum dolor sit amet",
        "Das ist wunderbar", "C'est terrible", "neutral", "positive", "negative",
        "It works as described.", "Shipping was slow but the item is great",
        "I would not recommend it",
    ]
    assert len(texts) == 50
    client = sync_client(live.v1, live.api_key)
    results = classify(texts, client=client)
    allowed = {"positive", "negative", "neutral", "积极", "消极", "中性"}
    assert [r.text for r in results] == texts
    assert all(r.label in allowed for r in results)
    assert all(r.confidence is not None and 0 < r.confidence <= 1 for r in results)
    assert results[12].label in {"积极", "消极", "中性"}  # asked in Chinese
    assert results[0].label in {"positive", "negative", "neutral"}
    custom = classify(["The striker scored twice"], ["sports", "politics", "cooking"],
                      client=client)
    assert custom[0].label in {"sports", "politics", "cooking"}
    assert sum(custom[0].scores.values()) == pytest.approx(1.0)  # type: ignore[union-attr]


def test_classify_command(live: LiveServer, tmp_path: Path) -> None:
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "I love it"}\n"I hate it"\n')
    r = oasis(live, "classify", "--jsonl", str(data), "--labels", "good,bad")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["text"] for x in rows] == ["I love it", "I hate it"]
    assert all(x["label"] in {"good", "bad"} for x in rows)
    plain = oasis(live, "classify", "What a great day")
    assert plain.stdout.split()[0] in {"positive", "negative", "neutral"}
    assert all(x["method"] == "scoring" for x in rows)  # auto: log-probabilities first


def test_classify_by_enum_constrained_output(live: LiveServer) -> None:
    texts = ["I love it", "这个产品太差了", "", "😡", "The bus leaves at noon.", "meh"]
    r = oasis(live, "classify", *texts, "--method", "schema", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["text"] for x in rows] == texts
    assert all(x["method"] == "schema" for x in rows)
    assert all(x["label"] in {"positive", "negative", "neutral"} for x in rows if x != rows[1])
    assert rows[1]["label"] in {"积极", "消极", "中性"}
    labels = ["sports", "politics", "cooking", "science"]
    results = classify(["The striker scored twice", "A new vaccine"] * 4, labels,
                       method="schema", client=sync_client(live.v1, live.api_key))
    assert all(x.label in labels and x.method == "schema" for x in results)
    bad = oasis(live, "classify", "x", "--method", "guess")
    assert bad.returncode == 2 and "--method" in bad.stderr


def test_roleplay(live: LiveServer) -> None:
    r = oasis(live, "roleplay", "--role", "doctor", "--turns", "2",
              "--scenario", "a patient with a cough")
    assert r.returncode == 0, r.stderr
    # one unindented line per turn, "speaker: text"; a turn's further lines are indented
    turns = [line for line in r.stdout.splitlines() if line and not line.startswith(" ")]
    speakers = [line.split(":", 1)[0] for line in turns]
    assert speakers[:4] == ["Visitor", "doctor", "Visitor", "doctor"]
    dialogue = roleplay("医生", turns=1, client=sync_client(live.v1, live.api_key))
    assert [who for who, _ in dialogue] == ["来访者", "医生"]


def test_python_api_sync_and_async(live: LiveServer) -> None:
    import asyncio

    client = sync_client(live.v1, live.api_key)
    assert generate_text("Hello", max_tokens=5, client=client)
    assert asyncio.run(agenerate_text("Hello", max_tokens=5, client=client))
    assert summarize("Cats sleep a lot. They also purr.", words=10, client=client)


# -- batch -------------------------------------------------------------------------------------

def batch_file(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "gpt-3.5-turbo", "max_tokens": 24, "temperature": 0,
                    "messages": [{"role": "user", "content": f"Count to {i % 7 + 3}."}]}
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST",
                                "url": "/v1/chat/completions", "body": body}) + "\n")


def test_batch_killed_halfway_then_resumed(live: LiveServer, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_file(src, 30)

    def start_and_stop_after(lines: int, sig: int) -> int:
        proc = subprocess.Popen([OASIS, "batch", str(src), "-o", str(dst), "-j", "2"],
                                env=env_for(live), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if dst.exists() and len(dst.read_bytes().splitlines()) >= lines:
                break
            time.sleep(0.05)
        proc.send_signal(sig)
        return proc.wait()

    # Ctrl-C: exit status 130, and every line written is whole
    assert start_and_stop_after(4, signal.SIGINT) == 130
    assert all(json.loads(x) for x in dst.read_text().splitlines())
    start_and_stop_after(10, signal.SIGKILL)
    first = len(dst.read_bytes().splitlines())
    assert 10 <= first < 30
    r = subprocess.run([OASIS, "batch", str(src), "-o", str(dst), "-j", "4"],
                       env=env_for(live), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "done:" in r.stderr
    lines = [json.loads(x) for x in dst.read_text().splitlines()]
    ids = [x["custom_id"] for x in lines]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(30))  # nothing missing, no duplicate
    assert all(x["response"]["status_code"] == 200 for x in lines)
    assert all(x["response"]["body"]["object"] == "chat.completion" for x in lines)


def test_batch_python_api_and_bad_requests(live: LiveServer, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        json.dumps({"custom_id": "ok", "method": "POST", "url": "/v1/completions",
                    "body": {"model": "text-davinci-002", "prompt": "Hi", "max_tokens": 3}})
        + "\n"
        + json.dumps({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "gpt-3.5-turbo", "messages": [], "colour": 1}}) + "\n")
    summary = run_batch(src, dst, client=sync_client(live.v1, live.api_key))
    assert (summary.succeeded, summary.refused, summary.failed) == (1, 1, 0)
    by_id = {x["custom_id"]: x for x in map(json.loads, dst.read_text().splitlines())}
    assert by_id["bad"]["response"]["status_code"] == 400
    assert by_id["bad"]["response"]["body"]["error"]["type"] == "invalid_request_error"
    dup = tmp_path / "dup.jsonl"
    dup.write_text(src.read_text().splitlines()[0] + "\n" + src.read_text().splitlines()[0])
    r = oasis(live, "batch", str(dup), "-o", str(tmp_path / "x.jsonl"))
    assert "duplicate custom_id" in one_clear_line(r)


# -- errors ------------------------------------------------------------------------------------

def test_errors_are_one_clear_line(live: LiveServer) -> None:
    nowhere = oasis(live, "complete", "hi", "--base-url", "http://127.0.0.1:9/v1")
    assert "no server at http://127.0.0.1:9 - start one with `make serve`" in one_clear_line(
        nowhere)
    bad_key = oasis(live, "classify", "hi", OPENAI_API_KEY="sk-oasis-wrong")
    assert "401" in one_clear_line(bad_key) and "invalid_api_key" in bad_key.stderr
    model = oasis(live, "complete", "hi", "-m", "no-such-model")
    assert "model_not_found" in one_clear_line(model)
    missing = oasis(live, "summarize", "/nonexistent/file.txt")
    assert "cannot read" in one_clear_line(missing)


def test_a_429_is_retried_then_succeeds(tmp_path: Path) -> None:
    proc, server = start_server(tmp_path, OASIS_ENGINE="fake")
    try:
        admin = {"Authorization": f"Bearer {server.api_key}"}
        key = httpx.post(f"{server.base_url}/admin/keys", headers=admin,
                         json={"name": "burst", "rpm": 60}).json()["value"]
        body = {"model": "text-davinci-002", "prompt": "x", "max_tokens": 2}
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as http:
            for _ in range(300):  # until the bucket is empty (it refills during the burst)
                if http.post(f"{server.v1}/completions", json=body).status_code == 429:
                    break
            else:
                pytest.fail("no 429 after 300 requests at rpm=60")
        r = subprocess.run([OASIS, "complete", "hello", "--max-tokens", "4"],
                           env={**os.environ, "OPENAI_BASE_URL": server.v1,
                                "OPENAI_API_KEY": key},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
    finally:
        stop_server(proc)
