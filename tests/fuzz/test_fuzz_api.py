"""Fuzz the HTTP API on the fake engine: requests drawn from OpenAI's request schemas, the same
with hostile values anywhere in them, bytes that are not quite JSON, and the admin, usage and
model routes with random ids, bodies and query strings.

Properties, for every request:

- the status is below 500 (a 503 ``server_overloaded`` would be allowed; the fake engine here
  never overloads);
- every non-2xx body is exactly OpenAI's envelope ``{"error": {"message", "type", "param",
  "code"}}``, and so is an error event inside a stream;
- every 200 body validates against OpenAI's response schema, and every stream chunk against the
  chunk schema, ending with ``[DONE]``;
- afterwards the server is alive: ``/health`` answers 200 and a small chat request answers.

Each property runs ``OASIS_FUZZ_EXAMPLES`` examples (default 300: about 20 s for the four on
two cores); with ``CI`` set the examples are derandomized, so CI runs are reproducible.
``make fuzz`` runs 5000 per property and prints Hypothesis's statistics, status codes and error
codes among them (the ``event`` lines).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from oasis.engine.fake import FakeEmbedder, FakeEngine
from tests.conftest import API_KEY, Schemas, make_app, sse_data, without_nulls
from tests.fuzz.strategies import (
    HUGE_INTS,
    SERVED_MODELS,
    hostile_values,
    mutated,
    raw_bodies,
    request_bodies,
    scalars,
    url_part,
    url_texts,
)
from tests.fuzz.strategies import encode as encode_json

EXAMPLES = int(os.environ.get("OASIS_FUZZ_EXAMPLES", "300"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=IN_CI,
    database=None if IN_CI else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
    print_blob=True,
)

CHAT = request_bodies("CreateChatCompletionRequest")
COMPLETION = request_bodies("CreateCompletionRequest")
ENVELOPE = {"message", "type", "param", "code"}
HI = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One server for the whole module (one per example would cost more than the example):
    what an example leaves behind (keys, usage records, a wedged engine) meets the next ones,
    as on a real server."""
    # a context of 4096 (byte) tokens: room for tool declarations and schemas in the prompt
    app = make_app(FakeEngine(n_ctx=4096), tmp=Path(tmp_path_factory.mktemp("fuzz")),
                   embedder=FakeEmbedder())
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"},
                    raise_server_exceptions=False) as client:
        yield client


# -- checks ------------------------------------------------------------------------------------


def check_envelope(body: Any, where: str) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, f"{where}: not an envelope: {body}"
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ENVELOPE, f"{where}: keys {error}"
    assert isinstance(error["message"], str) and error["message"], where
    assert isinstance(error["type"], str), where
    assert error["param"] is None or isinstance(error["param"], str), where
    assert error["code"] is None or isinstance(error["code"], str), where
    return error


def check_status(r: Response, route: str) -> None:
    """Status below 500 and, for an error, the envelope; records both as Hypothesis events."""
    if r.is_success:
        event(f"{route} -> {r.status_code}")
        return
    overloaded = r.status_code == 503 and "server_overloaded" in r.text
    assert r.status_code < 500 or overloaded, f"{route}: {r.status_code} {r.text[:2000]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    error = check_envelope(r.json(), f"{route} {r.status_code}")
    event(f"{route} -> {r.status_code} {error['code']}")


def null_first_logprobs(body: dict[str, Any], echo: bool) -> dict[str, Any]:
    """With echo and logprobs the first prompt token's entries are null, as OpenAI sends them
    (README "Parameters"), where the document types them as numbers: fill them to validate."""
    for choice in body.get("choices", []) if echo else []:
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            if lp.get("token_logprobs") and lp["token_logprobs"][0] is None:
                lp["token_logprobs"][0] = 0.0
            if lp.get("top_logprobs") and lp["top_logprobs"][0] is None:
                lp["top_logprobs"][0] = {}
    return body


def check_stream(r: Response, kind: str, schemas: Schemas, echo: bool) -> None:
    payloads = sse_data(r.text)
    assert payloads and payloads[-1] == "[DONE]", r.text[-500:]
    for i, payload in enumerate(payloads[:-1]):
        chunk = json.loads(payload)
        if "error" in chunk:
            error = check_envelope(chunk, f"{kind} stream error")
            event(f"{kind} stream error {error['code']}")
            assert i == len(payloads) - 2, "an error event must be the last before [DONE]"
            assert error["type"] != "server_error" or error["code"] == "server_overloaded", chunk
        elif kind == "chat":
            schemas.validate("CreateChatCompletionStreamResponse", chunk)
        else:
            # finish_reason is null until a choice's last chunk, as OpenAI streams it; the
            # document's schema (shared with the whole body) does not say so.
            for choice in chunk["choices"]:
                if choice.get("finish_reason") is None:
                    choice["finish_reason"] = "stop"
            schemas.validate("CreateCompletionResponse", null_first_logprobs(chunk, echo))


