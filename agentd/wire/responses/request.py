"""The create request of OpenAI's Responses API, as agentd reads it.

``parse_create`` turns a ``POST /v1/responses`` body into a :class:`CreateRequest` (a
chat turn: agent, messages, chat-completions parameters) or raises :class:`BadRequest`
with a stable ``code`` and a ``param`` naming the faulty field, in OpenAI's error shape.
Pure: no I/O.

Error codes: ``invalid_json`` (not JSON, or nested deeper than ``MAX_DEPTH``),
``invalid_request`` (not an object), ``missing_required_parameter``, ``invalid_type``,
``invalid_value``, ``invalid_session_id`` (as the chat API), ``unknown_parameter`` (a
field no table of :mod:`.fields` lists), ``unsupported_parameter`` (a Responses field agentd
rejects), ``unsupported_value`` (a value agentd cannot honour) and ``unsupported_input``
(an input item or part that is not text).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...client_json import loads_json
from ...errors import BadRequest, invalid_type, param_error, unknown_parameter
from ...fastpath import MAX_MESSAGES
from ...schema import INPUT_ROLES, check_metadata, session_of_conversation
from .fields import (
    IGNORED_FIELDS,
    ITEM_FIELDS,
    MAX_CONTENT_PARTS,
    MAX_ID_CHARS,
    OWN_FIELDS,
    PARAM_FIELDS,
    PART_FIELDS,
    REJECTED_FIELDS,
    RESTRICTED_FIELDS,
    TEXT_FIELDS,
    TEXT_PARTS,
    Kinds,
    typed_object,
)
from .functions import (
    check_functions,
    function_names,
    parse_call,
    parse_choice,
    parse_function,
    parse_output,
)
from .mcp import parse_approval, parse_tools

__all__ = ("CreateRequest", "check_type", "parse_create", "parse_input_items", "parse_metadata")


@dataclass(slots=True)
class CreateRequest:
    """A validated ``POST /v1/responses`` body, as one chat turn of an agent."""

    agent: str  # the request's "model": an agent name
    messages: list[dict[str, Any]]  # ``input`` as chat messages {"role", "content": str}
    instructions: str | None = None
    previous_response_id: str | None = None
    session_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    background: bool = False
    stream: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # chat-completions names
    # False: run as a stateless turn; no record, no session (GET answers 404).
    store: bool = True
    # The conversation named by the request (its session is ``session_id``).
    conversation: str | None = None
    # The request's ``mcp`` tools, normalized (:mod:`.mcp`).
    mcp_tools: list[dict[str, Any]] = field(default_factory=list)
    # The input's ``mcp_approval_response`` items: {approval_request_id, approve, reason}.
    approvals: list[dict[str, Any]] = field(default_factory=list)
    # Where each function tool of ``params["tools"]`` is in the request's ``tools``.
    function_at: list[int] = field(default_factory=list)

    def chat_messages(self) -> list[dict[str, Any]]:
        """The turn's messages for the chat layer: ``instructions`` first, as a system
        message (agentd stores no system message, so they apply to this turn only, as
        OpenAI's instructions do), then ``messages``. Tool results that begin the input
        (``function_call_output`` items answering the previous response's calls) come
        before the instructions: they close what the history ends with."""
        if not self.instructions:
            return list(self.messages)
        lead = 0
        while lead < len(self.messages) and self.messages[lead].get("role") == "tool":
            lead += 1
        system = {"role": "system", "content": self.instructions}
        return [*self.messages[:lead], system, *self.messages[lead:]]

    def to_json(self) -> bytes:
        """The request as JSON, to store with a queued job."""
        return orjson.dumps({"v": 1, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, data: bytes) -> CreateRequest:
        """Read what :meth:`to_json` wrote. Unknown keys are ignored and missing optional
        ones take their defaults, so workers of two releases can share a queue."""
        value = orjson.loads(data)
        if not isinstance(value, dict) or value.get("v", 1) != 1:
            raise ValueError("not a stored CreateRequest (version 1)")
        try:
            return cls(
                **{f.name: value[f.name] for f in dataclasses.fields(cls) if f.name in value}
            )
        except TypeError as exc:  # a required field is missing
            raise ValueError(f"not a stored CreateRequest: {exc}") from None


_bad = param_error


def _refuse_unknown(value: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    """``unknown_parameter`` for the first field of ``value`` not in ``allowed``."""
    for key in value:
        if key not in allowed:
            raise unknown_parameter(key, where)


def check_type(value: Any, kinds: Kinds, param: str) -> Any:
    """``value`` if it is null or its JSON type is one of ``kinds``; else ``invalid_type``."""
    if value is None:
        return None
    # bool is an int in Python, never in JSON.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise invalid_type(param, kinds)
    return value


def parse_create(raw: bytes, header_session: str | None) -> CreateRequest:
    """Parse and validate a ``POST /v1/responses`` body; :class:`BadRequest` if bad.

    ``input`` is a string (one user message) or a list of message items (``role``
    user, assistant, system or developer; ``content`` a string or a list of
    ``input_text``/``output_text`` parts, joined with newlines), ``function_call`` and
    ``function_call_output`` items (an assistant's calls and ``tool`` messages) and
    ``mcp_approval_response`` items; any other item or part (images, files, unknown
    types) is ``unsupported_input``.
    Top-level fields are handled as the tables of :mod:`.fields` say: used, restricted to
    harmless values, ignored, rejected, or unknown (rejected). ``session_id`` in the
    body wins over ``header_session`` (the ``X-Session-Id`` header), even when null,
    as in the chat API.
    """
    body = loads_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_request")
    for key in body:
        if key in REJECTED_FIELDS:
            raise _bad(f"{key} is not supported by agentd", "unsupported_parameter", key)
        if not (
            key in OWN_FIELDS
            or key in PARAM_FIELDS
            or key in RESTRICTED_FIELDS
            or key in IGNORED_FIELDS
        ):
            raise unknown_parameter(key)

    agent = body.get("model")
    if agent is None:
        raise _bad("model is required: the name of an agent", "missing_required_parameter", "model")
    if not check_type(agent, (str,), "model"):
        raise _bad("model must name an agent", "invalid_value", "model")
    messages, approvals = _parse_input(body.get("input"))

    instructions = check_type(body.get("instructions"), (str,), "instructions")
    previous = check_type(body.get("previous_response_id"), (str,), "previous_response_id")
    if previous is not None and not 0 < len(previous) <= MAX_ID_CHARS:
        raise _bad(
            f"previous_response_id must have 1 to {MAX_ID_CHARS} characters",
            "invalid_value",
            "previous_response_id",
        )
    if approvals and previous is None:
        raise _bad(
            "an mcp_approval_response answers a previous response's mcp_approval_request: "
            "give its previous_response_id",
            "missing_required_parameter",
            "previous_response_id",
        )
    session_id = body.get("session_id", header_session)
    if session_id is not None and not isinstance(session_id, str):
        raise BadRequest(
            "session_id must be a string", code="invalid_session_id", detail={"param": "session_id"}
        )
    conversation = _parse_conversation(body.get("conversation"))
    if conversation is not None:
        if previous is not None:
            raise _bad(
                "conversation and previous_response_id do not go together",
                "invalid_request",
                "conversation",
            )
        sid = session_of_conversation(conversation)
        if session_id is not None and session_id != sid:
            raise BadRequest(
                "session_id and conversation name different sessions",
                code="conflicting_session",
                detail={"param": "conversation"},
            )
        session_id = sid
    # Outputs that begin the input may answer the calls a stored conversation ends with.
    _check_calls(messages, previous is not None or session_id is not None)
    metadata = parse_metadata(body.get("metadata"))
    background = bool(check_type(body.get("background"), (bool,), "background"))
    stream = bool(check_type(body.get("stream"), (bool,), "stream"))
    store = check_type(body.get("store"), (bool,), "store") is not False
    if not store and background:
        raise _bad(
            "a background response is stored: store must be true", "unsupported_value", "store"
        )
    if not store and (previous is not None or session_id is not None):
        raise _bad(
            "a response that is not stored joins no conversation: send the whole "
            "conversation as input, or store it",
            "unsupported_value",
            "store",
        )

    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in PARAM_FIELDS:
            name, kinds = PARAM_FIELDS[key]
            if check_type(value, kinds, key) is not None:
                params[name] = value
        elif key in IGNORED_FIELDS:
            check_type(value, IGNORED_FIELDS[key], key)
    _check_ranges(params)
    mcp_tools, function_at = _check_restricted(body, params)
    for i, tool in enumerate(mcp_tools if not store else ()):
        if tool["require_approval"] != "never":
            raise _bad(
                "a response that is not stored cannot be continued with approvals: "
                'require_approval must be "never"',
                "unsupported_value",
                f"tools[{i}].require_approval",
            )
    _forward_nested(body, params)
    return CreateRequest(
        agent,
        messages,
        instructions,
        previous,
        session_id,
        metadata,
        background,
        stream,
        params,
        store,
        conversation,
        mcp_tools,
        approvals,
        function_at,
    )


def _parse_conversation(value: Any) -> str | None:
    """A conversation id, given as itself or as ``{"id": ...}``."""
    if isinstance(value, dict):
        _refuse_unknown(value, frozenset({"id"}), "conversation")
        value = value.get("id")
        if value is None:
            raise _bad("conversation.id is required", "missing_required_parameter", "conversation")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad("conversation must be a string or an object", "invalid_type", "conversation")
    if session_of_conversation(value) is None:
        raise _bad(
            "conversation must be a conversation id (conv_...)", "invalid_value", "conversation"
        )
    return value


def parse_input_items(value: Any, param: str) -> list[dict[str, Any]]:
    """Input items as ``input`` takes them in a list (text messages), as chat messages;
    errors name ``param[i]``."""
    if not isinstance(value, list):
        raise _bad(f"{param} must be an array of items", "invalid_type", param)
    return [_parse_item(item, f"{param}[{i}]") for i, item in enumerate(value)]


def parse_metadata(value: Any) -> dict[str, str]:
    """OpenAI's metadata (16 string pairs at most), as the create request checks it."""
    return check_metadata(value) or {}


def _parse_input(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input's messages, and its approval responses."""
    if value is None:
        raise _bad("input is required", "missing_required_parameter", "input")
    if isinstance(value, str):
        if not value:
            raise _bad("input must not be empty", "invalid_value", "input")
        return [{"role": "user", "content": value}], []
    if not isinstance(value, list):
        raise _bad("input must be a string or an array of items", "invalid_type", "input")
    if not 1 <= len(value) <= MAX_MESSAGES:
        raise _bad(f"input must hold 1 to {MAX_MESSAGES} items", "invalid_value", "input")
    messages: list[dict[str, Any]] = []
    approvals = []
    for i, item in enumerate(value):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "mcp_approval_response":
            approvals.append(parse_approval(item, f"input[{i}]"))
        elif kind == "function_call":
            call = parse_call(item, f"input[{i}]")  # type: ignore[arg-type]
            last = messages[-1] if messages else None
            if last is not None and last.get("tool_calls") and last.get("_at") is not None:
                last["tool_calls"].append(call)  # consecutive calls: one assistant message
                last["_at"].append(i)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call],
                                 "_at": [i]})  # fmt: skip
        elif kind == "function_call_output":
            messages.append({**parse_output(item, f"input[{i}]"), "_at": i})  # type: ignore[arg-type]
        else:
            messages.append({**_parse_item(item, f"input[{i}]"), "_at": i})
    seen = set()
    for approval in approvals:
        if approval["approval_request_id"] in seen:
            raise _bad(f"approval request {approval['approval_request_id']!r} is answered twice",
                       "invalid_value", "input")  # fmt: skip
        seen.add(approval["approval_request_id"])
    return messages, approvals


def _check_calls(messages: list[dict[str, Any]], continued: bool) -> None:
    """The input's function calls and outputs, checked as OpenAI checks them (then the
    ``_at`` marks, each message's place in ``input``, are dropped): a call id used once;
    each output answers a call of the input's before it, or (``continued``, the leading
    outputs only) one the previous response or the session ended with, checked when it
    runs; every call answered before the next message."""
    open_calls: dict[str, int] = {}  # call id -> its input index
    seen: set[str] = set()
    leading = continued
    for message in messages:
        at = message.pop("_at", 0)  # a string input has none
        if message.get("tool_calls") is not None:
            leading = False
            if open_calls:
                raise _unanswered(open_calls, at[0])
            for call, i in zip(message["tool_calls"], at, strict=True):
                if call["id"] in seen:
                    raise _bad(f"input[{i}].call_id {call['id'][:64]!r} is another call's too",
                               "invalid_value", f"input[{i}].call_id")  # fmt: skip
                seen.add(call["id"])
                open_calls[call["id"]] = i
        elif message["role"] == "tool":
            call_id = message["tool_call_id"]
            if call_id in open_calls:
                del open_calls[call_id]
            elif not leading or call_id in seen:
                raise _bad(
                    f"input[{at}].call_id {call_id[:64]!r} answers no function call: an "
                    "output must answer a call of the input's before it, or one the previous "
                    "response ended with, once",
                    "unknown_tool_call",
                    f"input[{at}].call_id",
                )
            seen.add(call_id)
        else:
            leading = False
            if open_calls:
                raise _unanswered(open_calls, at)
    if open_calls:
        raise _unanswered(open_calls, None)


def _unanswered(open_calls: dict[str, int], at: int | None) -> BadRequest:
    ids = ", ".join(sorted(open_calls)[:5]) + (", ..." if len(open_calls) > 5 else "")
    return _bad(
        f"no function_call_output for the function calls ({ids}): each must be answered "
        "before the next message",
        "tool_calls_unanswered",
        "input" if at is None else f"input[{at}]",
    )


def _parse_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object", "invalid_type", where)
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise _bad(f"{where}.type must be a string", "invalid_type", f"{where}.type")
    if kind != "message":
        raise _bad(
            f"{where} is a {kind[:64]!r} item: agentd takes text messages, function calls "
            "and their outputs, and MCP approval responses",
            "unsupported_input",
            f"{where}.type",
        )
    role = item.get("role")
    if role is None:
        raise _bad(f"{where}.role is required", "missing_required_parameter", f"{where}.role")
    if not isinstance(role, str) or role not in INPUT_ROLES:
        raise _bad(
            f"{where}.role must be one of {list(INPUT_ROLES)}", "invalid_value", f"{where}.role"
        )
    _refuse_unknown(item, ITEM_FIELDS, where)
    content = item.get("content")
    if content is None:
        raise _bad(f"{where}.content is required", "missing_required_parameter", f"{where}.content")
    if isinstance(content, list):
        content = _join_parts(content, f"{where}.content")
    elif not isinstance(content, str):
        raise _bad(
            f"{where}.content must be a string or an array of parts",
            "invalid_type",
            f"{where}.content",
        )
    return {"role": role, "content": content}


def _join_parts(parts: list[Any], where: str) -> str:
    if len(parts) > MAX_CONTENT_PARTS:
        raise _bad(f"{where} must hold at most {MAX_CONTENT_PARTS} parts", "invalid_value", where)
    texts = []
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        part, kind = typed_object(part, at)
        if kind not in TEXT_PARTS:
            raise _bad(
                f"{at} is a {kind[:64]!r} part: agentd takes only input_text and output_text",
                "unsupported_input",
                f"{at}.type",
            )
        _refuse_unknown(part, PART_FIELDS, at)
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{at}.text must be a string", "invalid_type", f"{at}.text")
        texts.append(text)
    return "\n".join(texts)


def _check_ranges(params: dict[str, Any]) -> None:
    # Checked here, not left to the upstream: a background job must fail at once.
    for name, field_name, low, high in (
        ("temperature", "temperature", 0, 2),
        ("top_p", "top_p", 0, 1),
        ("max_tokens", "max_output_tokens", 1, None),
    ):
        value = params.get(name)
        if value is not None and (value < low or (high is not None and value > high)):
            limits = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise _bad(f"{field_name} must be {limits}", "invalid_value", field_name)


def _forward_nested(body: dict[str, Any], params: dict[str, Any]) -> None:
    """``reasoning.effort`` and ``text.verbosity`` go upstream as the chat API's
    ``reasoning_effort`` and ``verbosity``; the rest of ``reasoning`` (a summary) asks
    for what agentd does not relay."""
    reasoning = check_type(body.get("reasoning"), (dict,), "reasoning")
    if reasoning is not None:
        effort = check_type(reasoning.get("effort"), (str,), "reasoning.effort")
        if effort is not None:
            params["reasoning_effort"] = effort
    text = body.get("text")  # checked by _check_restricted
    if text is not None and text.get("verbosity") is not None:
        params["verbosity"] = text["verbosity"]


def _check_restricted(
    body: dict[str, Any], params: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[int]]:
    """Check the restricted fields; the request's mcp tools, and where its function
    tools are in ``tools``. The function tools go to ``params`` in the chat shape, with
    ``tool_choice`` and ``parallel_tool_calls`` (``tool_choice`` with mcp tools too)."""
    listed = check_type(body.get("tools"), (list,), "tools") or []
    tools = parse_tools(listed)
    functions = [(i, parse_function(t, f"tools[{i}]")) for i, t in enumerate(listed)
                 if isinstance(t, dict) and t.get("type") == "function"]  # fmt: skip
    check_functions(functions)
    if functions:
        params["tools"] = [tool for _, tool in functions]
        parallel = body.get("parallel_tool_calls")  # type-checked as an ignored field
        if parallel is not None:
            params["parallel_tool_calls"] = parallel
    names = function_names(params)
    choice = check_type(body.get("tool_choice"), (str, dict), "tool_choice")
    if choice is not None:
        choice = parse_choice(choice, names, bool(tools))
        if tools or names:
            params["tool_choice"] = choice
    text = check_type(body.get("text"), (dict,), "text")
    at = [i for i, _ in functions]
    if text is None:
        return tools, at
    _refuse_unknown(text, TEXT_FIELDS, "text")
    check_type(text.get("verbosity"), (str,), "text.verbosity")
    fmt = check_type(text.get("format"), (dict,), "text.format")
    if fmt is not None and fmt.get("type") != "text":
        raise _bad(
            'text.format must be {"type": "text"}: agentd has no structured output',
            "unsupported_value",
            "text.format.type",
        )
    return tools, at
