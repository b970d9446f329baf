"""What the model is told: the functions in the system message, and the start of its reply when
only one continuation is possible."""

from __future__ import annotations

from typing import Any

from oasis.serving.tools.markup import HEAD, NAME_END, json_text
from oasis.serving.tools.plan import ToolPlan


def system_text(plan: ToolPlan) -> str:
    lines = [
        "You can call functions to help with the request. Each function is described by one "
        "line of JSON:",
        "<tools>",
    ]
    for f in plan.functions:
        entry: dict[str, Any] = {"name": f.name}
        if f.description:
            entry["description"] = f.description
        entry["parameters"] = f.parameters
        lines.append(json_text(entry))
    lines += [
        "</tools>",
        "To call a function, answer with this block and nothing else:",
        "<tool_call>",
        '{"name": "<function name>", "arguments": <the arguments as a JSON object>}',
        "</tool_call>",
    ]
    if plan.parallel:
        lines.append("To call several functions, write one block per call.")
    lines.append("Each result comes back in a <tool_response> block; then answer the user.")
    if plan.forced:
        lines.append(f"Now call the function {plan.forced}.")
    elif plan.mode == "required":
        lines.append("Now call a function.")
    return "\n".join(lines)


def prefill(plan: ToolPlan | None) -> str:
    """The start of the reply that the grammar would force, to put at the end of the prompt:
    ``<tool_call>\\n{"name": "f", "arguments":`` when one function must be called,
    ``<tool_call>\\n{"name": "`` when one of several must. The model then generates only what
    it decides (the name, the arguments), so ``max_tokens`` and ``completion_tokens`` count
    those, and the prefilled markup is counted once, in ``prompt_tokens``. Empty under
    ``auto`` (the model decides between text and a call) and without a plan."""
    if plan is None or plan.mode != "required":
        return ""
    if plan.forced:
        return f"{HEAD}{plan.forced}{NAME_END}"
    return HEAD
