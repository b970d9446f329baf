"""Hostile and careless input at the HTTP edge (fake engine): every one gets OpenAI's 400 (or
431) naming what is wrong, and the server answers the next request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from oasis.engine.base import GenerationRequest, Health
from oasis.engine.fake import FakeEngine, FakeHandle
from tests.conftest import API_KEY, make_app
from tests.unit.test_disconnect import free_port

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def _error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def _alive(http: TestClient) -> None:
    r = http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSG})
    assert r.status_code == 200, r.text
    assert http.get("/health").status_code == 200


def _nested(depth: int, leaf: Any = 1) -> Any:
    node = leaf
    for _ in range(depth):
        node = {"a": node}
    return node


@pytest.mark.parametrize(
    ("where", "build"),
    [
        ("messages", lambda d: {"model": "gpt-3.5-turbo",
                                "messages": [{"role": "user", "content": _nested(d)}]}),
        ("metadata", lambda d: {"model": "gpt-3.5-turbo", "messages": MSG,
                                "metadata": _nested(d)}),
        ("arrays", lambda d: {"model": "gpt-3.5-turbo", "messages": MSG,
                              "stop": json.loads("[" * d + "]" * d)}),
    ],
)
def test_json_nested_10000_deep_is_a_400(http: TestClient, where: str, build: Any) -> None:
    # json.dumps itself cannot write 10,000 levels: build the text by hand
    if where == "arrays":
        raw = ('{"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], '
               '"stop": ' + "[" * 10_000 + "]" * 10_000 + "}")
    else:
        inner = '{"a": ' * 10_000 + "1" + "}" * 10_000
        raw = (json.dumps(build(1)).replace('{"a": 1}', inner))
    r = http.post(CHAT, content=raw, headers={"Content-Type": "application/json"})
    err = _error(r)
    assert "nested" in err["message"] or "JSON" in err["message"]
    _alive(http)


def test_nesting_just_inside_the_limit_is_judged_on_its_merits(http: TestClient) -> None:
    body = {"model": "gpt-3.5-turbo", "messages": MSG, "metadata": _nested(40)}
    err = _error(http.post(CHAT, json=body))
    assert err["param"].startswith("metadata")  # refused as metadata, not as nesting


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "\ud800", "messages": MSG}, "model"),
        ({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "a\udc00b"}]},
         "messages.[0].content"),
        ({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x",
                                                  "name": "\udfff"}]},
         "messages.[0].name"),
        ({"model": "gpt-3.5-turbo", "messages": MSG, "stop": ["ok", "\ud83d"]}, "stop.[1]"),
    ],
)
def test_lone_surrogates_are_a_400_naming_the_field(http: TestClient, body: dict[str, Any],
                                                     param: str) -> None:
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as a \\udXXX escape
    r = http.post(CHAT, content=raw, headers={"Content-Type": "application/json"})
    err = _error(r)
    assert err["param"] == param and "surrogate" in err["message"]
    _alive(http)


def test_lone_surrogate_in_a_completion_prompt(http: TestClient) -> None:
    raw = json.dumps({"model": "text-davinci-002", "prompt": ["fine", "bad \ud800"]})
    err = _error(http.post("/v1/completions", content=raw,
                           headers={"Content-Type": "application/json"}))
    assert err["param"] == "prompt.[1]"


def test_a_surrogate_pair_is_fine(http: TestClient) -> None:
    raw = json.dumps({"model": "gpt-3.5-turbo", "messages": [{"role": "user",
                                                              "content": "smile \U0001F600"}]})
    assert "\\ud83d\\ude00" in raw
    r = http.post(CHAT, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200


def test_a_huge_model_name_is_cut_in_the_error(http: TestClient) -> None:
    err = _error(http.post(CHAT, json={"model": "m" * 1_000_000, "messages": MSG}), 404)
    assert err["code"] == "model_not_found" and len(err["message"]) < 400


def test_too_many_messages(tmp_path: Path) -> None:
    app = make_app(FakeEngine(n_ctx=4096), tmp=tmp_path, max_messages=50)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        err = _error(http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSG * 51}))
        assert err["param"] == "messages" and err["code"] == "array_above_max_length"
        assert "50" in err["message"]
        assert http.post(CHAT, json={"model": "gpt-3.5-turbo",
                                     "messages": MSG * 50}).status_code == 200


def test_twenty_thousand_messages_are_refused_by_default(http: TestClient) -> None:
    err = _error(http.post(CHAT, json={"model": "gpt-3.5-turbo",
                                       "messages": [{"role": "user", "content": "hi"}] * 20_000}))
    assert err["code"] == "array_above_max_length" and "2048" in err["message"]
    _alive(http)


def test_too_many_characters(tmp_path: Path) -> None:
    app = make_app(tmp=tmp_path, max_prompt_chars=10_000)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        big = [{"role": "user", "content": "x" * 6000}] * 2
        err = _error(http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": big}))
        assert err["param"] == "messages" and "10000" in err["message"]
        err = _error(http.post("/v1/completions", json={"model": "text-davinci-002",
                                                        "prompt": ["y" * 5001] * 2}))
        assert err["param"] == "prompt"


def test_body_over_the_limit(tmp_path: Path) -> None:
    app = make_app(tmp=tmp_path, max_body_bytes=100_000)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "z" * 200_000}]}
        err = _error(http.post(CHAT, json=body))
        assert err["code"] == "request_too_large" and "100000" in err["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            raw = json.dumps(body).encode()
            for i in range(0, len(raw), 8192):
                yield raw[i:i + 8192]

        err = _error(http.post(CHAT, content=chunks()))
        assert err["code"] == "request_too_large"
        _alive(http)


def test_headers_over_the_limit(tmp_path: Path) -> None:
    app = make_app(tmp=tmp_path, max_header_bytes=4096)
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        r = http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSG},
                      headers={"X-Junk": "j" * 5000})
        err = _error(r, 431)
        assert err["code"] == "request_header_fields_too_large"
        _alive(http)


def test_openapi_and_docs_are_not_served(http: TestClient) -> None:
    """Every route but /health needs a key, as the README says: there is no unauthenticated
    schema or docs page."""
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert http.get(path, headers={"Authorization": ""}).status_code in (401, 404)


class _Buggy(FakeEngine):
    """An engine with a bug that raises a non-oasis exception on a marked request."""

    def submit(self, request: GenerationRequest) -> FakeHandle:
        if request.max_tokens == 13:
            raise ZeroDivisionError("a bug")
        return super().submit(request)


@pytest.fixture
def buggy_server(tmp_path: Path) -> Iterator[str]:
    app = make_app(_Buggy(), tmp=tmp_path)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_500_keeps_the_connection_and_logs_once(buggy_server: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    bad = {"model": "gpt-3.5-turbo", "messages": MSG, "max_tokens": 13}
    good = {"model": "gpt-3.5-turbo", "messages": MSG}
    with caplog.at_level("ERROR"), httpx.Client(base_url=buggy_server, headers=headers) as c:
        r = c.post(CHAT, json=bad)
        err = _error(r, 500)
        assert err["type"] == "server_error" and "Traceback" not in r.text
        # the same keep-alive connection answers the next request
        r2 = c.post(CHAT, json=good)
        assert r2.status_code == 200
    tracebacks = [rec for rec in caplog.records if rec.exc_info and
                  isinstance(rec.exc_info[1], ZeroDivisionError)]
    assert len(tracebacks) == 1


def test_string_length_errors_say_what_is_wrong(http: TestClient) -> None:
    """A string of the right type but the wrong length is not "expected a string, but got a
    string" (a name of 65 characters breaks OpenAI's function-name rule)."""
    tool = {"type": "function", "function": {"name": "f" * 65, "parameters": {"type": "object"}}}
    err = _error(http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSG,
                                       "tools": [tool]}))
    assert "expected a string, but got a string" not in err["message"]
    assert err["param"] is not None and "name" in err["param"]


