"""Tool calling: ``tools``, ``tool_choice``, ``parallel_tool_calls`` and the legacy ``functions``
/ ``function_call``, on any model, by constrained decoding.

The functions are described to the model in a system message, and a grammar holds its answer
to one of two shapes: plain text (only when ``tool_choice`` is ``auto``), or one or more blocks

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

where the name is one the request allows and the arguments follow that function's parameter
schema. Everything but the name and the arguments is fixed by the grammar, so the model spends
its tokens on what matters and the reply is parsed without guessing, while it streams. Earlier
calls and their results are written into the conversation in the same format (results as
``<tool_response>`` blocks in a user turn), whatever roles the model's chat template knows.

Modules: ``plan`` (the request's tool fields, checked), ``markup`` (the block format),
``prompt`` (what the model is told), ``grammar`` (what it may answer), ``parser`` (reading the
answer as it streams). A request's flow: ``plan_tools`` -> ``system_text`` and ``prefill`` into
the prompt, ``hidden_stops`` into the stop strings, ``tool_grammar`` -> the engine, and
``ReplyParser.for_plan`` over the generated text.
"""

from oasis.serving.tools.grammar import NO_LEADING_TAG, tool_grammar
from oasis.serving.tools.markup import TAGS, call_text, response_text
from oasis.serving.tools.parser import (
    Call,
    CallArguments,
    CallStart,
    Event,
    ReplyParser,
    Text,
    new_call_id,
)
from oasis.serving.tools.plan import MAX_PARALLEL, Function, ToolPlan, hidden_stops, plan_tools
from oasis.serving.tools.prompt import prefill, system_text

__all__ = [
    "MAX_PARALLEL",
    "NO_LEADING_TAG",
    "TAGS",
    "Call",
    "CallArguments",
    "CallStart",
    "Event",
    "Function",
    "ReplyParser",
    "Text",
    "ToolPlan",
    "call_text",
    "hidden_stops",
    "new_call_id",
    "plan_tools",
    "prefill",
    "response_text",
    "system_text",
    "tool_grammar",
]
