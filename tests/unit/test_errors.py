"""Every error leaves in OpenAI's envelope with OpenAI's status (fake engine)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from oasis.engine.base import GenerationRequest
from oasis.engine.fake import FakeEngine
from tests.conftest import API_KEY, Schemas, make_app

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]


def error_of(r: Any, status: int, schemas: Schemas) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    schemas.validate("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    err: dict[str, Any] = body["error"]
    return err


def test_malformed_json_is_400(http: TestClient, schemas: Schemas) -> None:
    r = http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    err = error_of(r, 400, schemas)
    assert err["type"] == "invalid_request_error"
    assert "could not parse the JSON body" in err["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"messages": MSGS}, "model", "Missing required parameter"),
        ({"model": "gpt-3.5-turbo"}, "messages", "Missing required parameter"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "temperature": "hot"}, "temperature",
         "Invalid type for 'temperature': expected a decimal, but got a string"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "temperature": 3}, "temperature",
         "Expected a value <= 2, but got 3"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "n": 0}, "n", "Expected a value >= 1"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "top_p": 1.5}, "top_p", "<= 1"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "max_tokens": "10"}, "max_tokens",
         "expected an integer, but got a string"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "stop": ["a", "b", "c", "d", "e"]},
         "stop", "array too long"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "stream": "yes"}, "stream",
         "expected a boolean"),
        ({"model": "gpt-3.5-turbo", "messages": []}, "messages", "empty array"),
        ({"model": "gpt-3.5-turbo", "messages": [{"role": "wizard", "content": "x"}]},
         "messages.[0].role", "Invalid value for 'messages.[0].role'"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "logit_bias": {"abc": 1}}, "logit_bias",
         "Invalid key in 'logit_bias'"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "logit_bias": {"5": 101}},
         "logit_bias.5", "<= 100"),
        # inside unions (content: a string or parts; parts tagged by type)
        ({"model": "gpt-3.5-turbo", "messages": [{"role": "user",
                                                  "content": [{"type": "text"}]}]},
         "messages.[0].content.[0].text", "Missing required parameter"),
        ({"model": "gpt-3.5-turbo", "messages": [{"role": "user",
                                                  "content": [{"type": "text", "text": 5}]}]},
         "messages.[0].content.[0].text", "expected a string"),
        ({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": 7}]},
         "messages.[0].content", "Invalid type"),
        ({"model": "gpt-3.5-turbo", "messages": MSGS, "stop": [1]}, "stop.[0]", "Invalid type"),
    ],
)
def test_wrong_types_and_out_of_range_values_are_400(
    http: TestClient, schemas: Schemas, body: dict[str, Any], param: str, fragment: str
) -> None:
    err = error_of(http.post(CHAT, json=body), 400, schemas)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert fragment in err["message"]


def test_unrecognized_argument_is_400(http: TestClient, schemas: Schemas) -> None:
    err = error_of(http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSGS,
                                         "temprature": 1}), 400, schemas)
    assert err["message"] == "Unrecognized request argument supplied: temprature"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"store": True}, "store"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
    ],
)
def test_documented_but_unsupported_parameters_are_named(
    http: TestClient, schemas: Schemas, extra: dict[str, Any], param: str
) -> None:
    err = error_of(http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSGS, **extra}),
                   400, schemas)
    assert err["param"] == param
    assert err["code"] == "unsupported_parameter"
    assert f"'{param}'" in err["message"]


def test_image_parts_and_orphan_tool_messages_are_refused(
    http: TestClient, schemas: Schemas
) -> None:
    img = {"role": "user", "content": [{"type": "image_url",
                                        "image_url": {"url": "http://x/y.png"}}]}
    err = error_of(http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": [img]}), 400,
                   schemas)
    assert "image_url" in err["message"]
    tool = {"role": "tool", "content": "42", "tool_call_id": "call_1"}
    err = error_of(http.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": [tool]}), 400,
                   schemas)
    assert err["param"] == "messages.[0].role"


def test_suffix_is_refused_on_completions(http: TestClient, schemas: Schemas) -> None:
    r = http.post("/v1/completions", json={"model": "text-davinci-002", "prompt": "a",
                                           "suffix": "b"})
    assert error_of(r, 400, schemas)["param"] == "suffix"


def test_context_length_exceeded_gives_the_numbers(http: TestClient, schemas: Schemas) -> None:
    # the fake engine has 256 tokens of context; each byte is a token
    r = http.post("/v1/completions", json={"model": "text-davinci-002", "prompt": "x" * 200,
                                           "max_tokens": 100})
    err = error_of(r, 400, schemas)
    assert err["code"] == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in err["message"]
    assert "you requested 300 tokens (200 in the prompt, 100 in the completion)" in err["message"]
    r = http.post(CHAT, json={"model": "gpt-3.5-turbo",
                              "messages": [{"role": "user", "content": "y" * 300}]})
    err = error_of(r, 400, schemas)
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"


def test_auth_missing_and_wrong_key_are_401(tmp_path: Path, schemas: Schemas) -> None:
    with TestClient(make_app(tmp=tmp_path)) as raw:
        err = error_of(raw.get("/v1/models"), 401, schemas)
        assert err["code"] == "invalid_api_key" and "didn't provide an API key" in err["message"]
        r = raw.get("/v1/models", headers={"Authorization": "Bearer sk-wrong-key-000"})
        err = error_of(r, 401, schemas)
        assert err["code"] == "invalid_api_key"
        assert "sk-wrong-key-000" not in err["message"]  # the key is masked
        assert raw.get("/health").status_code == 200  # health needs no key
        sdk = OpenAI(base_url="http://testserver/v1", api_key="nope", http_client=raw,
                     max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            sdk.models.list()


def test_no_auth_means_open(tmp_path: Path) -> None:
    with TestClient(make_app(api_key=None, tmp=tmp_path, no_auth=True),
                    base_url="http://127.0.0.1:8000") as raw:
        assert raw.get("/v1/models").status_code == 200


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "127.0.0.2:1", "[::1]:8000",
                                  "LOCALHOST"])
def test_no_auth_answers_loopback_hosts(tmp_path: Path, host: str) -> None:
    with TestClient(make_app(api_key=None, tmp=tmp_path, no_auth=True)) as raw:
        assert raw.get("/v1/models", headers={"host": host}).status_code == 200
        # the console on the same origin
        r = raw.post("/v1/chat/completions", headers={"host": host, "origin": f"http://{host}"},
                     json={"model": "gpt-3.5-turbo", "max_tokens": 1,
                           "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("headers", [
    {"host": "evil.example"},  # DNS rebinding: the attacker's name, pointed at 127.0.0.1
    {"host": "evil.example:8000"},
    {"host": "127.0.0.1.evil.example"},
    {"host": ""},
    {"host": "127.0.0.1:8000", "origin": "https://evil.example"},  # a cross-site page
    {"host": "127.0.0.1:8000", "origin": "null"},  # a sandboxed frame, a file:// page
    {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1.evil.example"},
    {"host": "127.0.0.1:8000", "origin": "http://[zz"},  # not a URL at all
    {"host": "[::1"},
])
def test_no_auth_refuses_other_sites(tmp_path: Path, headers: dict[str, str],
                                     schemas: Schemas) -> None:
    with TestClient(make_app(api_key=None, tmp=tmp_path, no_auth=True)) as raw:
        for r in (raw.get("/v1/models", headers=headers),
                  raw.post("/admin/keys", headers=headers, json={"name": "x"}),
                  raw.get("/console/api/me", headers=headers)):
            assert error_of(r, 403, schemas)["type"] in ("permission_error",
                                                         "invalid_request_error")
            assert "--no-auth" in r.json()["error"]["message"]


def test_database_keys_authenticate_until_revoked(tmp_path: Path, schemas: Schemas) -> None:
    app = make_app(api_key=None, tmp=tmp_path, key_cache_seconds=0.2)
    store = app.state.oasis.keys
    info, secret = store.create("alice")
    with TestClient(app) as raw:
        ok = raw.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert ok.status_code == 200
        store.revoke(info.prefix)  # as `oasis keys revoke` does, from another process
        time.sleep(0.25)  # servers trust a verified key for OASIS_KEY_CACHE_SECONDS
        r = raw.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert error_of(r, 401, schemas)["code"] == "invalid_api_key"


def test_unknown_model_is_404(client: OpenAI, http: TestClient, schemas: Schemas) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-5-ultra", messages=MSGS)  # type: ignore[arg-type]
    assert e.value.code == "model_not_found"
    err = error_of(http.get("/v1/models/nope"), 404, schemas)
    assert err["code"] == "model_not_found"
    assert err["message"] == "The model `nope` does not exist or you do not have access to it."


def test_unknown_route_and_method_use_the_envelope(http: TestClient, schemas: Schemas) -> None:
    err = error_of(http.get("/v1/nothing-here"), 404, schemas)
    assert err["message"] == "Invalid URL (GET /v1/nothing-here)"
    err = error_of(http.get(CHAT), 405, schemas)
    assert "Invalid method" in err["message"]


class ExplodingEngine(FakeEngine):
    def submit(self, request: GenerationRequest) -> Any:
        raise RuntimeError("secret internal detail /etc/passwd")


def test_500_never_leaks_a_traceback_and_the_server_keeps_serving(
    tmp_path: Path, schemas: Schemas
) -> None:
    engine = ExplodingEngine()
    app = make_app(engine, tmp=tmp_path)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with TestClient(app, headers=headers, raise_server_exceptions=False) as raw:
        r = raw.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSGS})
        err = error_of(r, 500, schemas)
        assert err["type"] == "server_error"
        assert "secret" not in r.text and "Traceback" not in r.text
        assert raw.get("/v1/models").status_code == 200


def test_overload_is_503_with_retry_after(tmp_path: Path, schemas: Schemas) -> None:
    engine = FakeEngine(max_running=0)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with TestClient(make_app(engine, tmp=tmp_path), headers=headers) as raw:
        r = raw.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSGS})
        err = error_of(r, 503, schemas)
        assert r.headers["retry-after"] == "1"
        assert err["code"] == "server_overloaded"


def test_more_sequences_than_the_server_can_hold_is_a_400(tmp_path: Path,
                                                          schemas: Schemas) -> None:
    engine = FakeEngine(max_sequences=8)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with TestClient(make_app(engine, tmp=tmp_path), headers=headers) as raw:
        r = raw.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSGS, "n": 9})
        err = error_of(r, 400, schemas)
        assert err["param"] == "n" and "at most 8 at once" in err["message"]
        r = raw.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSGS, "n": 8})
        assert r.status_code == 200
        assert engine.stats().running == 0


def test_a_key_restricted_to_models_gets_404_for_others(tmp_path: Path,
                                                        schemas: Schemas) -> None:
    app = make_app(api_key=None, tmp=tmp_path)
    _, secret = app.state.oasis.keys.create("limited", models=["gpt-3.5-turbo"])
    with TestClient(app, headers={"Authorization": f"Bearer {secret}"}) as raw:
        ids = [m["id"] for m in raw.get("/v1/models").json()["data"]]
        assert ids == ["gpt-3.5-turbo"]
        assert raw.post(CHAT, json={"model": "gpt-3.5-turbo", "messages": MSGS}).status_code == 200
        r = raw.post(CHAT, json={"model": "fake-model", "messages": MSGS})
        assert error_of(r, 404, schemas)["code"] == "model_not_found"
        r = raw.post("/v1/completions", json={"model": "text-davinci-002", "prompt": "x"})
        assert error_of(r, 404, schemas)["code"] == "model_not_found"
        assert error_of(raw.get("/v1/models/fake-model"), 404, schemas)["param"] == "model"
