"""The message schema and the id rules, written once.

The chat parser (``fastpath``), the store, and the Responses request all check messages
and ids against these tables, so a rule changes in one place.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import BadRequest, invalid_type, param_error

__all__ = (
    "CONVERSATION_PREFIX",
    "INPUT_ROLES",
    "MAX_METADATA",
    "MAX_METADATA_KEY",
    "MAX_METADATA_VALUE",
    "MAX_SEQ",
    "MAX_TOOLS",
    "MESSAGE_FIELDS",
    "NAME_RE",
    "ROLES",
    "SESSION_ID_RE",
    "STORED_MESSAGE_FIELDS",
    "check_metadata",
    "check_tool_messages",
    "check_tool_params",
    "conversation_id",
    "new_session_id",
    "pending_calls",
    "session_of_conversation",
    "validate_name",
    "validate_session_id",
)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# The roles of a Responses API input message, in the order its errors list them: ROLES
# less ``tool`` (a tool's output is an item of its own type there).
INPUT_ROLES = ("user", "assistant", "system", "developer")
# Fields a client may send on a message: every field of OpenAI's chat message types (an
# assistant message sent back as the SDK returned it carries refusal, audio and
# function_call, often null).
MESSAGE_FIELDS = frozenset(
    {"role", "content", "name", "tool_call_id", "tool_calls", "refusal", "audio", "function_call"}
)
# Fields a stored message may carry, besides the ``seq`` and ``created_at`` the store adds:
# ``status`` marks a cancelled reply, ``turn`` is the id of the turn that added it,
# ``metadata`` the chat request's metadata (on the stored reply).
STORED_MESSAGE_FIELDS = MESSAGE_FIELDS | {"status", "turn", "metadata"}

# A session id travels in URLs and Redis keys: a safe charset, never a brace (braces
# would change the key's hash tag), bounded length.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Shared-state namespaces and keys, agent names in paths: segments of the same charset.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")

# The largest seq accepted in a range: Redis's Lua numbers are doubles, exact to 2**53.
MAX_SEQ = 2**53 - 1


# A session seen through OpenAI's Conversations API: its id with this prefix. Every
# session id is a valid tail, so the mapping is one-to-one both ways.
CONVERSATION_PREFIX = "conv_"


def conversation_id(session_id: str) -> str:
    """The conversation id of a session."""
    return CONVERSATION_PREFIX + session_id


def session_of_conversation(conversation: str) -> str | None:
    """The session id behind a conversation id, None if it is not one."""
    if not isinstance(conversation, str) or not conversation.startswith(CONVERSATION_PREFIX):
        return None
    sid = conversation[len(CONVERSATION_PREFIX) :]
    return sid if SESSION_ID_RE.fullmatch(sid) else None


def new_session_id() -> str:
    """A server-chosen session id: ``s_`` and 128 random bits, URL-safe."""
    return "s_" + secrets.token_urlsafe(16)


def validate_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
        raise BadRequest(
            "session id must be 1-128 characters of A-Z a-z 0-9 . _ : - "
            "(starting with a letter or digit)",
            code="invalid_session_id",
        )
    return session_id


def validate_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest(
            f"{kind} must be 1-200 characters of A-Z a-z 0-9 . _ : - "
            "(starting with a letter or digit)",
            code=f"invalid_{kind}",
        )
    return name


# OpenAI's limits on metadata: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


def check_metadata(value: Any) -> dict[str, str] | None:
    """``value`` if it is null or valid OpenAI metadata (string values, OpenAI's limits);
    else a 400 naming ``metadata`` (``invalid_type`` or ``invalid_value``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_type("metadata", (dict,))
    if len(value) > MAX_METADATA:
        raise param_error(
            f"metadata holds at most {MAX_METADATA} pairs", "invalid_value", "metadata"
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise param_error(
                f"metadata keys have at most {MAX_METADATA_KEY} characters",
                "invalid_value",
                "metadata",
            )
        if not isinstance(item, str):
            raise param_error("metadata values must be strings", "invalid_type", f"metadata.{key}")
        if len(item) > MAX_METADATA_VALUE:
            raise param_error(
                f"metadata values have at most {MAX_METADATA_VALUE} characters",
                "invalid_value",
                f"metadata.{key}",
            )
    return value


# -- function tools and tool calls, in OpenAI's chat shapes -----------------------------
#
# agentd passes a client's function tools through to the model and the model's calls
# back, so it checks them as OpenAI does: a bad definition or a tool message that
# answers no call is a 400 naming the field, never an upstream's puzzling refusal later.

MAX_TOOLS = 128  # OpenAI's limit on ``tools``
TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOOL_FIELDS = frozenset({"type", "function"})
_FUNCTION_FIELDS = frozenset({"name", "description", "parameters", "strict"})
_CALL_FIELDS = frozenset({"id", "type", "function"})
_CALL_FUNCTION_FIELDS = frozenset({"name", "arguments"})
_TOOL_CHOICES = ("none", "auto", "required")
_ALLOWED_MODES = ("auto", "required")


def _missing(param: str) -> BadRequest:
    return param_error(f"{param} is required", "missing_required_parameter", param)


def _known(value: Mapping[str, Any], fields: frozenset[str], where: str) -> None:
    unknown = value.keys() - fields
    if unknown:
        name = min(unknown)
        name = name if len(name) <= 64 else name[:64] + "..."
        raise param_error(
            f"unknown parameter {name!r} in {where}", "unknown_parameter", f"{where}.{name}"
        )


def _object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        raise _missing(param)
    if not isinstance(value, dict):
        raise invalid_type(param, (dict,))
    return value


def _string(value: Any, param: str, *, required: bool = True) -> str | None:
    if value is None:
        if required:
            raise _missing(param)
        return None
    if not isinstance(value, str):
        raise invalid_type(param, (str,))
    return value


def _function_type(kind: Any, param: str) -> None:
    if kind is None:
        raise _missing(param)
    if kind == "function":
        return
    if kind == "custom":
        raise param_error(
            f"{param} 'custom' is not supported: agentd passes function tools through",
            "unsupported_value",
            param,
        )
    raise param_error(f"{param} must be 'function'", "invalid_value", param)


def _check_tools(tools: Any) -> set[str]:
    """A request's ``tools``; the names of its functions."""
    if not isinstance(tools, list):
        raise invalid_type("tools", (list,))
    if not 1 <= len(tools) <= MAX_TOOLS:
        raise param_error(f"tools must hold 1 to {MAX_TOOLS} tools", "invalid_value", "tools")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_type(where, (dict,))
        _known(tool, _TOOL_FIELDS, where)
        _function_type(tool.get("type"), f"{where}.type")
        function = _object(tool.get("function"), f"{where}.function")
        where += ".function"
        _known(function, _FUNCTION_FIELDS, where)
        name = _string(function.get("name"), f"{where}.name")
        if not TOOL_NAME_RE.fullmatch(name or ""):
            raise param_error(
                f"{where}.name must be 1-64 characters of a-z, A-Z, 0-9, _ and -",
                "invalid_value",
                f"{where}.name",
            )
        if name in names:
            raise param_error(
                f"{where}.name {name!r} names another tool too", "invalid_value", f"{where}.name"
            )
        names.add(name)  # type: ignore[arg-type]
        _string(function.get("description"), f"{where}.description", required=False)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid_type(f"{where}.parameters", (dict,))
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise invalid_type(f"{where}.strict", (bool,))
    return names


def _named_tool(value: Any, names: set[str], where: str) -> None:
    """``{"type": "function", "function": {"name"}}`` naming one of ``names``."""
    ref = _object(value, where)
    _known(ref, _TOOL_FIELDS, where)
    _function_type(ref.get("type"), f"{where}.type")
    function = _object(ref.get("function"), f"{where}.function")
    _known(function, frozenset({"name"}), f"{where}.function")
    name = _string(function.get("name"), f"{where}.function.name")
    if name not in names:
        raise param_error(
            f"{where}.function.name {name!r} is not one of the tools",
            "invalid_value",
            f"{where}.function.name",
        )


def _check_tool_choice(choice: Any, names: set[str]) -> None:
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise param_error(
                f"tool_choice must be one of {list(_TOOL_CHOICES)} or an object",
                "invalid_value",
                "tool_choice",
            )
        return
    if not isinstance(choice, dict):
        raise invalid_type("tool_choice", (str, dict))
    kind = choice.get("type")
    if kind != "allowed_tools":
        _named_tool(choice, names, "tool_choice")
        return
    _known(choice, frozenset({"type", "allowed_tools"}), "tool_choice")
    allowed = _object(choice.get("allowed_tools"), "tool_choice.allowed_tools")
    where = "tool_choice.allowed_tools"
    _known(allowed, frozenset({"mode", "tools"}), where)
    if allowed.get("mode") not in _ALLOWED_MODES:
        raise param_error(
            f"{where}.mode must be one of {list(_ALLOWED_MODES)}", "invalid_value", f"{where}.mode"
        )
    refs = allowed.get("tools")
    if not isinstance(refs, list) or not refs:
        raise param_error(f"{where}.tools must be a non-empty array", "invalid_value",
                          f"{where}.tools")  # fmt: skip
    for i, ref in enumerate(refs):
        _named_tool(ref, names, f"{where}.tools[{i}]")


def _names_of(tools: Any) -> set[str]:
    """The function names of tools from the operator's config (trusted, read leniently)."""
    names = set()
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def check_tool_params(params: Mapping[str, Any], agent_tools: Any = None) -> None:
    """A chat request's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, checked as
    OpenAI checks them (``agent_tools``: the agent's own ``tools`` param, which a request
    without ``tools`` uses). A 400 names the field in ``param``."""
    tools = params.get("tools")
    names = _check_tools(tools) if tools is not None else None
    if names is None and agent_tools:
        names = _names_of(agent_tools)
    choice = params.get("tool_choice")
    if choice is not None:
        if names is None:
            raise param_error("tool_choice is only allowed when tools are given",
                              "invalid_value", "tool_choice")  # fmt: skip
        _check_tool_choice(choice, names)
    if params.get("parallel_tool_calls") is not None and names is None:
        raise param_error("parallel_tool_calls is only allowed when tools are given",
                          "invalid_value", "parallel_tool_calls")  # fmt: skip


def pending_calls(history: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The tool calls the end of ``history`` asks for and has not answered yet: their ids
    and names (a conversation must answer them before anything else)."""
    answered = set()
    for message in reversed(history):
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str):  # a message posted to the session may hold anything
                answered.add(call_id)
            continue
        calls = message.get("tool_calls") if role == "assistant" else None
        pending = {}
        for call in calls if isinstance(calls, list) else ():
            call_id = call.get("id") if isinstance(call, dict) else None
            if isinstance(call_id, str) and call_id not in answered:
                function = call.get("function")
                name = function.get("name") if isinstance(function, dict) else None
                pending[call_id] = name if isinstance(name, str) else ""
        return pending
    return {}


def _check_calls(calls: Any, where: str) -> dict[str, str]:
    """An assistant message's ``tool_calls``; their ids and names."""
    if not isinstance(calls, list):
        raise invalid_type(where, (list,))
    if not calls:
        raise param_error(f"{where} must not be empty (leave it out)", "invalid_value", where)
    pending: dict[str, str] = {}
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            raise invalid_type(at, (dict,))
        _known(call, _CALL_FIELDS, at)
        call_id = _string(call.get("id"), f"{at}.id")
        if not call_id:
            raise param_error(f"{at}.id must not be empty", "invalid_value", f"{at}.id")
        if call_id in pending:
            raise param_error(f"{at}.id {call_id!r} is another call's id too", "invalid_value",
                              f"{at}.id")  # fmt: skip
        _function_type(call.get("type"), f"{at}.type")
        function = _object(call.get("function"), f"{at}.function")
        _known(function, _CALL_FUNCTION_FIELDS, f"{at}.function")
        name = _string(function.get("name"), f"{at}.function.name")
        _string(function.get("arguments"), f"{at}.function.arguments")
        pending[call_id] = name or ""
    return pending


def _unanswered(pending: Mapping[str, str], where: str) -> BadRequest:
    ids = ", ".join(sorted(pending)[:5]) + (", ..." if len(pending) > 5 else "")
    return param_error(
        f"{where}: the tool calls asked for before it ({ids}) must each be answered by a "
        "tool message first (with a session, send only the new messages: the reply that "
        "asked for them is stored)",
        "tool_calls_unanswered",
        where,
    )


def check_tool_messages(
    messages: Sequence[Mapping[str, Any]], pending: Mapping[str, str] | None = None
) -> None:
    """The tool parts of a request's messages, checked as OpenAI checks them: an
    assistant's ``tool_calls`` well formed; every ``tool`` message answers, by
    ``tool_call_id``, a call of the assistant message it follows (or of ``pending``, the
    calls the history ends with) that no other answered; and every call is answered
    before any other message, and before the model is called again."""
    if not pending:
        # The common case, kept cheap: no message has a tool part.
        for message in messages:
            if "tool_calls" in message or "tool_call_id" in message or message["role"] == "tool":
                break
        else:
            return
    open_calls: dict[str, str] = dict(pending) if pending else {}
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            where = f"messages[{i}]"
            call_id = _string(message.get("tool_call_id"), f"{where}.tool_call_id")
            if call_id not in open_calls:
                raise param_error(
                    f"{where}.tool_call_id {call_id!r} answers no tool call: a tool message "
                    "must answer a call of the assistant message before it, once",
                    "unknown_tool_call",
                    f"{where}.tool_call_id",
                )
            del open_calls[call_id]
            if message.get("content") is None:
                raise _missing(f"{where}.content")
            continue
        if open_calls:
            raise _unanswered(open_calls, f"messages[{i}]")
        if message.get("tool_call_id") is not None:
            raise param_error(f"messages[{i}].tool_call_id belongs to tool messages only",
                              "invalid_value", f"messages[{i}].tool_call_id")  # fmt: skip
        calls = message.get("tool_calls")
        if calls is not None:
            if role != "assistant":
                raise param_error(f"messages[{i}].tool_calls belongs to assistant messages only",
                                  "invalid_value", f"messages[{i}].tool_calls")  # fmt: skip
            open_calls = _check_calls(calls, f"messages[{i}].tool_calls")
    if open_calls:
        raise _unanswered(open_calls, "messages")