def check_generation(r: Response, kind: str, schemas: Schemas, request: Any) -> None:
    """``request``: what was sent (bytes when it was not JSON) for what the checks allow."""
    check_status(r, kind)
    if r.status_code != 200:
        return
    echo = not isinstance(request, dict) or request.get("echo") is True
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        event(f"{kind} -> 200 stream")
        check_stream(r, kind, schemas, echo)
    elif kind == "chat":
        schemas.validate("CreateChatCompletionResponse", r.json())
    else:
        schemas.validate("CreateCompletionResponse", null_first_logprobs(r.json(), echo))


def check_alive(http: TestClient) -> None:
    assert http.get("/health").status_code == 200
    r = http.post("/v1/chat/completions", json=HI)
    assert r.status_code == 200, f"the server stopped answering: {r.status_code} {r.text[:500]}"
    assert r.json()["choices"][0]["message"]["content"]


# -- generation endpoints ----------------------------------------------------------------------

ENGINE_NAMES = st.one_of(st.sampled_from(SERVED_MODELS), url_texts())


@st.composite
def routes(draw: st.DrawFn, kind: str) -> str:
    """The endpoint for ``kind``, now and then the engines form of openai==0.28."""
    tail = "chat/completions" if kind == "chat" else "completions"
    if draw(st.integers(0, 4)) == 0:
        return f"/v1/engines/{url_part(draw(ENGINE_NAMES))}/{tail}"
    return f"/v1/{tail}"


def post(http: TestClient, route: str, body: bytes, content_type: str = "application/json"
         ) -> Response:
    return http.post(route, content=body, headers={"content-type": content_type})


@fuzz_settings
@given(body=CHAT, route=routes("chat"))
def test_chat_requests_from_openai_schema(http: TestClient, schemas: Schemas,
                                          body: dict[str, Any], route: str) -> None:
    check_generation(post(http, route, encode_json(body)), "chat", schemas, body)
    check_alive(http)


@fuzz_settings
@given(body=COMPLETION, route=routes("completion"))
def test_completion_requests_from_openai_schema(http: TestClient, schemas: Schemas,
                                                body: dict[str, Any], route: str) -> None:
    check_generation(post(http, route, encode_json(body)), "completion", schemas, body)
    check_alive(http)


KINDS = st.sampled_from(("chat", "completion"))
CONTENT_TYPES = st.sampled_from(("application/json", "application/json", "application/json",
                                 "text/plain", "application/x-www-form-urlencoded", ""))


@fuzz_settings
@given(kind=KINDS, data=st.data())
def test_hostile_requests(http: TestClient, schemas: Schemas, kind: str, data: st.DataObject
                          ) -> None:
    bodies = CHAT if kind == "chat" else COMPLETION
    route = data.draw(routes(kind), label="route")
    how = data.draw(st.sampled_from(("mutated", "mutated", "mutated", "raw")), label="how")
    body: Any
    if how == "raw":
        body = payload = data.draw(raw_bodies(bodies), label="raw body")
    else:
        body = data.draw(mutated(bodies), label="body")
        payload = encode_json(body, ascii_only=data.draw(st.booleans(), label="ascii"))
    content_type = data.draw(CONTENT_TYPES, label="content-type")
    check_generation(post(http, route, payload, content_type), kind, schemas, body)
    check_alive(http)


# -- admin, usage and model routes -------------------------------------------------------------

DURATIONS = st.one_of(
    st.sampled_from(("30d", "1d", "90d", "1h", "1m", "0d", "-1d", "1.5d", "d", "30", "1y",
                     "99999999999999999999d", f"{2**70}s", "1e9d", " 1d", "1d ", "１d")),
    url_texts(),
)
KEY_FIELDS = {
    "name": st.one_of(st.text(max_size=30), url_texts()),
    "admin": st.booleans(),
    "rpm": st.one_of(st.integers(-5, 10**6), st.sampled_from(HUGE_INTS)),
    "tpm": st.one_of(st.integers(-5, 10**9), st.sampled_from(HUGE_INTS)),
    "budget_usd": st.one_of(st.floats(), st.integers(), st.sampled_from(HUGE_INTS)),
    "budget_period": DURATIONS,
    "models": st.one_of(st.lists(st.one_of(st.sampled_from(SERVED_MODELS), url_texts()),
                                 max_size=4), st.none()),
    "expires": st.one_of(DURATIONS, st.none()),
}
FIELD_NAMES = st.one_of(st.sampled_from(sorted(KEY_FIELDS)), st.text(max_size=10))


