"""Structured outputs on the real model: the answer always follows the schema, or the request
is refused with a 400 naming what cannot be enforced."""

from __future__ import annotations

import asyncio
import json
import random
from enum import StrEnum
from typing import Any

import jsonschema
import openai
from openai import AsyncOpenAI, OpenAI
from pydantic import AnyUrl, BaseModel, Field, HttpUrl, IPvAnyAddress

from tests.integration.conftest import LiveServer


class Priority(StrEnum):
    low = "low"
    high = "high"


class Step(BaseModel):
    title: str = Field(max_length=30)
    minutes: int
    done: bool


class Address(BaseModel):
    city: str = Field(max_length=24)
    postcode: str | None = Field(max_length=8)


class Plan(BaseModel):
    name: str = Field(max_length=30)
    priority: Priority
    steps: list[Step] = Field(min_length=1, max_length=3)
    owner: Address
    note: str | None = Field(max_length=40)


def test_sdk_parse_with_nested_models(live: LiveServer) -> None:
    client = OpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
    for seed in range(3):
        r = client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Plan a small garden project."}],
            response_format=Plan,
            max_tokens=600,
            seed=seed,
        )
        choice = r.choices[0]
        assert choice.finish_reason == "stop"
        plan = choice.message.parsed
        assert isinstance(plan, Plan) and 1 <= len(plan.steps) <= 3
        assert plan.priority in (Priority.low, Priority.high)
        assert choice.message.refusal is None


class Booking(BaseModel):
    guests: int = Field(ge=1, le=12)
    nights: int = Field(gt=0, lt=30)
    floor: int | None = Field(ge=-2, le=40)
    year: int = Field(ge=2026)
    price: float = Field(ge=0)
    score: float = Field(ge=0, le=1)


def test_sdk_parse_holds_integer_bounds(live: LiveServer) -> None:
    client = OpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
    for seed in range(6):
        r = client.chat.completions.parse(
            model="gpt-4o-mini", seed=seed, temperature=1.0, max_tokens=200,
            messages=[{"role": "user", "content": "Book a hotel for a big family."}],
            response_format=Booking)
        booking = r.choices[0].message.parsed  # the SDK validates the bounds again
        assert isinstance(booking, Booking) and booking.year >= 2026
        assert 0 <= booking.score <= 1 and booking.price >= 0


class Server(BaseModel):
    """pydantic's common types: a URL (format uri), an address (ipv4 / ipv6), a host name and
    fractional bounds."""

    homepage: HttpUrl
    link: AnyUrl
    address: IPvAnyAddress
    host: str = Field(json_schema_extra={"format": "hostname"}, max_length=40)
    load: float = Field(ge=0.5, lt=2.5)
    ratio: float = Field(gt=-0.125, le=0.75)


def test_sdk_parse_holds_formats_and_fractional_bounds(live: LiveServer) -> None:
    client = OpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
    checker = jsonschema.FormatChecker()
    parsed = 0
    for seed in range(6):
        try:
            r = client.chat.completions.parse(
                model="gpt-4o-mini", seed=seed, temperature=0.7, max_tokens=200,
                messages=[{"role": "user", "content": "Describe one web server."}],
                response_format=Server)
        except openai.LengthFinishReasonError:
            continue  # a URL rambled on to max_tokens (finish_reason length, as OpenAI)
        server = r.choices[0].message.parsed  # the SDK validates every type again
        assert isinstance(server, Server)
        assert 0.5 <= server.load < 2.5 and -0.125 < server.ratio <= 0.75
        assert checker.conforms(server.host, "hostname")
        parsed += 1
    assert parsed >= 2
    r = client.chat.completions.create(
        model="gpt-4o-mini", seed=1, temperature=1.0, max_tokens=120,
        messages=[{"role": "user", "content": "Give a contact as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "contact", "schema": {
            "type": "object", "additionalProperties": False, "required": ["email", "v4", "v6"],
            "properties": {"email": {"type": "string", "format": "email", "maxLength": 40},
                           "v4": {"type": "string", "format": "ipv4"},
                           "v6": {"type": "string", "format": "ipv6", "maxLength": 39}}}}})
    if r.choices[0].finish_reason == "stop":
        contact = json.loads(r.choices[0].message.content or "")
        assert checker.conforms(contact["v4"], "ipv4") and checker.conforms(contact["v6"], "ipv6")
        local, _, domain = contact["email"].partition("@")
        assert local and "." in domain


