"""Client-side function tools in the Responses API, in OpenAI's shapes: the request's
``function`` tools (Responses' flat shape, turned into the chat shape the model is
given), its ``tool_choice``, the input's ``function_call`` and ``function_call_output``
items (as chat messages), and the ``function_call`` output items. Pure: no I/O.

A function tool is ``{"type": "function", "name", "description"?, "parameters"?,
"strict"?}``; a call of it ends the response with a ``function_call`` item the client
answers with a ``function_call_output`` item (``call_id``, ``output``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import invalid_type, param_error, unknown_parameter
from ...schema import MAX_TOOLS, TOOL_NAME_RE

__all__ = (
    "MAX_CALL_ID",
    "choice_shown",
    "function_call_item",
    "function_names",
    "input_call_items",
    "parse_call",
    "parse_choice",
    "parse_function",
    "parse_output",
    "tools_shown",
)

MAX_CALL_ID = 256
MAX_OUTPUT_CHARS = 10 * 1024 * 1024  # OpenAI's limit on a function_call_output

_FUNCTION_FIELDS = frozenset({"type", "name", "description", "parameters", "strict"})
_CALL_FIELDS = frozenset({"type", "id", "call_id", "name", "arguments", "status"})
_OUTPUT_FIELDS = frozenset({"type", "id", "call_id", "output", "status"})
_OUTPUT_PARTS = frozenset({"input_text", "output_text"})


def _string(value: Any, param: str, *, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise param_error(f"{param} is required", "missing_required_parameter", param)
        return None
    if not isinstance(value, str):
        raise invalid_type(param, (str,))
    return value


def _known(item: Mapping[str, Any], fields: frozenset[str], at: str) -> None:
    for key in item:
        if key not in fields:
            raise unknown_parameter(key, at)


def parse_function(item: dict[str, Any], at: str) -> dict[str, Any]:
    """A ``function`` tool (``item['type']`` already checked), in the chat shape."""
    _known(item, _FUNCTION_FIELDS, at)
    name = _string(item.get("name"), f"{at}.name")
    if not TOOL_NAME_RE.fullmatch(name or ""):
        raise param_error(f"{at}.name must be 1-64 characters of a-z, A-Z, 0-9, _ and -",
                          "invalid_value", f"{at}.name")  # fmt: skip
    function: dict[str, Any] = {"name": name}
    description = _string(item.get("description"), f"{at}.description", required=False)
    if description is not None:
        function["description"] = description
    parameters = item.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise invalid_type(f"{at}.parameters", (dict,))
        function["parameters"] = parameters
    strict = item.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise invalid_type(f"{at}.strict", (bool,))
        function["strict"] = strict
    return {"type": "function", "function": function}


def check_functions(functions: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """The request's function tools together (index in ``tools``, chat shape): at most
    ``MAX_TOOLS``, no name twice."""
    if len(functions) > MAX_TOOLS:
        raise param_error(f"tools must hold at most {MAX_TOOLS} function tools",
                          "invalid_value", "tools")  # fmt: skip
    seen: set[str] = set()
    for i, tool in functions:
        name = tool["function"]["name"]
        if name in seen:
            raise param_error(f"tools[{i}].name {name!r} names another tool too",
                              "invalid_value", f"tools[{i}].name")  # fmt: skip
        seen.add(name)


def function_names(params: Mapping[str, Any]) -> frozenset[str]:
    """The names of the function tools in a request's (chat-shape) ``params``."""
    return frozenset(t["function"]["name"] for t in params.get("tools") or ())


def parse_choice(choice: Any, names: frozenset[str], mcp: bool) -> Any:
    """``tool_choice`` (not null) for the model, in the chat shape: ``"auto"``,
    ``"none"``, ``"required"`` (with tools), or ``{"type": "function", "name"}`` naming
    one of the request's function tools."""
    if isinstance(choice, str):
        allowed = ("auto", "none", "required") if names or mcp else ("auto", "none")
        if choice not in allowed:
            raise param_error(f"tool_choice must be one of {', '.join(allowed)}",
                              "unsupported_value", "tool_choice")  # fmt: skip
        return choice
    if not isinstance(choice, dict):
        raise invalid_type("tool_choice", (str, dict))
    kind = choice.get("type")
    if kind != "function":
        raise param_error(
            'tool_choice as an object must be {"type": "function", "name"}: agentd forces '
            "no other kind of tool",
            "unsupported_value",
            "tool_choice.type",
        )
    _known(choice, frozenset({"type", "name"}), "tool_choice")
    name = _string(choice.get("name"), "tool_choice.name")
    if name not in names:
        raise param_error(f"tool_choice.name {str(name)[:64]!r} is not one of the function tools",
                          "invalid_value", "tool_choice.name")  # fmt: skip
    return {"type": "function", "function": {"name": name}}


