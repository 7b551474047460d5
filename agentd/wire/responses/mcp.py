"""The ``mcp`` tools of a Responses create request: parsed, bounded and normalized into
plain JSON (stored with a queued response), and shown back in the response object.
Pure: no I/O. Whether a server may be used is the caller's rule
(:func:`agentd.jobs.mcp.resolve`).

A tool is ``{"type": "mcp", "server_label", "server_url"?, "allowed_tools"?,
"require_approval"?, "headers"?, "authorization"?, "server_description"?}``. Its
normalized form has ``server_label``, ``server_url`` (None: a configured server),
``headers`` (with ``authorization`` as ``Authorization: Bearer ...``), ``allowed_tools``
(a list, None for all) and ``require_approval`` (``"always"``, ``"never"``, or
``{"always": [names]?, "never": [names]?}``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from ...errors import param_error, unknown_parameter
from .fields import typed_object

__all__ = ("MAX_MCP_TOOLS", "held", "parse_approval", "parse_tools", "tools_shown")

MAX_MCP_TOOLS = 16
MAX_LABEL = 64
MAX_URL = 2048
MAX_HEADERS = 16
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8192
MAX_TOOL_NAMES = 128
MAX_TOOL_NAME = 128
MAX_DESCRIPTION = 4096

_LABEL = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Headers of the transport itself: a request setting one would break or redirect it.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "upgrade",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    }
)
_FIELDS = frozenset(
    {
        "type",
        "server_label",
        "server_url",
        "allowed_tools",
        "require_approval",
        "headers",
        "authorization",
        "server_description",
    }
)
# OpenAI's other ways to name a server: agentd has none of them.
_UNSUPPORTED = frozenset({"connector_id", "tunnel_id"})
# Accepted and ignored: hints about how the model is shown the tools.
_IGNORED = frozenset({"defer_loading", "allowed_callers"})


def parse_tools(value: Any) -> list[dict[str, Any]]:
    """The request's ``mcp`` tools (``value``: ``tools``, a list already known to be
    one) normalized; ``function`` tools are skipped (:mod:`.functions`), a tool of
    another type is ``unsupported_value``, one server label twice ``invalid_value``."""
    mine = [(i, item) for i, item in enumerate(value)
            if not (isinstance(item, dict) and item.get("type") == "function")]  # fmt: skip
    if len(mine) > MAX_MCP_TOOLS:
        raise param_error(
            f"tools must hold at most {MAX_MCP_TOOLS} mcp tools", "invalid_value", "tools"
        )
    indexed = [(i, _parse_tool(item, f"tools[{i}]")) for i, item in mine]
    tools = [tool for _, tool in indexed]
    seen: set[str] = set()
    for i, tool in indexed:
        if tool["server_label"] in seen:
            raise param_error(
                f"tools[{i}].server_label {tool['server_label']!r} is given twice",
                "invalid_value",
                f"tools[{i}].server_label",
            )
        seen.add(tool["server_label"])
    return tools


def _string(tool: dict[str, Any], key: str, at: str, limit: int) -> str | None:
    value = tool.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise param_error(f"{at}.{key} must be a string", "invalid_type", f"{at}.{key}")
    if not 0 < len(value) <= limit:
        raise param_error(
            f"{at}.{key} must have 1 to {limit} characters", "invalid_value", f"{at}.{key}"
        )
    return value


def _parse_tool(value: Any, at: str) -> dict[str, Any]:
    item, kind = typed_object(value, at)
    if kind != "mcp":
        raise param_error(
            f"{at} is a {kind[:64]!r} tool: agentd takes mcp and function tools only",
            "unsupported_value",
            f"{at}.type",
        )
    for key in item:
        if key in _UNSUPPORTED:
            raise param_error(
                f"{at}.{key} is not supported: name a server by server_label or server_url",
                "unsupported_parameter",
                f"{at}.{key}",
            )
        if key not in _FIELDS and key not in _IGNORED:
            raise unknown_parameter(key, at)
    label = _string(item, "server_label", at, MAX_LABEL)
    if label is None:
        raise param_error(
            f"{at}.server_label is required", "missing_required_parameter", f"{at}.server_label"
        )
    if not _LABEL.fullmatch(label):
        raise param_error(
            f"{at}.server_label may hold only A-Z, a-z, 0-9, _ and -",
            "invalid_value",
            f"{at}.server_label",
        )
    url = _string(item, "server_url", at, MAX_URL)
    if url is not None:
        _check_url(url, f"{at}.server_url")
    _string(item, "server_description", at, MAX_DESCRIPTION)
    headers = _headers(item, at)
    authorization = _string(item, "authorization", at, MAX_HEADER_VALUE)
    if authorization is not None:
        if _CONTROL.search(authorization):
            raise param_error(
                f"{at}.authorization must not hold control characters",
                "invalid_value",
                f"{at}.authorization",
            )
        if headers is not None and any(k.lower() == "authorization" for k in headers):
            raise param_error(
                f"{at}: give authorization or an Authorization header, not both",
                "invalid_value",
                f"{at}.authorization",
            )
        headers = {**(headers or {}), "Authorization": f"Bearer {authorization}"}
    if headers is not None and url is None:
        key = "headers" if item.get("headers") is not None else "authorization"
        raise param_error(
            f"{at}.{key} goes with server_url: a configured server sends its own",
            "unsupported_value",
            f"{at}.{key}",
        )
    return {
        "server_label": label,
        "server_url": url,
        "headers": headers,
        "allowed_tools": _allowed_tools(item.get("allowed_tools"), f"{at}.allowed_tools"),
        "require_approval": _approval(item.get("require_approval"), f"{at}.require_approval"),
    }


def _check_url(url: str, param: str) -> None:
    """An absolute http(s) URL with a host, no user info, no dot segments and no
    control characters or spaces: what an allowed prefix can be matched against."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise param_error(f"{param} is not a valid URL", "invalid_value", param) from None
    segments = unquote(parts.path).split("/")
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or "\\" in url
        or re.search(r"[\x00-\x20\x7f]", url)
        or "." in segments
        or ".." in segments
    ):
        raise param_error(
            f"{param} must be an http or https URL with a host (no user info or dot segments)",
            "invalid_value",
            param,
        )


