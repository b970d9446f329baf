"""Pieces of the applications that need no server: batch files, label matching."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import warnings
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI

from oasis.apps.batch import BatchInputError, arun_batch, done_ids, read_input
from oasis.apps.classify import (
    CONTENT_FREE_EN,
    SENTIMENT_CALIBRATION,
    SENTIMENT_EN,
    SENTIMENT_EXAMPLES,
    SENTIMENT_ZH,
    _match,
    _prompt,
    _scoring_prompt,
    calibrated,
    classify,
    default_labels,
    label_prior,
)
from oasis.apps.roleplay import (
    _counterpart_prompt,
    calls_itself,
    character_prompt,
    clean_line,
    roleplay,
    similarity,
    visitor_request_zh,
)


def line(cid: str, **over: object) -> str:
    item = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": []}, **over}
    return json.dumps(item)


def test_batch_input_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text(line("a") + "\n\n" + line("b") + "\n")
    assert [r["custom_id"] for r in read_input(f)] == ["a", "b"]
    for bad, why in [
        (line("a") + "\n" + line("a"), "duplicate custom_id"),
        ("{nope", "not JSON"),
        (line("a", url="/v1/images"), "'url' must be one of"),
        (line("a", method="GET"), "only POST"),
        (json.dumps({"url": "/v1/completions", "body": {}}), "missing 'custom_id'"),
        (line("a", body={"stream": True}), "streaming"),
    ]:
        f.write_text(bad + "\n")
        with pytest.raises(BatchInputError, match=why):
            read_input(f)


def test_a_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"custom_id": "a"}\n{"custom_id": "b"}\n{"custom_id": "c", "resp')
    assert done_ids(out) == {"a", "b"}
    assert out.read_text().endswith("}\n")  # appends continue on a whole line
    assert done_ids(tmp_path / "missing.jsonl") == set()


def test_label_matching_and_language() -> None:
    labels = ("positive", "negative", "neutral")
    assert _match(" Positive.", labels) == "positive"
    assert _match("I think it is negative overall", labels) == "negative"
    assert _match("positive or negative", labels) is None  # ambiguous: ask again
    assert _match("happy", labels) is None
    assert default_labels(["今天很好"]) == SENTIMENT_ZH
    assert default_labels(["good day"]) == SENTIMENT_EN
    assert default_labels(["good day"], "zh") == SENTIMENT_ZH


def test_sync_functions_work_inside_a_running_loop() -> None:
    """A notebook runs an event loop; the sync API must still work there."""
    import asyncio

    from oasis.apps.client import run

    async def answer() -> int:
        return 42

    async def notebook_cell() -> int:
        return run(answer())  # called synchronously while a loop runs

    assert asyncio.run(notebook_cell()) == 42
    assert run(answer()) == 42


# -- batch runs against a mock server (httpx.MockTransport behind the official SDK) -------------

class MockServer:
    """Answers chat completions after ``delay`` seconds; ``answers`` overrides some custom ids
    with (status, body). Counts requests in flight, to see that a run leaves none behind."""

    def __init__(self, delay: float = 0.0, answers: dict[str, tuple[int, bytes]] | None = None,
                 ) -> None:
        self.delay = delay
        self.answers = answers or {}
        self.in_flight = 0
        self.seen: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        cid = json.loads(request.content)["messages"][0]["content"]
        self.seen.append(cid)
        self.in_flight += 1
        try:
            await asyncio.sleep(self.delay)
            status, body = self.answers.get(cid, (200, json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }).encode()))
            return httpx.Response(status, content=body,
                                  headers={"content-type": "application/json"})
        finally:
            self.in_flight -= 1

    def client(self) -> AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self))
        return AsyncOpenAI(base_url="http://mock/v1", api_key="sk-x", http_client=http,
                           max_retries=0)


def batch_input(path: Path, n: int) -> None:
    path.write_text("".join(
        line(f"r{i}", body={"model": "m", "messages": [{"role": "user", "content": f"r{i}"}]})
        + "\n" for i in range(n)))


def output_ids(path: Path) -> list[str]:
    """The custom_ids of the output, each line parsed whole (a torn line fails here)."""
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n")
    return [json.loads(x)["custom_id"] for x in raw.splitlines()]


def test_batch_writes_results_refusals_and_resumes_failures(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_input(src, 8)
    server = MockServer(answers={
        "r2": (400, b'{"error": {"message": "bad", "type": "invalid_request_error"}}'),
        "r5": (503, b'{"error": {"message": "busy", "type": "server_error"}}')})
    summary = asyncio.run(arun_batch(src, dst, concurrency=3, retries=0,
                                     client=server.client()))
    assert (summary.succeeded, summary.refused, summary.failed) == (6, 1, 1)
    assert summary.prompt_tokens == 18 and summary.completion_tokens == 12
    assert sorted(output_ids(dst)) == sorted(f"r{i}" for i in range(8) if i != 5)
    by_id = {x["custom_id"]: x for x in map(json.loads, dst.read_text().splitlines())}
    assert by_id["r2"]["response"]["status_code"] == 400
    assert by_id["r0"]["response"]["body"]["object"] == "chat.completion"
    # the next run does only what failed
    again = MockServer()
    summary = asyncio.run(arun_batch(src, dst, retries=0, client=again.client()))
    assert again.seen == ["r5"] and summary.skipped == 7 and summary.succeeded == 1
    assert sorted(output_ids(dst)) == sorted(f"r{i}" for i in range(8))


def test_a_failing_worker_stops_the_others_before_the_output_is_closed(
        tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_input(src, 12)
    server = MockServer(delay=0.05, answers={"r5": (200, b"<html>not json</html>")})

    async def main() -> None:
        with pytest.raises(json.JSONDecodeError):  # the worker's own error, not a group
            await arun_batch(src, dst, concurrency=4, retries=0, client=server.client())
        # every other worker was stopped and awaited: nothing is left to write to a closed fd
        assert server.in_flight == 0
        assert asyncio.all_tasks() == {asyncio.current_task()}
        written = output_ids(dst)
        await asyncio.sleep(0.2)
        assert output_ids(dst) == written

    asyncio.run(main())
    assert "r5" not in output_ids(dst)


def test_a_cancelled_batch_leaves_whole_lines_and_resumes(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_input(src, 40)
    server = MockServer(delay=0.01)

    async def main() -> None:
        run = asyncio.create_task(arun_batch(src, dst, concurrency=4, client=server.client()))
        while not dst.exists() or len(dst.read_bytes().splitlines()) < 6:
            await asyncio.sleep(0.005)
        run.cancel()  # what Ctrl-C does to asyncio.run's main task
        with pytest.raises(asyncio.CancelledError):
            await run
        assert server.in_flight == 0

    asyncio.run(main())
    first = output_ids(dst)
    assert 6 <= len(first) < 40 and len(set(first)) == len(first)
    summary = asyncio.run(arun_batch(src, dst, concurrency=4, client=MockServer().client()))
    assert summary.skipped == len(first)
    assert sorted(output_ids(dst)) == sorted(f"r{i}" for i in range(40))


# -- classify: the scoring prompt and its calibration, against a mock completions server -------

class ScoringServer:
    """/v1/completions with echo + logprobs, like oasis: each prompt ends with a label, whose
    log-probability is ``bias[label]`` plus 2 when the text (after the last "Text:") holds one
    of ``cues[label]``. The prompt before the label is one token. ``status`` != 200 refuses;
    chat completions answer ``chat_answer``."""

    def __init__(self, labels: tuple[str, ...], bias: dict[str, float],
                 cues: dict[str, tuple[str, ...]], status: int = 200,
                 chat_answer: str = "") -> None:
        self.labels, self.bias, self.cues = labels, bias, cues
        self.status = status
        self.chat_answer = chat_answer
        self.completions: list[list[str]] = []  # each request's prompts
        self.chats = 0

    def value(self, head: str, label: str) -> float:
        text = head.rsplit("文本：", 1)[-1].rsplit("Text: ", 1)[-1].split("\n")[0]
        return self.bias[label] + (2.0 if any(c in text for c in self.cues[label]) else 0.0)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path.endswith("/chat/completions"):
            self.chats += 1
            return httpx.Response(200, json={
                "id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": self.chat_answer}}]})
        self.completions.append(body["prompt"])
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {
                "message": "no echo here", "type": "invalid_request_error"}})
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            label = next(x for x in self.labels if prompt.endswith(x))
            head = prompt[: -len(label)].rstrip(" ")
            choices.append({
                "index": i, "text": prompt, "finish_reason": "length",
                "logprobs": {"tokens": [head, prompt[len(head):]],
                             "token_logprobs": [None, self.value(head, label)],
                             "text_offset": [0, len(head)], "top_logprobs": None}})
        return httpx.Response(200, json={
            "id": "cmpl", "object": "text_completion", "created": 0, "model": "m",
            "choices": choices})

    def client(self) -> AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self))
        return AsyncOpenAI(base_url="http://mock/v1", api_key="sk-x", http_client=http,
                           max_retries=0)


# a model that says 中性 whatever the text, unless calibrated
ZH_BIAS = {"积极": -3.0, "消极": -3.0, "中性": -0.5}
ZH_CUES = {"积极": ("好", "棒", "喜欢"), "消极": ("差", "失望", "不"), "中性": ("点", "位于")}
ZH_TEXTS = ["这本书很好看，我很喜欢。", "服务太差了，很失望。", "商店九点开门。"]


def test_the_sentiment_scoring_prompt_has_examples_and_label_meanings() -> None:
    head = _scoring_prompt("今天很好", SENTIMENT_ZH, SENTIMENT_EXAMPLES[SENTIMENT_ZH])
    assert head.startswith("判断下面文本的情感：积极（")
    for text, label in SENTIMENT_EXAMPLES[SENTIMENT_ZH]:
        assert f"文本：{text}\n情感：{label}\n\n" in head
    assert head.endswith("\n\n文本：今天很好\n情感：")
    english = _scoring_prompt("Fine.", SENTIMENT_EN, SENTIMENT_EXAMPLES[SENTIMENT_EN])
    assert "Text: The bookshop is in the city centre.\nSentiment: neutral\n\n" in english
    assert english.endswith("\n\nText: Fine.\nSentiment:")
    # custom labels: the plain prompt, with the caller's examples only
    topics = ("sports", "politics")
    assert _scoring_prompt("A goal!", topics, ()) == _prompt("A goal!", topics) == (
        "Choose a label for the text from: sports, politics.\nText: A goal!\nLabel:")
    shown = _scoring_prompt("A goal!", topics, [("Vote now", "politics")])
    assert shown == ("Choose a label for the text from: sports, politics.\n\n"
                     "Text: Vote now\nLabel: politics\n\nText: A goal!\nLabel:")
    assert "类别：" in _prompt("进球了", ("体育", "政治"))


def test_calibration_divides_by_the_prior() -> None:
    prior = label_prior([[-3.0, -3.0, -0.5], [-1.0, -3.0, -0.5], [-3.0, -1.0, -0.5]])
    assert sum(math.exp(p) for p in prior) == pytest.approx(1.0)
    assert max(range(3), key=lambda i: prior[i]) == 2  # the label it leans to
    raw = calibrated([-1.0, -3.0, -0.5], None)
    assert max(range(3), key=lambda i: raw[i]) == 2 and sum(raw) == pytest.approx(1.0)
    fixed = calibrated([-1.0, -3.0, -0.5], prior)
    assert max(range(3), key=lambda i: fixed[i]) == 0 and sum(fixed) == pytest.approx(1.0)
    assert calibrated([0.0, 0.0], [math.log(0.5)] * 2) == pytest.approx([0.5, 0.5])


def test_classify_calibrates_once_per_call_and_label_set() -> None:
    server = ScoringServer(SENTIMENT_ZH, ZH_BIAS, ZH_CUES)
    results = classify(ZH_TEXTS, concurrency=1, client=server.client())  # 1: no deadlock
    assert [r.label for r in results] == ["积极", "消极", "中性"]
    assert all(r.method == "scoring" and r.scores is not None for r in results)
    assert all(sum(r.scores.values()) == pytest.approx(1.0) for r in results if r.scores)
    assert results[0].confidence == max(results[0].scores.values())  # type: ignore[union-attr]
    # one request per text, plus one with the calibration texts (each with every label)
    assert len(server.completions) == len(ZH_TEXTS) + 1
    calibration = [p for p in server.completions if len(p) > 3]
    assert len(calibration) == 1
    assert len(calibration[0]) == 3 * len(SENTIMENT_CALIBRATION[SENTIMENT_ZH])
    for text in SENTIMENT_CALIBRATION[SENTIMENT_ZH]:
        assert any(f"文本：{text}\n情感：" in p for p in calibration[0])
    # without calibration this model says 中性 for everything
    plain = classify(ZH_TEXTS, calibrate=False, client=server.client())
    assert [r.label for r in plain] == ["中性"] * 3


def test_mixed_languages_calibrate_each_label_set_and_custom_labels_use_content_free() -> None:
    labels = (*SENTIMENT_ZH, *SENTIMENT_EN)
    bias = {**ZH_BIAS, "positive": -3.0, "negative": -3.0, "neutral": -0.5}
    cues = {**ZH_CUES, "positive": ("love",), "negative": ("awful",), "neutral": ("at",)}
    server = ScoringServer(labels, bias, cues)
    results = classify([*ZH_TEXTS, "I love it", "Awful, awful."], client=server.client())
    assert [r.label for r in results] == ["积极", "消极", "中性", "positive", "negative"]
    assert len([p for p in server.completions if len(p) > 3]) == 2  # zh and en priors
    topics = ScoringServer(("sports", "politics"), {"sports": 0.0, "politics": -1.5},
                           {"sports": ("goal",), "politics": ("vote",)})
    results = classify(["A goal!", "Please vote"], ["sports", "politics"],
                       client=topics.client())
    assert [r.label for r in results] == ["sports", "politics"]
    (free,) = [p for p in topics.completions if len(p) > 2]
    assert free == [f"{_prompt(x, ('sports', 'politics'))} {lab}"
                    for x in CONTENT_FREE_EN for lab in ("sports", "politics")]
    assert all("\n\n" not in p for p in topics.completions[0])  # no examples of ours


def test_given_examples_are_checked_and_shown() -> None:
    server = ScoringServer(("sports", "politics"), {"sports": 0.0, "politics": 0.0},
                           {"sports": ("goal",), "politics": ("vote",)})
    classify(["A goal!"], ["sports", "politics"], examples=[("Vote now", "politics")],
             calibrate=False, client=server.client())
    assert server.completions == [[
        "Choose a label for the text from: sports, politics.\n\nText: Vote now\nLabel: "
        "politics\n\nText: A goal!\nLabel: " + lab for lab in ("sports", "politics")]]
    with pytest.raises(ValueError, match="not among the labels: cooking"):
        classify(["x"], ["sports", "politics"], examples=[("Stir", "cooking")],
                 client=server.client())
    with pytest.raises(ValueError, match="give labels too"):
        classify(["x"], examples=[("Stir", "cooking")], client=server.client())


def test_a_server_without_prompt_logprobs_falls_back_to_chat() -> None:
    server = ScoringServer(SENTIMENT_ZH, ZH_BIAS, ZH_CUES, status=400, chat_answer="积极")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Task exception was never retrieved"
        results = classify(ZH_TEXTS, client=server.client())
        gc.collect()
    assert {r.method for r in results} == {"chat"}  # the mock's chat has no schema either
    assert server.chats >= 3


# -- roleplay: who says what ---------------------------------------------------------------------

def test_roleplay_prompts_in_chinese_say_who_is_who() -> None:
    scenario = "病人最近总是失眠，来医院看病"
    system, ask = visitor_request_zh("医生", scenario, [])
    assert system == {"role": "system", "content": (
        "你在写一段医生和来访者的对话。场景：病人最近总是失眠，来医院看病。"
        "来访者就是场景里来找医生的那个人。")}
    assert ask["role"] == "user" and "以“医生您好，我”开头" in ask["content"]
    assert "第一人称" in ask["content"] and "不要写医生的话" in ask["content"]
    _, later = visitor_request_zh("医生", scenario, [("来访者", "医生您好，我睡不着。"),
                                                    ("医生", "多久了？")])
    assert "到目前为止的对话：\n来访者：医生您好，我睡不着。\n医生：多久了？\n\n" in (
        later["content"])
    assert "不要重复医生的话" in later["content"]
    system, _ = visitor_request_zh("老师", None, [])
    assert system["content"] == "你在写一段老师和来访者的对话。来访者是来找老师的人。"
    assert character_prompt("医生", scenario + "。") == (
        "你是一位医生。请始终以医生的身份和口吻说话，回答简洁、专业、友好。"
        "场景：病人最近总是失眠，来医院看病。")
    # English as before
    assert character_prompt("doctor", "a cough") == (
        "You are a doctor. Always speak as the doctor would: in character, concise, "
        "professional and kind. Scenario: a cough")
    assert _counterpart_prompt("doctor", None).startswith("You are talking to a doctor.")


def test_roleplay_lines_are_cleaned() -> None:
    visitor, doctor = ("来访者", "病人", "患者"), ("医生",)
    assert clean_line("病人：医生您好，我最近总是失眠。", visitor, doctor) == (
        "医生您好，我最近总是失眠。")
    assert clean_line("**患者**：我睡不着。\n医生：您好，请坐。", visitor, doctor) == "我睡不着。"
    assert clean_line("医生：您先别急。", visitor, doctor) == ""  # the other's turn: ask again
    assert clean_line("Doctor: Take a seat.\nPatient: Thanks.", ("doctor",),
                      ("Visitor", "Patient")) == "Take a seat."
    assert clean_line("我觉得：睡前别看手机。", visitor, doctor) == "我觉得：睡前别看手机。"


def test_similarity_and_a_character_taking_the_visitors_part() -> None:
    line = "希望这些措施能帮助您的失眠问题得到改善。"
    assert similarity(line, line) == 1.0
    assert similarity(line, "医生，" + line) == 1.0  # holds the other
    assert similarity(line, "我最近晚上总是睡不着，白天很累。") < 0.3
    assert similarity("", line) == 0.0
    for taken in ["你好，医生。我最近总是失眠。", "医生，我可以理解。", "您好，医生",
                  "Hello, doctor. I feel ill."]:
        assert calls_itself(taken, "doctor" if taken.isascii() else "医生"), taken
    for fine in ["您好！失眠多久了？", "医生建议您多休息。", "Doctors say rest helps."]:
        assert not calls_itself(fine, "doctor" if fine.isascii() else "医生"), fine


class ChatServer:
    """Chat completions answering from ``answers`` in turn; records each request's messages."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.requests: list[list[dict[str, str]]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content)["messages"])
        return httpx.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": self.answers.pop(0)}}]})

    def client(self) -> AsyncOpenAI:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self))
        return AsyncOpenAI(base_url="http://mock/v1", api_key="sk-x", http_client=http,
                           max_retries=0)