def choice_shown(choice: Any) -> Any:
    """A (chat-shape) ``tool_choice`` as the response object shows it."""
    if isinstance(choice, dict):
        return {"type": "function", "name": choice["function"]["name"]}
    return choice if choice is not None else "auto"


def tools_shown(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's function tools as the response object shows them."""
    shown = []
    for tool in params.get("tools") or ():
        function = tool["function"]
        shown.append({
            "type": "function",
            "name": function["name"],
            "description": function.get("description"),
            "parameters": function.get("parameters"),
            "strict": function.get("strict"),
        })  # fmt: skip
    return shown


def _call_id(item: Mapping[str, Any], at: str) -> str:
    call_id = _string(item.get("call_id"), f"{at}.call_id") or ""
    if not 0 < len(call_id) <= MAX_CALL_ID:
        raise param_error(f"{at}.call_id must have 1 to {MAX_CALL_ID} characters",
                          "invalid_value", f"{at}.call_id")  # fmt: skip
    return call_id


def parse_call(item: dict[str, Any], at: str) -> dict[str, Any]:
    """A ``function_call`` input item (a call a response made, sent back), as a call
    in the chat shape."""
    _known(item, _CALL_FIELDS, at)
    call_id = _call_id(item, at)
    name = _string(item.get("name"), f"{at}.name")
    if not TOOL_NAME_RE.fullmatch(name or ""):
        raise param_error(f"{at}.name must be 1-64 characters of a-z, A-Z, 0-9, _ and -",
                          "invalid_value", f"{at}.name")  # fmt: skip
    arguments = _string(item.get("arguments"), f"{at}.arguments")
    _string(item.get("id"), f"{at}.id", required=False)
    _string(item.get("status"), f"{at}.status", required=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def parse_output(item: dict[str, Any], at: str) -> dict[str, Any]:
    """A ``function_call_output`` input item, as a ``tool`` message. ``output`` is a
    string, or text parts (joined with newlines)."""
    _known(item, _OUTPUT_FIELDS, at)
    call_id = _call_id(item, at)
    output = item.get("output")
    if output is None:
        raise param_error(f"{at}.output is required", "missing_required_parameter", f"{at}.output")
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            where = f"{at}.output[{j}]"
            if not isinstance(part, dict):
                raise invalid_type(where, (dict,))
            if part.get("type") not in _OUTPUT_PARTS:
                raise param_error(f"{where} must be an input_text part: agentd takes text only",
                                  "unsupported_input", f"{where}.type")  # fmt: skip
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_type(f"{where}.text", (str,))
            texts.append(text)
        output = "\n".join(texts)
    elif not isinstance(output, str):
        raise invalid_type(f"{at}.output", (str, list))
    if len(output) > MAX_OUTPUT_CHARS:
        raise param_error(f"{at}.output must hold at most {MAX_OUTPUT_CHARS} characters",
                          "invalid_value", f"{at}.output")  # fmt: skip
    _string(item.get("id"), f"{at}.id", required=False)
    _string(item.get("status"), f"{at}.status", required=False)
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def function_call_item_id(response_id: str, call_id: str) -> str:
    """The ``function_call`` item of the model's call ``call_id`` (the same on every
    attempt and instance)."""
    digest = hashlib.sha256(b"agentd.function_call\x00%s\x00%s" % (response_id.encode(),
                                                                   call_id.encode()))  # fmt: skip
    return "fc_" + digest.hexdigest()[:48]


def function_call_item(response_id: str, call: Mapping[str, Any]) -> dict[str, Any]:
    """The model's call (chat shape) of a client's function tool, as an output item."""
    function = call.get("function") or {}
    call_id = str(call.get("id"))
    return {
        "type": "function_call",
        "id": function_call_item_id(response_id, call_id),
        "call_id": call_id,
        "name": str(function.get("name")),
        "arguments": str(function.get("arguments") or ""),
        "status": "completed",
    }


def input_call_items(item_id: str, message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An input message of function tools (an assistant's calls, or a ``tool`` result)
    as the input items it was sent as (``item_id`` the message's, made unique per call)."""
    if message.get("role") == "tool":
        return [{"type": "function_call_output", "id": "fco_" + item_id.removeprefix("msg_"),
                 "call_id": message.get("tool_call_id"), "output": message.get("content"),
                 "status": "completed"}]  # fmt: skip
    items = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        items.append({"type": "function_call", "id": function_call_item_id(item_id, call["id"]),
                      "call_id": call["id"], "name": function.get("name"),
                      "arguments": function.get("arguments"), "status": "completed"})  # fmt: skip
    return items