def _headers(item: dict[str, Any], at: str) -> dict[str, str] | None:
    value = item.get("headers")
    if value is None:
        return None
    param = f"{at}.headers"
    if not isinstance(value, dict):
        raise param_error(f"{param} must be an object", "invalid_type", param)
    if len(value) > MAX_HEADERS:
        raise param_error(
            f"{param} must hold at most {MAX_HEADERS} headers", "invalid_value", param
        )
    for name, text in value.items():
        if len(name) > MAX_HEADER_NAME or not _TOKEN.fullmatch(name):
            raise param_error(
                f"{param} has a header name that is not valid", "invalid_value", param
            )
        if name.lower() in _RESERVED_HEADERS:
            raise param_error(
                f"{param} may not set {name!r}: the transport sets it", "invalid_value", param
            )
        if not isinstance(text, str):
            raise param_error(f"{param}.{name} must be a string", "invalid_type", f"{param}.{name}")
        if len(text) > MAX_HEADER_VALUE or _CONTROL.search(text):
            raise param_error(
                f"{param}.{name} must be at most {MAX_HEADER_VALUE} characters, none of them "
                "control characters",
                "invalid_value",
                f"{param}.{name}",
            )
    return dict(value)


def _names(value: Any, param: str) -> list[str]:
    if not isinstance(value, list):
        raise param_error(f"{param} must be an array of tool names", "invalid_type", param)
    if len(value) > MAX_TOOL_NAMES:
        raise param_error(
            f"{param} must hold at most {MAX_TOOL_NAMES} names", "invalid_value", param
        )
    for j, name in enumerate(value):
        if not isinstance(name, str):
            raise param_error(f"{param}[{j}] must be a string", "invalid_type", f"{param}[{j}]")
        if not 0 < len(name) <= MAX_TOOL_NAME:
            raise param_error(
                f"{param}[{j}] must have 1 to {MAX_TOOL_NAME} characters",
                "invalid_value",
                f"{param}[{j}]",
            )
    return list(dict.fromkeys(value))


