"""Hostile inputs for every endpoint and every WebSocket frame type, from a ``Random``.

Two families: valid structure with hostile values (huge, negative, float, NaN numbers,
odd ids, empty and huge strings, lists and objects where scalars go, unknown fields) and
hostile structure (not JSON, wrong top-level types, deep nesting, truncated bodies, odd
query strings and headers, malformed HTTP over a raw socket).

Every generator takes a ``random.Random``: the long runner (``bench/fuzz.py``) passes a
seeded one, the property tests hypothesis's ``st.randoms()`` (whose draws it controls,
repeats and shrinks), so both send the same kinds of input. Sending an input and judging
the answer is :mod:`bench.fuzzsend`; the inputs of a raw connection and of a WebSocket
are in :mod:`bench.fuzzconn`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

__all__ = (
    "AGENT",
    "ENDPOINTS",
    "Context",
    "Endpoint",
    "HttpInput",
    "Input",
    "RawInput",
    "WsInput",
    "hostile_body",
    "http_input",
    "mutate",
    "to_json",
)

AGENT = "echo"
# Deeper than the server's MAX_DEPTH (251), and deep enough to hurt a recursive parser.
DEPTHS = (250, 252, 300, 2000, 100_000)


@dataclass(frozen=True)
class Context:
    """What exists on the server: inputs name these ids (so they reach past the 404s)
    besides hostile ones. ``spare`` ids may be created and deleted by the inputs."""

    sessions: tuple[str, ...]
    responses: tuple[str, ...]
    spare: tuple[str, ...] = tuple(f"fz-{i}" for i in range(8))


@dataclass(frozen=True)
class HttpInput:
    route: str  # the endpoint's name, for counts
    method: str
    path: str  # percent-encoded, with its query string
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    family: str  # "valid", "values" or "structure"


@dataclass(frozen=True)
class RawInput:
    """Bytes for one TCP connection, sent piece by piece (a slow sender); ``half_close``
    when the server would otherwise wait for more (a truncated body)."""

    pieces: tuple[bytes, ...]
    half_close: bool
    case: str


@dataclass(frozen=True)
class WsInput:
    """Frames for one WebSocket connection: ``(opcode, data)`` with opcode ``text`` or
    ``binary``; then a ping to prove the connection lives (unless ``abrupt``: close at
    once, as a client that goes away)."""

    frames: tuple[tuple[str, bytes], ...]
    kinds: tuple[str, ...]  # what each frame is, for counts
    abrupt: bool = False


Input = HttpInput | RawInput | WsInput

# -- hostile values -----------------------------------------------------------------------

INTS = (0, 1, -1, 7, 2**31, 2**53 - 1, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30)
FLOATS = (0.5, -0.0, 1e308, 1e-320, float("nan"), float("inf"), float("-inf"), 2.0**53)
STRINGS = (
    "", " ", "a", "0", "-1", "1.5", "²", "١٢٣", "NaN", "null", "true", "\x00", "\ud800",
    "\udfff", "\u202e", "\ufeff", "\U0001d518\U0001d52b\U0001d526", "\U0001f600" * 3, "../..",
    "..", "%00", "%2F", "{x}", "a{b}c", "\r\n", "\t", "*", '"1"', "W/\"1\"", "s_" + "A" * 22,
    "a" * 128, "a" * 129,
    "echo", "user", "assistant", "tool", "system", "typing", "messages", "deleted",
    "<script>", "' OR 1=1 --", "9" * 30, "9" * 5000,
)  # fmt: skip


def hostile_string(rnd: random.Random) -> str:
    pick = rnd.random()
    if pick < 0.75:
        return rnd.choice(STRINGS)
    if pick < 0.9:
        return (rnd.choice(STRINGS) * rnd.choice((2, 50, 2000)))[:80_000]
    # Long enough to pass the fuzz server's size limits (message, value, frame, body).
    return "x" * rnd.choice((4097, 8193, 70_000))


# Where a number is written as text (a query parameter, a header): other scripts'
# digits, too many of them, past 2**53 and 2**63, signs, fractions, spaces, hex.
NUMERIC_TEXT = (
    "²", "١٢٣", "\uff11", "9" * 17, "9" * 5000, str(2**53), str(2**63), str(2**64),
    "-1", "+1", "1.5", "1e3", " 1", "1 ", "0x10", "", "00", "-0",
)  # fmt: skip


def hostile_scalar(rnd: random.Random) -> Any:
    pick = rnd.randrange(6)
    if pick == 0:
        return rnd.choice(INTS) * rnd.choice((1, -1))
    if pick == 1:
        return rnd.choice(FLOATS)
    if pick == 2:
        return rnd.choice((True, False, None))
    return hostile_string(rnd)


def hostile_value(rnd: random.Random, depth: int = 0) -> Any:
    """A scalar, or a list or object of hostile values (where scalars go)."""
    pick = rnd.random()
    if pick < 0.6 or depth > 3:
        return hostile_scalar(rnd)
    if pick < 0.8:
        return [hostile_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {hostile_string(rnd): hostile_value(rnd, depth + 1) for _ in range(rnd.randrange(4))}


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every node of a JSON value, the root first."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _nodes(item, (*path, i))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(copy[path[0]], path[1:], new)
    return copy


def mutate(rnd: random.Random, value: Any) -> Any:
    """``value`` with a hostile value in one place, any node alike (a message's role as
    likely as the whole body): the node replaced, or, in an object, a field removed or
    an unknown one added."""
    path = rnd.choice(_nodes(value))
    if not path:
        return hostile_value(rnd)
    parent_path, last = path[:-1], path[-1]
    parent = value
    for step in parent_path:
        parent = parent[step]
    action = rnd.randrange(4) if isinstance(parent, dict) else 0
    if action == 1:
        return _replace(value, parent_path, {k: v for k, v in parent.items() if k != last})
    if action == 2:
        extra = rnd.choice(("extra", "x", "", "\ud800", "__proto__", str(last).upper()))
        return _replace(value, parent_path, {**parent, extra: hostile_value(rnd)})
    return _replace(value, path, hostile_value(rnd))


def to_json(rnd: random.Random, value: Any, ascii_only: bool | None = None) -> bytes:
    """JSON text as a careless client writes it: NaN and Infinity, numbers of any size,
    lone surrogates escaped or (as invalid UTF-8) raw."""
    if ascii_only is None:
        ascii_only = rnd.random() < 0.7
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def hostile_body(rnd: random.Random, valid: Any) -> bytes:
    """A body of hostile structure, around a valid one."""
    good = json.dumps(valid).encode()
    pick = rnd.randrange(12)
    if pick == 0:
        return good[: rnd.randrange(max(1, len(good)))]  # truncated
    if pick == 1:
        return bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))  # noise
    if pick == 2:
        depth = rnd.choice(DEPTHS)
        opener, closer = rnd.choice(((b"[", b"]"), (b'{"a":', b"}")))
        return opener * depth + b"1" + closer * depth
    if pick == 3:
        return json.dumps(rnd.choice(([valid], "text", 1, None, True, [], 1.5))).encode()
    if pick == 4:
        return b""
    if pick == 5:
        return b"\xef\xbb\xbf" + good  # a byte-order mark
    if pick == 6:
        return good.replace(b'"', b"'")
    if pick == 7:
        return good + b"garbage"
    if pick == 8:
        return good[:1] + b'"dup": 1, "dup": 2, ' + good[1:] if good.startswith(b"{") else good
    if pick == 9:
        return b"\xff\xfe" + good[2:]  # invalid UTF-8
    if pick == 10:
        return good + b" " * rnd.choice((10, 70_000))  # over max_request_bytes
    return good.replace(b"1", b"1e999").replace(b"0", b"NaN")


# -- endpoints ----------------------------------------------------------------------------

Body = Callable[[random.Random, Context], Any]


def _session(rnd: random.Random, ctx: Context) -> str:
    return rnd.choice(ctx.sessions + ctx.spare)


def _chat_body(rnd: random.Random, ctx: Context) -> Any:
    body: dict[str, Any] = {
        "model": AGENT,
        "messages": [{"role": "user", "content": rnd.choice(("hi", "hello there", "x"))}],
    }
    if rnd.random() < 0.6:
        body["session_id"] = _session(rnd, ctx)
    if rnd.random() < 0.4:
        body["stream"] = True
        if rnd.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    if rnd.random() < 0.3:
        body["temperature"] = 0
    if rnd.random() < 0.2:
        body["max_tokens"] = 16
    return body


def _responses_body(rnd: random.Random, ctx: Context) -> Any:
    body: dict[str, Any] = {"model": AGENT, "input": rnd.choice(("hi", "tell me"))}
    if rnd.random() < 0.3:
        body["input"] = [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    if rnd.random() < 0.4:
        body["background"] = True
    if rnd.random() < 0.3:
        body["stream"] = True
    if rnd.random() < 0.3:
        body["session_id"] = _session(rnd, ctx)
    if rnd.random() < 0.2:
        body["previous_response_id"] = rnd.choice(ctx.responses)
    if rnd.random() < 0.2:
        body["instructions"] = "be brief"
    if rnd.random() < 0.2:
        body["metadata"] = {"k": "v"}
    if rnd.random() < 0.1:
        body["store"] = False
    if rnd.random() < 0.1:
        body["max_output_tokens"] = 16
    return body


def _session_body(rnd: random.Random, ctx: Context) -> Any:
    body: dict[str, Any] = {}
    if rnd.random() < 0.5:
        body["id"] = rnd.choice(ctx.spare)
    if rnd.random() < 0.3:
        body["agent"] = AGENT
    if rnd.random() < 0.3:
        body["metadata"] = {"who": "fuzz"}
    return body


def _append_body(rnd: random.Random, ctx: Context) -> Any:
    role = rnd.choice(("user", "assistant", "tool", "system"))
    return {"messages": [{"role": role, "content": "note"} for _ in range(rnd.randrange(1, 3))]}


def _event_body(rnd: random.Random, ctx: Context) -> Any:
    return {"type": rnd.choice(("typing", "tool_progress", "a.b_c")), "data": {"n": 1}}


def _items(rnd: random.Random) -> list[dict[str, Any]]:
    role = rnd.choice(("user", "assistant", "system", "developer"))
    kind = "output_text" if role == "assistant" else "input_text"
    return [
        {"type": "message", "role": role, "content": [{"type": kind, "text": "note"}]}
        for _ in range(rnd.randrange(1, 3))
    ]


def _conversation_body(rnd: random.Random, ctx: Context) -> Any:
    body: dict[str, Any] = {}
    if rnd.random() < 0.6:
        body["items"] = _items(rnd)
    if rnd.random() < 0.4:
        body["metadata"] = {"topic": "fuzz"}
    return body


def _conversation_update_body(rnd: random.Random, ctx: Context) -> Any:
    return {"metadata": rnd.choice(({"topic": "x"}, {}, {"a": "1", "b": "2"}))}


def _items_body(rnd: random.Random, ctx: Context) -> Any:
    return {"items": _items(rnd)}


def _completion_body(rnd: random.Random, ctx: Context) -> Any:
    body: dict[str, Any] = {"model": AGENT, "prompt": rnd.choice(("hi", ["a", "b"], ""))}
    if rnd.random() < 0.3:
        body["stream"] = True
    if rnd.random() < 0.3:
        body["max_tokens"] = 8
    return body


def _embedding_body(rnd: random.Random, ctx: Context) -> Any:
    return {"model": AGENT, "input": rnd.choice(("hi", ["a", "b"], [1, 2, 3]))}


def _key_body(rnd: random.Random, ctx: Context) -> Any:
    body: dict[str, Any] = {"tenant": rnd.choice(("team-1", "fuzz", ""))}
    if rnd.random() < 0.5:
        body["name"] = "fuzz key"
    if rnd.random() < 0.5:
        body["scopes"] = rnd.choice((["chat"], ["chat", "sessions"], ["admin"], []))
    if rnd.random() < 0.3:
        body["agents"] = [AGENT]
    if rnd.random() < 0.3:
        body["limits"] = {"requests_per_minute": 10, "max_concurrent_turns": 2}
    if rnd.random() < 0.2:
        body["expires_at"] = rnd.choice((4102444800, 1))
    return body


def _key_update_body(rnd: random.Random, ctx: Context) -> Any:
    return rnd.choice(
        ({"disabled": True}, {"name": "n"}, {"scopes": ["chat"]}, {"limits": {}}, {"agents": None})
    )


def _state_body(rnd: random.Random, ctx: Context) -> Any:
    return rnd.choice(({"n": 1}, [1, 2], "text", 3, None, {"a": {"b": [True]}}))


def _patch_body(rnd: random.Random, ctx: Context) -> Any:
    return rnd.choice(({"n": 2}, {"a": None}, {"a": {"b": 1}}))


def _increment_body(rnd: random.Random, ctx: Context) -> Any:
    return {"path": rnd.choice((["n"], ["a", "b"], [])), "by": rnd.choice((1, -2, 0.5))}


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str  # {sid} {cid} {item} {rid} {ns} {key} {kid} {name}: real or hostile ids
    body: Body | None = None
    query: tuple[str, ...] = ()  # the parameters it reads
    headers: tuple[str, ...] = ()  # the headers it reads
    content_type: str = "application/json"
    ids: dict[str, str] = field(default_factory=dict)  # placeholder -> how to pick it


ENDPOINTS: dict[str, Endpoint] = {
    "healthz": Endpoint("GET", "/healthz"),
    "readyz": Endpoint("GET", "/readyz"),
    "metrics": Endpoint("GET", "/metrics"),
    "info": Endpoint("GET", "/v1/info"),
    "me": Endpoint("GET", "/v1/me"),
    "models": Endpoint("GET", "/v1/models"),
    "model": Endpoint("GET", "/v1/models/{name}"),
    "chat": Endpoint("POST", "/v1/chat/completions", _chat_body, headers=("X-Session-Id",)),
    "responses.create": Endpoint(
        "POST", "/v1/responses", _responses_body, headers=("X-Session-Id",)
    ),
    "responses.get": Endpoint("GET", "/v1/responses/{rid}", query=("stream", "starting_after")),
    "responses.cancel": Endpoint("POST", "/v1/responses/{rid}/cancel"),
    "responses.delete": Endpoint("DELETE", "/v1/responses/{rid}"),
    "cache.clear": Endpoint("DELETE", "/v1/cache"),
    "responses.input_items": Endpoint(
        "GET", "/v1/responses/{rid}/input_items", query=("limit", "after", "order")
    ),
    "completions": Endpoint("POST", "/v1/completions", _completion_body),
    "embeddings": Endpoint("POST", "/v1/embeddings", _embedding_body),
    "conversations.create": Endpoint("POST", "/v1/conversations", _conversation_body),
    "conversations.get": Endpoint("GET", "/v1/conversations/{cid}"),
    "conversations.update": Endpoint("POST", "/v1/conversations/{cid}", _conversation_update_body),
    "conversations.delete": Endpoint("DELETE", "/v1/conversations/{cid}", ids={"cid": "spare"}),
    "conversations.items": Endpoint(
        "GET", "/v1/conversations/{cid}/items", query=("limit", "after", "order")
    ),
    "conversations.add": Endpoint("POST", "/v1/conversations/{cid}/items", _items_body),
    "conversations.item": Endpoint("GET", "/v1/conversations/{cid}/items/{item}"),
    "conversations.item.delete": Endpoint("DELETE", "/v1/conversations/{cid}/items/{item}"),
    "usage": Endpoint("GET", "/v1/usage", query=("days",)),
    "sessions.list": Endpoint("GET", "/v1/sessions", query=("limit", "after", "agent")),
    "sessions.create": Endpoint("POST", "/v1/sessions", _session_body),
    "sessions.get": Endpoint("GET", "/v1/sessions/{sid}"),
    "sessions.delete": Endpoint("DELETE", "/v1/sessions/{sid}", ids={"sid": "spare"}),
    "sessions.messages": Endpoint("GET", "/v1/sessions/{sid}/messages", query=("limit", "after")),
    "sessions.append": Endpoint("POST", "/v1/sessions/{sid}/messages", _append_body),
    "sessions.events": Endpoint(
        "GET", "/v1/sessions/{sid}/events", query=("after",), headers=("Last-Event-ID",)
    ),
    "sessions.publish": Endpoint("POST", "/v1/sessions/{sid}/events", _event_body),
    "state.namespaces": Endpoint("GET", "/v1/state", query=("limit", "after")),
    "state.documents": Endpoint("GET", "/v1/state/{ns}", query=("limit", "after", "prefix")),
    "state.get": Endpoint("GET", "/v1/state/{ns}/{key}"),
    "state.put": Endpoint(
        "PUT", "/v1/state/{ns}/{key}", _state_body, headers=("If-Match", "If-None-Match")
    ),
    "state.patch": Endpoint(
        "PATCH",
        "/v1/state/{ns}/{key}",
        _patch_body,
        headers=("If-Match", "If-None-Match"),
        content_type="application/merge-patch+json",
    ),
    "state.delete": Endpoint(
        "DELETE", "/v1/state/{ns}/{key}", headers=("If-Match", "If-None-Match")
    ),
    "state.increment": Endpoint(
        "POST", "/v1/state/{ns}/{key}/increment", _increment_body, headers=("If-Match",)
    ),
    # The operators' API (docs/admin-api.md); a dead letter's id is a hostile or odd name.
    "admin.instances": Endpoint("GET", "/v1/admin/instances"),
    "admin.usage": Endpoint("GET", "/v1/admin/usage", query=("tenant", "days")),
    "admin.keys.create": Endpoint("POST", "/v1/admin/keys", _key_body),
    "admin.keys.list": Endpoint("GET", "/v1/admin/keys", query=("tenant", "limit", "after")),
    "admin.keys.get": Endpoint("GET", "/v1/admin/keys/{kid}"),
    "admin.keys.update": Endpoint("PATCH", "/v1/admin/keys/{kid}", _key_update_body),
    "admin.keys.revoke": Endpoint("DELETE", "/v1/admin/keys/{kid}"),
    "admin.jobs": Endpoint("GET", "/v1/admin/jobs"),
    "admin.dead": Endpoint("GET", "/v1/admin/jobs/dead", query=("partition", "limit", "after")),
    "admin.dead.retry": Endpoint("POST", "/v1/admin/jobs/dead/{name}/retry", query=("partition",)),
    "admin.dead.discard": Endpoint("DELETE", "/v1/admin/jobs/dead/{name}", query=("partition",)),
    "console": Endpoint("GET", "/console"),
    "console.index": Endpoint("GET", "/console/"),
    "console.settings": Endpoint("GET", "/console/settings.json"),
    "console.file": Endpoint("GET", "/console/{name}"),  # a traversal is a name too
    "ws.plain": Endpoint("GET", "/v1/ws"),  # a WebSocket route asked without the upgrade
    "unrouted": Endpoint("GET", "/v1/{name}"),
}

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "FOO")


def _segment(rnd: random.Random, ctx: Context, placeholder: str, how: str) -> str:
    if rnd.random() < 0.7:
        sids = ctx.spare if how == "spare" else ctx.sessions + ctx.spare
        real = {
            "sid": sids,
            "cid": tuple("conv_" + sid for sid in sids),
            "item": ("msg_1", "msg_2", "msg_0", "msg_99999"),
            "kid": ("0123456789abcdef", "key_0"),
            "rid": ctx.responses,
            "ns": ("fuzz", "team-1"),
            "key": ("doc", "counter", "n.1"),
            "name": (AGENT, "models", "chat"),
        }[placeholder]
        return rnd.choice(real)
    return hostile_string(rnd)[:3000]


def _encode(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _hostile_header(rnd: random.Random) -> str:
    # What an HTTP client lets through: no CR, LF or NUL (raw inputs send those).
    text = hostile_string(rnd)[:2000]
    return "".join(c for c in text if c not in "\r\n\x00" and not 0xD800 <= ord(c) <= 0xDFFF)


HEADER_VALUES = {
    "X-Session-Id": ("", "fz-0", "s_" + "A" * 22),
    "If-Match": ('"1"', "1", '"0"', "0", '"18446744073709551616"', "*", 'W/"1"', '"1", "2"'),
    "If-None-Match": ("*", '"1"', ""),
    "Last-Event-ID": ("0", "1", "", "-1", "²", "9" * 20, str(2**63)),
}


def http_input(rnd: random.Random, route: str, ctx: Context) -> HttpInput:
    """One request to ``route`` (a key of :data:`ENDPOINTS`)."""
    ep = ENDPOINTS[route]
    family = rnd.choice(("valid", "values", "values", "structure"))
    path = ep.template
    for placeholder in ("sid", "cid", "item", "rid", "ns", "key", "kid", "name"):
        if "{" + placeholder + "}" in path:
            seg = _segment(rnd, ctx, placeholder, ep.ids.get(placeholder, ""))
            path = path.replace("{" + placeholder + "}", _encode(seg))
    method = ep.method if family == "valid" or rnd.random() < 0.9 else rnd.choice(METHODS)
    query: list[tuple[str, str]] = []
    for name in ep.query:
        if rnd.random() < 0.6:
            value = str(rnd.randrange(0, 10))
            if family != "valid":
                value = rnd.choice((rnd.choice(NUMERIC_TEXT), hostile_string(rnd)))
            if name == "stream" and rnd.random() < 0.7:
                value = "true"
            query.append((name, value))
    if family != "valid" and rnd.random() < 0.3:
        for _ in range(rnd.randrange(1, 4)):
            query.append((rnd.choice((*ep.query, "x", "")), hostile_string(rnd)[:500]))
    if query:
        path += "?" + "&".join(f"{_encode(k)}={_encode(v)}" for k, v in query)
    headers: list[tuple[str, str]] = []
    for name in ep.headers:
        if rnd.random() < 0.4:
            pick = rnd.choice(HEADER_VALUES.get(name, ("",)))
            if family != "valid":
                pick = rnd.choice((rnd.choice(NUMERIC_TEXT), _hostile_header(rnd)))
            headers.append((name, pick))
    body: bytes | None = None
    if ep.body is not None:
        valid = ep.body(rnd, ctx)
        if family == "valid":
            body = json.dumps(valid).encode()
        elif family == "values":
            body = to_json(rnd, mutate(rnd, valid))
        else:
            body = hostile_body(rnd, valid)
        content_type = ep.content_type
        if family == "structure" and rnd.random() < 0.3:
            content_type = rnd.choice(("text/plain", "", "application/json; charset=latin-1"))
        headers.append(("Content-Type", content_type))
    elif family == "structure" and rnd.random() < 0.3:
        body = hostile_body(rnd, {"a": 1})  # a body where none is read
    return HttpInput(route, method, path, tuple(headers), body, family)