PLAUSIBLE_KEY_FIELDS = {
    "name": st.text(min_size=1, max_size=20),
    "admin": st.booleans(),
    "rpm": st.integers(1, 10**6),
    "tpm": st.integers(1, 10**9),
    "budget_usd": st.one_of(st.floats(0, 10**6), st.integers(0, 10**6)),
    "budget_period": st.sampled_from(("30d", "1d", "7d", "12h", "90m", "1h")),
    "models": st.lists(st.sampled_from(SERVED_MODELS), max_size=2),
    "expires": st.sampled_from(("90d", "1d", "1h", "10m", "365d")),
}


@st.composite
def key_bodies(draw: st.DrawFn) -> Any:
    """Bodies for POST and PATCH /admin/keys: plausible ones (which create and change keys),
    documented fields with odd or hostile values and unknown fields, or anything at all."""
    mode = draw(st.sampled_from(("plausible", "plausible", "mixed", "mixed", "anything")))
    if mode == "anything":
        return draw(hostile_values())
    body: dict[str, Any] = {}
    if mode == "plausible":
        body["name"] = draw(PLAUSIBLE_KEY_FIELDS["name"])
        for name in draw(st.lists(st.sampled_from(sorted(KEY_FIELDS)), max_size=4, unique=True)):
            body[name] = draw(PLAUSIBLE_KEY_FIELDS[name])
        return body
    for name in draw(st.lists(FIELD_NAMES, max_size=6, unique=True)):
        plausible = KEY_FIELDS.get(name, scalars())
        body[name] = draw(st.one_of(plausible, plausible, hostile_values()))
    return body


USAGE_PARAMS = ("start_time", "end_time", "bucket_width", "group_by", "group_by[]", "limit",
                "page", "api_key_ids", "models", "project_ids", "user_ids", "batch")
QUERY_VALUES = st.one_of(
    st.builds(str, st.integers(-(10**12), 10**12)),
    st.builds(str, st.sampled_from(HUGE_INTS)),
    st.sampled_from(("1m", "1h", "1d", "1w", "0", "-1", "1.5", "nan", "inf", "1e308", "", " 1",
                     "model", "api_key_id", "project_id", "user_id", "batch", "service_tier",
                     "model,api_key_id", ",,", "key_1", "key_1,key_2", f"key_{2**70}", "page_1",
                     "null", "true", "\x00")),
    url_texts(),
)
NOW = 1_764_000_000  # 2025-11-24: timestamps near now, where the records are
PLAUSIBLE_QUERY = {
    "end_time": st.builds(str, st.integers(NOW - 10**6, NOW + 10**8)),
    "bucket_width": st.sampled_from(("1m", "1h", "1d")),
    "group_by": st.sampled_from(("model", "api_key_id")),
    "limit": st.builds(str, st.integers(1, 31)),
    "page": st.builds(str, st.integers(0, 5)),
    "api_key_ids": st.builds(lambda n: f"key_{n}", st.integers(0, 5)),
    "models": st.sampled_from(SERVED_MODELS),
}


@st.composite
def usage_queries(draw: st.DrawFn) -> str:
    """A query string: plausible parameters (a report), with a few odd or unknown ones."""
    start = draw(st.one_of(st.integers(NOW - 10**6, NOW + 10**5), st.integers(0, 2**33)))
    pairs = [("start_time", str(start))] if draw(st.integers(0, 5)) else []
    for name in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE_QUERY)), max_size=4)):
        pairs.append((name, draw(PLAUSIBLE_QUERY[name])))
    names = st.one_of(st.sampled_from(USAGE_PARAMS), st.text(max_size=8))
    pairs += draw(st.lists(st.tuples(names, QUERY_VALUES), max_size=draw(st.sampled_from((0, 3)))))
    pairs = draw(st.permutations(pairs))
    return "&".join(f"{url_part(k)}={url_part(v)}" for k, v in pairs)


