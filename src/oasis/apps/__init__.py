"""The tutorial's applications as a Python API, on the official ``openai`` SDK.

Each works against any OpenAI-compatible endpoint: the local oasis server by default, or the
one named by ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` (the SDK's own conventions), or a client
you pass in. Every function has an async form (``a``-prefixed) and a sync one.
"""

from oasis.apps.batch import (
    BatchSummary,
    acancel_batch,
    adownload_results,
    arun_batch,
    asubmit_batch,
    await_batch,
    cancel_batch,
    download_results,
    run_batch,
    submit_batch,
    wait_batch,
)
from oasis.apps.chat import Conversation, chat
from oasis.apps.classify import Classification, aclassify, classify
from oasis.apps.client import async_client, sync_client
from oasis.apps.roleplay import aroleplay, roleplay
from oasis.apps.summarize import asummarize, summarize
from oasis.apps.text import agenerate_text, generate_text

__all__ = [
    "BatchSummary",
    "Classification",
    "Conversation",
    "acancel_batch",
    "aclassify",
    "adownload_results",
    "agenerate_text",
    "aroleplay",
    "arun_batch",
    "asubmit_batch",
    "asummarize",
    "async_client",
    "await_batch",
    "cancel_batch",
    "chat",
    "classify",
    "download_results",
    "generate_text",
    "roleplay",
    "run_batch",
    "submit_batch",
    "summarize",
    "sync_client",
    "wait_batch",
]