def _filter(value: Any, param: str) -> list[str] | None:
    """OpenAI's tool filter ``{"tool_names"?, "read_only"?}``: its names (None: any)."""
    if not isinstance(value, dict):
        raise param_error(f"{param} must be an object", "invalid_type", param)
    for key in value:
        if key not in ("tool_names", "read_only"):
            raise unknown_parameter(key, param)
    read_only = value.get("read_only")
    if read_only is not None and not isinstance(read_only, bool):
        raise param_error(
            f"{param}.read_only must be a boolean", "invalid_type", f"{param}.read_only"
        )
    if read_only:
        raise param_error(
            f"{param}.read_only is not supported: name the tools in tool_names",
            "unsupported_value",
            f"{param}.read_only",
        )
    names = value.get("tool_names")
    return None if names is None else _names(names, f"{param}.tool_names")


def _allowed_tools(value: Any, param: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return _names(value, param)
    if isinstance(value, dict):
        return _filter(value, param)
    raise param_error(f"{param} must be an array of names or an object", "invalid_type", param)


def _approval(value: Any, param: str) -> Any:
    if value is None:
        return "always"  # OpenAI's default: every call is approved first
    if isinstance(value, str):
        if value not in ("always", "never"):
            raise param_error(f'{param} must be "always", "never" or an object', "invalid_value",
                              param)  # fmt: skip
        return value
    if not isinstance(value, dict):
        raise param_error(f'{param} must be "always", "never" or an object', "invalid_type", param)
    normal: dict[str, list[str]] = {}
    for key, rule in value.items():
        if key not in ("always", "never"):
            raise unknown_parameter(key, param)
        if rule is None:
            continue
        names = _filter(rule, f"{param}.{key}")
        if names is None:
            # No names: every tool (as "always" or "never" says).
            return key
        normal[key] = names
    return normal


def held(tool: dict[str, Any]) -> tuple[frozenset[str] | None, frozenset[str]]:
    """The tools of a normalized tool whose calls are approved first, as ``(held,
    exempt)``: those in ``held`` (None: every tool) but not in ``exempt``. Named under
    ``never``: no; under ``always``: yes; in neither: yes, unless the rule names the
    ones that need it (``always``)."""
    rule = tool["require_approval"]
    if isinstance(rule, str):
        return (None if rule == "always" else frozenset()), frozenset()
    exempt = frozenset(rule.get("never", ()))
    return (frozenset(rule["always"]) if "always" in rule else None), exempt


_APPROVAL_FIELDS = frozenset({"type", "approval_request_id", "approve", "reason", "id"})


def parse_approval(item: dict[str, Any], at: str) -> dict[str, Any]:
    """An ``mcp_approval_response`` input item: ``{approval_request_id, approve,
    reason}``."""
    for key in item:
        if key not in _APPROVAL_FIELDS:
            raise unknown_parameter(key, at)
    request_id = _string(item, "approval_request_id", at, MAX_URL)
    if request_id is None:
        raise param_error(f"{at}.approval_request_id is required", "missing_required_parameter",
                          f"{at}.approval_request_id")  # fmt: skip
    approve = item.get("approve")
    if approve is None:
        raise param_error(f"{at}.approve is required", "missing_required_parameter",
                          f"{at}.approve")  # fmt: skip
    if not isinstance(approve, bool):
        raise param_error(f"{at}.approve must be a boolean", "invalid_type", f"{at}.approve")
    _string(item, "id", at, MAX_URL)
    reason = _string(item, "reason", at, MAX_DESCRIPTION)
    return {"approval_request_id": request_id, "approve": approve, "reason": reason}


def tools_shown(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The response object's ``tools``: the request's mcp tools as OpenAI shows them
    (headers and authorization are not shown)."""
    shown = []
    for tool in tools:
        rule = tool["require_approval"]
        if isinstance(rule, dict):
            rule = {k: {"tool_names": v} for k, v in rule.items()}
        shown.append(
            {
                "type": "mcp",
                "server_label": tool["server_label"],
                "server_url": tool["server_url"],
                "allowed_tools": tool["allowed_tools"],
                "headers": None,
                "require_approval": rule,
            }
        )
    return shown