@st.composite
def admin_calls(draw: st.DrawFn) -> tuple[str, str, str, bytes | None]:
    """(route, method, url, body) for one call of the admin, usage or model routes."""
    key = url_part(draw(url_texts()))
    body = encode_json(draw(key_bodies()), ascii_only=draw(st.booleans()))
    usage = "/v1/organization/usage/completions"
    return draw(st.sampled_from([
        ("POST /admin/keys", "POST", "/admin/keys", body),
        ("PATCH /admin/keys/{key}", "PATCH", f"/admin/keys/{key}", body),
        ("PATCH /admin/keys/{key}", "PATCH", f"/admin/keys/key_{draw(st.integers(0, 5))}", body),
        ("GET /admin/keys/{key}", "GET", f"/admin/keys/{key}", None),
        ("DELETE /admin/keys/{key}", "DELETE", f"/admin/keys/{key}", None),
        ("POST /admin/keys/{key}/rotate", "POST", f"/admin/keys/{key}/rotate", None),
        (f"GET {usage}", "GET", f"{usage}?{draw(usage_queries())}", None),
        ("GET /v1/models/{model}", "GET",
         f"/v1/models/{url_part(draw(url_texts()), keep_slash=True)}", None),
    ]))


@fuzz_settings
@given(call=admin_calls())
def test_admin_usage_and_model_routes(http: TestClient, schemas: Schemas,
                                      call: tuple[str, str, str, bytes | None]) -> None:
    route, method, url, body = call
    headers = {"content-type": "application/json"} if body is not None else {}
    r = http.request(method, url, content=body, headers=headers)
    check_status(r, route)
    if r.is_success:
        data = r.json()
        if "/usage/" in route:
            schemas.validate("UsageResponse", data)
        elif "/models/" in route:
            schemas.validate("Model", data)
        else:
            assert isinstance(data, dict), data
    check_alive(http)


# -- the Responses API -------------------------------------------------------------------------

_TEXTS = st.one_of(st.text(max_size=40), url_texts())
_FUNCTION = st.fixed_dictionaries(
    {"type": st.just("function"), "name": st.sampled_from(("get_weather", "f", "x-y"))},
    optional={"parameters": st.just({"type": "object", "properties": {"a": {"type": "string"}}}
                                    ).map(copy.deepcopy),
              "strict": st.booleans(), "description": _TEXTS})
_ITEMS = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(("user", "system", "developer", "assistant")),
                           "content": _TEXTS}),
    st.fixed_dictionaries({"type": st.just("message"), "role": st.just("user"),
                           "content": st.lists(st.fixed_dictionaries(
                               {"type": st.just("input_text"), "text": _TEXTS}), max_size=3)}),
    st.fixed_dictionaries({"type": st.just("function_call"),
                           "call_id": st.sampled_from(("c1", "c2")),
                           "name": st.just("get_weather"), "arguments": _TEXTS}),
    st.fixed_dictionaries({"type": st.just("function_call_output"),
                           "call_id": st.sampled_from(("c1", "c2")), "output": _TEXTS}),
)
RESPONSE_BODIES = st.fixed_dictionaries(
    {"model": st.sampled_from(SERVED_MODELS),
     "input": st.one_of(_TEXTS, st.lists(_ITEMS, min_size=1, max_size=5))},
    optional={
        "instructions": _TEXTS,
        "max_output_tokens": st.integers(16, 64),
        "temperature": st.floats(0, 2),
        "stream": st.booleans(),
        "store": st.booleans(),
        "tools": st.lists(_FUNCTION, min_size=1, max_size=2),
        "tool_choice": st.sampled_from(("auto", "none", "required")),
        "text": st.sampled_from(({"format": {"type": "text"}}, {"format": {"type": "json_object"}},
                                 {"format": {"type": "json_schema", "name": "a", "schema": {
                                     "type": "object", "properties": {"a": {"type": "string"}},
                                     "required": ["a"]}}})).map(copy.deepcopy),
        "truncation": st.sampled_from(("auto", "disabled")),
        "previous_response_id": st.one_of(st.just("resp_missing"), _TEXTS),
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    })


def check_response_stream(r: Response, schemas: Schemas) -> None:
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events and "[DONE]" not in r.text
    for i, e in enumerate(events):
        schemas.validate("ResponseStreamEvent", e)
        assert e["sequence_number"] == i or e["type"] == "error", e
    assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed",
                                  "error"), events[-1]