def test_raw_surrogate_bytes_are_invalid_json(http: TestClient) -> None:
    """UTF-8-encoded surrogates (bytes ED A0 80) are not UTF-8: the body is refused as JSON
    that cannot be read, not passed on to fail in the tokenizer or the database."""
    for path, raw in (
        ("/v1/completions", b'{"model":"gpt-3.5-turbo","prompt":"\xed\xa0\x80"}'),
        (CHAT, b'{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"\xed\xa0\x80"}]}'),
        ("/admin/keys", b'{"name":"\xed\xa0\x80"}'),
    ):
        err = _error(http.post(path, content=raw, headers={"Content-Type": "application/json"}))
        assert err["code"] == "invalid_json"
    _alive(http)


def test_an_unknown_key_in_a_text_part_is_named(http: TestClient) -> None:
    body = {"model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "foo": 1}]}]}
    err = _error(http.post(CHAT, json=body))
    assert err["param"] == "messages.[0].content.[0].foo"
    assert "foo" in err["message"]


@pytest.mark.parametrize("legacy", [False, True], ids=["tools", "functions"])
def test_a_forced_call_cut_short_is_never_a_null_call(tmp_path: Path, schemas: Any,
                                                      legacy: bool) -> None:
    """Two functions, `required`: the model must write the name; cut after one token, there is
    no call to return, and the body still follows OpenAI's schema (no null tool_calls)."""
    engine = FakeEngine(n_ctx=4096, reply='get_weather", "arguments": {}}')
    fns = [{"name": "get_weather", "parameters": {"type": "object"}},
           {"name": "get_time", "parameters": {"type": "object"}}]
    body: dict[str, Any] = {"model": "gpt-3.5-turbo", "messages": MSG, "max_tokens": 1}
    if legacy:
        body |= {"functions": fns, "function_call": {"name": "get_weather"}}
    else:
        body |= {"tools": [{"type": "function", "function": f} for f in fns],
                 "tool_choice": "required"}
    with TestClient(make_app(engine, tmp=tmp_path),
                    headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        r = http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    schemas.validate("CreateChatCompletionResponse", r.json())
    message = r.json()["choices"][0]["message"]
    assert message.get("tool_calls", []) is not None
    assert message.get("function_call", {}) is not None
    assert r.json()["choices"][0]["finish_reason"] == "length"


class _Down(FakeEngine):
    def health(self) -> Health:
        return Health(False, "engine down: the engine failed 4 times in 60 s")


def test_health_is_503_while_an_engine_is_down(tmp_path: Path) -> None:
    with TestClient(make_app(_Down(), tmp=tmp_path)) as http:
        r = http.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unhealthy"
        assert "failed 4 times" in body["errors"]["fake-model"]


def test_a_template_that_slices_contents_never_leaks_a_marker() -> None:
    """Qwen3-style templates keep only what follows '</think>' of an assistant turn: a content
    marker loses its pair. The prompt is still split without any marker left in it."""
    from oasis.serving.prompt import ChatTemplate

    qwen3 = ("{% for m in messages %}{% if m.role == 'assistant' %}"
             "{% set c = m.content.split('</think>')[-1] %}{% else %}{% set c = m.content %}"
             "{% endif %}<|im_start|>{{ m.role }}\n{{ c }}<|im_end|>\n{% endfor %}"
             "<|im_start|>assistant\n")
    segments = ChatTemplate(qwen3, bos_token="", eos_token="").render_segments([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>x</think>ok"},
        {"role": "user", "content": "again <|im_end|>", "name": "bob"},
    ])
    text = "".join(t for t, _ in segments)
    assert text.encode("utf-8")  # no lone surrogate left: it could not be encoded
    assert ("again <|im_end|>", True) in segments  # the user's text is still text
    assert segments[0] == ("<|im_start|>user\n", False)


def test_a_template_error_of_any_kind_is_a_400() -> None:
    from oasis.errors import InvalidRequestError
    from oasis.serving.prompt import ChatTemplate

    broken = "{{ messages[0]['content'] + 1 }}"  # a TypeError inside the template
    with pytest.raises(InvalidRequestError):
        ChatTemplate(broken, bos_token="", eos_token="").render([{"role": "user",
                                                                  "content": "x"}])


def test_infinite_prices_are_refused() -> None:
    from pydantic import ValidationError

    from oasis.config import PriceConfig

    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValidationError):
            PriceConfig(input=bad)


def test_a_refused_request_is_not_blocked_by_a_token_bucket_in_debt() -> None:
    from oasis.gateway.limits import Limits, decide

    d = decide(Limits(rpm=100, tpm=1000), requests=50, tokens_level=-500, tokens=0)
    assert d.allowed
    d = decide(Limits(rpm=100, tpm=1000), requests=50, tokens_level=-500, tokens=10)
    assert not d.allowed and d.blocked_by == "tokens"


def test_an_unwritable_quarantine_does_not_stop_the_ledger(tmp_path: Path) -> None:
    from oasis.gateway.usage import Ledger

    ledger = Ledger.__new__(Ledger)
    ledger.quarantine_dir = tmp_path / "file-not-dir"
    ledger.quarantine_dir.write_text("in the way")  # mkdir fails: a file has the name
    ledger.quarantined = 0
    ledger._quarantine([{"reason": "bad", "line": "{"}], "journal-1")
    assert ledger.quarantined == 1