def test_a_repeated_line_is_sampled_again() -> None:
    said = "医生您好，我最近总是失眠，晚上翻来覆去睡不着。"
    answer = "您好，失眠多久了？睡前有喝咖啡或看手机的习惯吗？"
    server = ChatServer([
        "来访者：" + said,
        said,  # the doctor copies the visitor: asked again
        "你好，医生。我也失眠。",  # the doctor plays the visitor: asked again
        answer,
    ])
    dialogue = roleplay("医生", scenario="病人最近总是失眠，来医院看病", turns=1,
                        client=server.client())
    assert dialogue == [("来访者", said), ("医生", answer)]
    visitor, *doctor = server.requests
    assert visitor[0]["role"] == "system" and "来访者就是场景里" in visitor[0]["content"]
    assert len(visitor) == 2 and "第一句话" in visitor[1]["content"]
    assert all(r[0]["content"].startswith("你是一位医生。") for r in doctor)
    assert all(r[1:] == [{"role": "user", "content": said}] for r in doctor)
    # three copies in a row: the least alike is kept, no fourth request
    close = "您最近总是失眠，晚上翻来覆去睡不着？"  # 0.8 alike, where a copy is 1
    server = ChatServer([said, said, close, said + "嗯"])
    dialogue = roleplay("医生", turns=1, client=server.client())
    assert len(server.requests) == 4 and dialogue[1] == ("医生", close)


def test_english_roleplay_is_the_chat_it_was() -> None:
    server = ChatServer(["Visitor: Hello, I have a cough.", "Doctor: How long?"])
    dialogue = roleplay("doctor", scenario="a cough", turns=1, client=server.client())
    assert dialogue == [("Visitor", "Hello, I have a cough."), ("doctor", "How long?")]
    visitor, doctor = server.requests
    assert visitor == [
        {"role": "system", "content": _counterpart_prompt("doctor", "a cough")},
        {"role": "user", "content": "Start the conversation."}]
    assert doctor == [{"role": "system", "content": character_prompt("doctor", "a cough")},
                      {"role": "user", "content": "Hello, I have a cough."}]