def test_json_mode_gives_one_object(live: LiveServer) -> None:
    client = OpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
    r = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Describe a cat as JSON with a few fields."}],
        response_format={"type": "json_object"},
        max_tokens=300,
        temperature=0,
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens: OpenAI too returns the partial text with finish_reason length
        assert r.choices[0].finish_reason == "length"


# -- 200 random schemas ------------------------------------------------------------------------

UNSUPPORTED = [
    ("'not'", {"not": {"type": "integer"}}),
    ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True,
                     "maxItems": 3}),
    ("format 'idn-email'", {"type": "string", "format": "idn-email"}),
    ("multipleOf", {"type": "number", "multipleOf": 2}),
    ("'not'", {"not": {"type": "string"}}),
]


def random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A value schema whose every answer is bounded in length."""
    kinds = ["string", "integer", "number", "boolean", "enum", "nullable", "date", "uuid",
             "range"]
    if depth < 2:
        kinds += ["object", "array", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 16),
                **({"minLength": 1} if rng.random() < 0.3 else {})}
    if kind in ("integer", "number", "boolean"):
        return {"type": kind}
    if kind == "range":  # numeric bounds, one- or two-sided, inclusive or exclusive
        lo = rng.randint(-500, 500)
        bounds: dict[str, Any] = {}
        if rng.random() < 0.8:
            bounds["minimum" if rng.random() < 0.5 else "exclusiveMinimum"] = lo
        if rng.random() < 0.8 or not bounds:
            bounds["maximum" if rng.random() < 0.5 else "exclusiveMaximum"] = (
                lo + rng.randint(2, 3000))
        return {"type": rng.choice(["integer", "number"]), **bounds}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "north", "south", 1, 2, True],
                                   rng.randint(1, 4))}
    if kind == "nullable":
        return {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]}
    if kind in ("date", "uuid"):
        return {"type": "string", "format": kind}
    if kind == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": lo,
                "maxItems": lo + rng.randint(0, 2)}
    return random_object(rng, depth + 1)


def random_object(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    names = rng.sample(["id", "name", "kind", "size", "tags", "when", "ok", "ref", "items"],
                       rng.randint(1, 3 if depth else 4))
    props = {n: random_schema(rng, depth) for n in names}
    required = [n for n in names if rng.random() < 0.7]
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if rng.random() < 0.6:
        schema["additionalProperties"] = False
    return schema


def test_200_random_schemas_hold_or_are_refused(live: LiveServer) -> None:
    rng = random.Random(20261125)
    cases: list[tuple[dict[str, Any], str | None]] = []
    for i in range(200):
        schema = random_object(rng)
        if i % 10 == 0:  # one in ten carries a keyword the grammar cannot enforce
            feature, bad = UNSUPPORTED[(i // 10) % len(UNSUPPORTED)]
            schema["properties"]["extra"] = bad
            cases.append((schema, feature))
        else:
            cases.append((schema, None))

    async def run_all() -> list[tuple[str, Any]]:
        client = AsyncOpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
        gate = asyncio.Semaphore(8)

        async def one(i: int, schema: dict[str, Any]) -> tuple[str, Any]:
            async with gate:
                try:
                    r = await client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": f"Fill in record {i}."}],
                        response_format={"type": "json_schema", "json_schema": {
                            "name": f"record_{i}", "schema": schema, "strict": True}},
                        max_tokens=800,
                        temperature=0.8,
                        seed=i,
                    )
                except openai.BadRequestError as exc:
                    return "refused", exc.body
                return r.choices[0].finish_reason, r.choices[0].message.content

        try:
            return await asyncio.gather(*(one(i, s) for i, (s, _) in enumerate(cases)))
        finally:
            await client.close()

    results = asyncio.run(run_all())
    valid = 0
    for (schema, feature), (outcome, payload) in zip(cases, results, strict=True):
        if feature is not None:
            assert outcome == "refused", (schema, payload)
            assert payload["param"] == "response_format" and feature in payload["message"]
            continue
        assert outcome == "stop", (schema, outcome, payload)
        jsonschema.validate(json.loads(payload), schema)
        valid += 1
    assert valid == 180
