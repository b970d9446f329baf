"""Telling Chinese from other text, for the applications' prompts and labels."""

from __future__ import annotations

import re

CJK = re.compile(r"[\u3400-\u9fff]")


def has_cjk(*texts: str) -> bool:
    return any(CJK.search(t) for t in texts)


def wants_chinese(language: str | None, *texts: str) -> bool:
    """``language="zh"``, or no language given and Chinese in the texts."""
    return language == "zh" or (language is None and has_cjk(*texts))
