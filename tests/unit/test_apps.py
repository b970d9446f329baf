"""Pieces of the applications that need no server: batch files, label matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oasis.apps.batch import BatchInputError, done_ids, read_input
from oasis.apps.classify import SENTIMENT_EN, SENTIMENT_ZH, _match, default_labels


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