@fuzz_settings
@given(data=st.data())
def test_responses_requests_plain_and_hostile(http: TestClient, schemas: Schemas,
                                              data: st.DataObject) -> None:
    how = data.draw(st.sampled_from(("plain", "mutated", "mutated")), label="how")
    body = data.draw(RESPONSE_BODIES if how == "plain" else mutated(RESPONSE_BODIES), label="body")
    r = post(http, "/v1/responses", encode_json(body, ascii_only=data.draw(st.booleans())))
    check_status(r, "responses")
    if r.status_code == 200:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            check_response_stream(r, schemas)
        else:
            schemas.validate("Response", r.json())
    check_alive(http)


# -- embeddings, files and batches -----------------------------------------------------------------

_TOKEN_ARRAYS = st.lists(st.integers(-3, 40_000), max_size=12)
EMBEDDING_BODIES = st.fixed_dictionaries(
    {"model": st.sampled_from(("text-embedding-3-small", "fake-embed", "gpt-3.5-turbo",
                               "missing")),
     "input": st.one_of(_TEXTS, st.lists(_TEXTS, max_size=6), _TOKEN_ARRAYS,
                        st.lists(_TOKEN_ARRAYS, max_size=4))},
    optional={"encoding_format": st.sampled_from(("float", "base64")),
              "dimensions": st.integers(-2, 1000), "user": _TEXTS})


@fuzz_settings
@given(data=st.data())
def test_embeddings_plain_and_hostile(http: TestClient, schemas: Schemas,
                                      data: st.DataObject) -> None:
    how = data.draw(st.sampled_from(("plain", "mutated")), label="how")
    body = data.draw(EMBEDDING_BODIES if how == "plain" else mutated(EMBEDDING_BODIES),
                     label="body")
    r = post(http, "/v1/embeddings", encode_json(body, ascii_only=data.draw(st.booleans())))
    check_status(r, "embeddings")
    if r.status_code == 200:
        answer = r.json()
        if body.get("encoding_format") == "base64":
            for item in answer["data"]:
                assert len(base64.b64decode(item["embedding"])) == 4 * 384
        else:
            schemas.validate("CreateEmbeddingResponse", answer)
    check_alive(http)


_LINES = st.fixed_dictionaries(
    {"custom_id": _TEXTS, "method": st.just("POST"), "url": st.just("/v1/chat/completions"),
     "body": st.fixed_dictionaries({"model": st.just("gpt-3.5-turbo"), "max_tokens": st.just(3),
                                    "messages": st.just([{"role": "user", "content": "hi"}])})}
).map(copy.deepcopy)  # mutated() changes what it is given: each example gets its own copy


@settings(fuzz_settings, max_examples=max(EXAMPLES // 10, 10))
@given(data=st.data())
def test_batch_input_files_plain_and_hostile(http: TestClient, schemas: Schemas,
                                             data: st.DataObject) -> None:
    """Any input file: the batch ends in a final status; a completed one answers each of its
    lines exactly once across the output and error files; a failed one names lines."""
    lines = data.draw(st.lists(st.one_of(_LINES, mutated(_LINES)), min_size=1, max_size=4),
                      label="lines")
    raw = b"\n".join(encode_json(x) for x in lines) + b"\n"
    if data.draw(st.booleans(), label="garbage line"):
        raw += data.draw(st.binary(max_size=40), label="garbage") + b"\n"
    r = http.post("/v1/files", files={"file": ("in.jsonl", raw)}, data={"purpose": "batch"})
    check_status(r, "files")
    if r.status_code != 200:
        return
    file_id = r.json()["id"]
    r = http.post("/v1/batches", json={"input_file_id": file_id,
                                       "endpoint": "/v1/chat/completions",
                                       "completion_window": "24h"})
    check_status(r, "batches")
    assert r.status_code == 200
    batch_id = r.json()["id"]
    for _ in range(400):
        batch = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed"):
            break
        time.sleep(0.02)
    schemas.validate("Batch", without_nulls(batch))
    event(f"batch {batch['status']}")
    if batch["status"] == "failed":
        assert batch["errors"]["data"]
    else:
        assert batch["status"] == "completed", batch
        ids = []
        for key in ("output_file_id", "error_file_id"):
            if batch[key] is not None:
                text = http.get(f"/v1/files/{batch[key]}/content").text
                ids += [json.loads(x)["custom_id"] for x in text.splitlines()]
        counts = batch["request_counts"]
        assert len(ids) == counts["total"] == counts["completed"] + counts["failed"]
        assert len(set(ids)) == len(ids)
    check_alive(http)
