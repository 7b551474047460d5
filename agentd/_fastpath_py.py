"""Pure-Python implementation of :mod:`agentd.fastpath`.

It mirrors ``agentd/_fastpath.pyx`` name for name and behaviour for behaviour;
``agentd.fastpath`` picks the compiled module when it imports. Keep the two in
step: the test-suite runs every function on both and compares the results.

This module also owns the chat tables (``CHAT_*``, ``MAX_MESSAGES``, ``MAX_DEPTH``):
the compiled module imports them from here, so they exist once.
"""

from __future__ import annotations

import struct
from binascii import crc_hqx
from collections import OrderedDict
from hashlib import sha256 as _sha256
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson

from .errors import BadRequest, invalid_type, param_error, unknown_parameter
from .schema import MESSAGE_FIELDS, ROLES, check_metadata

__all__ = (
    "CACHE_KEY_MAX_DEPTH",
    "CHAT_IGNORED_FIELDS",
    "CHAT_LOCAL_FIELDS",
    "CHAT_MESSAGE_FIELDS",
    "CHAT_PARAMS",
    "CHAT_ROLES",
    "MAX_CHUNK_DIGITS",
    "MAX_CHUNK_LINE",
    "MAX_DEPTH",
    "MAX_MESSAGES",
    "SLOT_COUNT",
    "ChatBody",
    "ChunkDecoder",
    "ChunkError",
    "LRUCache",
    "cache_key",
    "key_slot",
    "parse_chat",
)

SLOT_COUNT = 16384


def key_slot(key: str | bytes) -> int:
    """Return the Redis Cluster hash slot of ``key`` (CRC16-XMODEM mod 16384).

    Honours hash tags exactly as Redis does: when the key holds a ``{`` followed
    later by a ``}`` with at least one byte between them, only the bytes between
    the first ``{`` and the first ``}`` after it are hashed. A ``str`` is hashed
    as its UTF-8 encoding (surrogates are passed through, never an error).
    """
    kind = type(key)
    # Dispatch on the type itself (as the compiled module does), never on __class__.
    if kind is str or issubclass(kind, str):
        data = str.encode(key, "utf-8", "surrogatepass")
    elif kind is bytes:
        data = key
    elif issubclass(kind, bytes):
        data = bytes.__getitem__(key, slice(None))  # its bytes, whatever it overrides
    elif issubclass(kind, (bytearray, memoryview)):
        data = bytes(key)
    else:
        raise TypeError(f"key must be str or bytes, not {kind.__name__}")
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # binascii.crc_hqx is CRC-16/XMODEM when seeded with 0 (what Redis uses).
    return crc_hqx(data, 0) & (SLOT_COUNT - 1)


# -- the chat body ---------------------------------------------------------------------

# What parse_chat does with each field of OpenAI's chat completions request (the
# installed SDK's CompletionCreateParams; tests/test_conformance.py checks that every one
# of its fields is in a table). null is absent, for every field but session_id.
#
# Generation parameters, passed upstream as given (after a type check): they may change
# the reply, so they are part of the cache key.
CHAT_PARAMS: MappingProxyType[str, tuple[type, ...]] = MappingProxyType(
    {
        "temperature": (int, float),
        "top_p": (int, float),
        "max_tokens": (int,),
        "max_completion_tokens": (int,),
        "stop": (str, list),
        "seed": (int,),
        "presence_penalty": (int, float),
        "frequency_penalty": (int, float),
        "logit_bias": (dict,),
        "user": (str,),
        "response_format": (dict,),
        "tools": (list,),
        "tool_choice": (str, dict),
        "parallel_tool_calls": (bool,),
        "functions": (list,),
        "function_call": (str, dict),
        "reasoning_effort": (str,),
        "verbosity": (str,),
        "service_tier": (str,),
        "prediction": (dict,),
        "web_search_options": (dict,),
        "moderation": (dict,),
        "prompt_cache_key": (str,),
        "prompt_cache_retention": (str,),
        "prompt_cache_options": (dict,),
        "safety_identifier": (str,),
    }
)
# Accepted (type-checked) and not forwarded: they ask for parts of a reply agentd does not
# relay (log probabilities, audio), and leave its text as it is.
CHAT_IGNORED_FIELDS: MappingProxyType[str, tuple[type, ...]] = MappingProxyType(
    {"logprobs": (bool,), "top_logprobs": (int,), "modalities": (list,), "audio": (dict,)}
)
# Applied by agentd itself, not forwarded: about the response, which agentd makes
# (stream, stream_options, n), the session (session_id, store) and the stored turn
# (metadata).
CHAT_LOCAL_FIELDS = frozenset(
    {"model", "messages", "stream", "stream_options", "session_id", "n", "store", "metadata"}
)
# The message schema is the store's too: one table each, in agentd.schema.
CHAT_ROLES = ROLES
CHAT_MESSAGE_FIELDS = MESSAGE_FIELDS
MAX_MESSAGES = 1000

# orjson decodes 1024 levels of nesting but encodes only 254. A body is accepted only if
# it still encodes inside the deepest envelope a response wraps it in (a 412 carries a
# document as {"error": {"current": {"value": ...}}}), so whatever is stored can always be
# served back, and merge patches never recurse deeper than this.
_ENVELOPE = 3
MAX_DEPTH = 254 - _ENVELOPE

_ROLES_TEXT = str(sorted(CHAT_ROLES))
_JSON_INPUT = (bytes, bytearray, memoryview, str)


class ChatBody(NamedTuple):
    """A validated chat request body, as :func:`parse_chat` returns it."""

    model: str
    messages: list[dict[str, Any]]
    session_id: str | None
    params: dict[str, Any]
    stream: bool
    include_usage: bool
    # False: the turn reads its session's history but is not appended to it.
    store: bool = True
    # Kept on the stored reply.
    metadata: dict[str, str] | None = None


def parse_chat(body: bytes, header_session: str | None) -> ChatBody:
    """Parse and validate a ``POST /v1/chat/completions`` body; :class:`BadRequest` if bad.

    ``body`` is the raw request body (bytes, bytearray, memoryview or str, else
    TypeError). Invalid JSON, or JSON nesting deeper than ``MAX_DEPTH`` levels, is
    ``invalid_json``; the rest is checked against the ``CHAT_*`` tables: a field in none
    of them is ``unknown_parameter``, one of the wrong JSON type ``invalid_type`` (both
    name it in the error's ``param``), and null counts as absent. A ``session_id`` in the
    body wins over ``header_session`` (the ``X-Session-Id`` header), even when null.
    """
    if not issubclass(type(body), _JSON_INPUT):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    try:
        orjson.dumps([[[value]]])  # C-speed depth check: see _ENVELOPE
    except orjson.JSONEncodeError:
        raise BadRequest(
            f"the body nests deeper than {MAX_DEPTH} levels", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_request")
    model = value.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be the name of an agent", code="invalid_request")
    messages = value.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise BadRequest(
            f"messages must be a list of 1 to {MAX_MESSAGES} messages", code="invalid_request"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad_role(i)
        role = message.get("role")
        # A list or object role is as wrong as an unknown one (and unhashable).
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise _bad_role(i)
        if unknown := message.keys() - CHAT_MESSAGE_FIELDS:
            raise unknown_parameter(min(unknown), f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts",
                             code="invalid_request")  # fmt: skip
    stream = value.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise invalid_type("stream", (bool,))
    n = value.get("n")
    if n is not None and n != 1:
        raise param_error("n must be 1: agentd returns one choice", "unsupported_value", "n")
    options = value.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    session_id = value.get("session_id", header_session)
    # Type-based like the compiled module: header_session is the caller's object.
    if session_id is not None and not issubclass(type(session_id), str):
        raise BadRequest("session_id must be a string", code="invalid_session_id")
    store = value.get("store")
    if store is not None and not isinstance(store, bool):
        raise invalid_type("store", (bool,))
    metadata = check_metadata(value.get("metadata"))
    params: dict[str, Any] = {}
    for key, item in value.items():
        if key in CHAT_LOCAL_FIELDS:
            continue
        kinds = CHAT_PARAMS.get(key)
        if kinds is None:
            kinds = CHAT_IGNORED_FIELDS.get(key)
            if kinds is None:
                raise unknown_parameter(key)
        if item is None:
            continue
        if (isinstance(item, bool) and bool not in kinds) or not isinstance(item, kinds):
            raise invalid_type(key, kinds)
        if key in CHAT_PARAMS:
            params[key] = item
    return ChatBody(
        model, messages, session_id, params, stream, include_usage, store is not False, metadata
    )


def _bad_role(i: int) -> BadRequest:
    return BadRequest(
        f"messages[{i}] must be an object with a role in {_ROLES_TEXT}", code="invalid_request"
    )


# -- the cache key ---------------------------------------------------------------------
#
# cache_key hashes its own canonical encoding with SHA-256 (cut to 128 bits). Measured
# on this project's machine (2-core x86-64 with SHA extensions; a 20-message turn, 4.8 KB
# encoded): SHA-256 2.9 us, blake2b-128 5.3 us, MurmurHash3_x64_128 in C 0.7 us. Murmur
# was the fastest and is not used: the cache is shared by every client of an agent, and
# with a known seed any murmur value has second preimages one solved 16-byte block away,
# so a client who can guess another's request could make its own reply be served for
# it. A cryptographic hash costs ~2 us more per key and closes that. The encoding is its
# own rather than orjson's, which writes NaN as null, stops at 64-bit ints and refuses
# lone surrogates.

CACHE_KEY_MAX_DEPTH = 256
_CACHE_KEY_PREFIX = b"agentd.cache_key.1\x00"

_pack_i64 = struct.Struct("<q").pack
_pack_u64 = struct.Struct("<Q").pack
_pack_f64 = struct.Struct("<d").pack
_NAN_F64 = b"\x00\x00\x00\x00\x00\x00\xf8\x7f"  # one NaN for all NaNs
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def cache_key(agent: str, model: str, messages: list[Any], params: dict[str, Any]) -> bytes:
    """The 16-byte cache key of a model call: SHA-256 of a canonical encoding, cut to 128 bits.

    Canonical means: dict keys are sorted (by code point) at every level; numbers are
    compared by value (``1``, ``1.0`` and ``-0.0 == 0`` give the same key, every NaN
    the same key) but ``True``/``False`` are not numbers; strings are hashed as UTF-8
    (lone surrogates passed through); every part is typed and length-prefixed, so
    different inputs give different encodings. Values must be JSON-like (str, int,
    float, bool, None, list, dict with str keys; subclasses count as their base):
    anything else is TypeError, nesting deeper than ``CACHE_KEY_MAX_DEPTH`` ValueError.
    """
    for name, part, kind in (
        ("agent", agent, str),
        ("model", model, str),
        ("messages", messages, list),
        ("params", params, dict),
    ):
        if not issubclass(type(part), kind):
            raise TypeError(f"{name} must be {kind.__name__}, not {type(part).__name__}")
    buf = bytearray(_CACHE_KEY_PREFIX)
    for part in (agent, model, messages, params):
        _encode(part, buf, 0)
    return _sha256(buf).digest()[:16]


def _encode(value: Any, buf: bytearray, depth: int) -> None:
    """Append the canonical encoding of ``value``; ``depth`` counts the containers so far.

    str ``s``+u64 length+UTF-8; None ``n``; True ``t``; False ``f``; an int (or an
    integral float) in int64 ``i``+i64, beyond it ``I``+u64 length+two's complement;
    another float ``d``+f64; a list ``l``+u64 count+items; a dict ``m``+u64 count+
    (key, value) pairs sorted by key. All little-endian. Subclasses are read through
    their base type's methods, as the compiled encoder reads their C storage.
    """
    kind = type(value)
    if kind is str:
        _encode_str(value, buf)
    elif value is None:
        buf += b"n"
    elif value is True:
        buf += b"t"
    elif value is False:
        buf += b"f"
    elif kind is int:
        _encode_int(value, buf)
    elif kind is float:
        _encode_float(value, buf)
    elif kind is list or kind is dict or issubclass(kind, (list, dict)):
        depth += 1
        if depth > CACHE_KEY_MAX_DEPTH:
            raise ValueError(f"cache_key: the input nests deeper than {CACHE_KEY_MAX_DEPTH} levels")
        if issubclass(kind, list):
            buf += b"l"
            buf += _pack_u64(list.__len__(value))
            for item in list.__iter__(value):
                _encode(item, buf, depth)
        else:
            items = list(dict.items(value))
            for key, _ in items:
                if not issubclass(type(key), str):
                    raise TypeError(f"cache_key: dict keys must be str, not {type(key).__name__}")
            items.sort(key=_item_key)
            buf += b"m"
            buf += _pack_u64(len(items))
            for key, item in items:
                _encode_str(key, buf)
                _encode(item, buf, depth)
    elif issubclass(kind, str):
        _encode_str(value, buf)
    elif issubclass(kind, int):
        _encode_int(int.__int__(value), buf)
    elif issubclass(kind, float):
        _encode_float(float.__float__(value), buf)
    else:
        raise TypeError(f"cache_key: {kind.__name__} is not a JSON value")


def _item_key(item: tuple[str, Any]) -> str:
    # The key as a plain str: a str subclass's own ordering must not matter.
    return str.__str__(item[0])


def _encode_str(text: str, buf: bytearray) -> None:
    data = str.encode(text, "utf-8", "surrogatepass")
    buf += b"s"
    buf += _pack_u64(len(data))
    buf += data


def _encode_int(number: int, buf: bytearray) -> None:
    if _I64_MIN <= number <= _I64_MAX:
        buf += b"i"
        buf += _pack_i64(number)
    else:
        size = (number.bit_length() + 8) // 8  # room for the sign bit
        buf += b"I"
        buf += _pack_u64(size)
        buf += number.to_bytes(size, "little", signed=True)


def _encode_float(number: float, buf: bytearray) -> None:
    if number.is_integer():  # integral (so finite): encoded as the equal int
        _encode_int(int(number), buf)
    else:
        buf += b"d"
        buf += _pack_f64(number) if number == number else _NAN_F64


# -- the L1 cache ----------------------------------------------------------------------

_MAX_BYTES_LIMIT = (1 << 63) - 1


class LRUCache:
    """An in-process LRU cache with a TTL per entry and a budget of bytes (the L1 cache).

    ``get``/``put``/``delete`` are O(1). Keys are ``bytes`` (exactly); each entry carries
    its size in bytes (as the caller counts it) and the time it expires (on the clock the
    caller passes to ``get``). ``hits``, ``misses`` and ``evictions`` only ever grow.
    """

    __slots__ = ("_entries", "_evictions", "_hits", "_max_bytes", "_misses", "_nbytes")

    def __init__(self, max_bytes: int) -> None:
        if not issubclass(type(max_bytes), int):
            raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
        if not 0 <= int.__int__(max_bytes) <= _MAX_BYTES_LIMIT:
            raise ValueError("max_bytes must be from 0 to 2**63 - 1")
        self._max_bytes = int.__int__(max_bytes)
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        # A second __init__ releases the old entries last: their finalizers may call back.
        entries = getattr(self, "_entries", None)
        # key -> (value, nbytes, expires_at), least recently used first.
        self._entries: OrderedDict[bytes, tuple[object, int, float]] = OrderedDict()
        self._nbytes = 0
        del entries

    def get(self, key: bytes, now: float) -> object | None:
        """The value under ``key``, made the most recently used; None if absent or expired.

        An entry expires when ``now >= expires_at`` (or either is NaN); it is then
        dropped. Counts a hit or a miss.
        """
        if type(key) is not bytes:
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        if type(now) is not float:
            now = _seconds(now, "now")
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        if not now < entry[2]:
            del self._entries[key]
            self._nbytes -= entry[1]
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry[0]

    def put(self, key: bytes, value: object, nbytes: int, expires_at: float) -> None:
        """Store ``value`` under ``key`` (replacing any entry) as the most recently used,
        then evict least recently used entries until the budget holds.

        ``nbytes`` is a non-negative int. An entry bigger than ``max_bytes`` is not
        stored (and the key's old entry, if any, is dropped).
        """
        if type(key) is not bytes:
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        if type(nbytes) is not int:
            nbytes = _size(nbytes)
        if nbytes < 0:
            raise ValueError("nbytes must be a non-negative int")
        if type(expires_at) is not float:
            expires_at = _seconds(expires_at, "expires_at")
        entries = self._entries
        old = entries.pop(key, None)  # kept alive until the books balance
        if old is not None:
            self._nbytes -= old[1]
        if nbytes > self._max_bytes:
            return
        entries[key] = (value, nbytes, expires_at)
        self._nbytes += nbytes
        while self._nbytes > self._max_bytes:
            _, victim = self._entries.popitem(last=False)
            self._nbytes -= victim[1]
            self._evictions += 1
            # Release it now, the books balanced: its finalizer may call back, so the
            # next turn must read the cache afresh.
            del victim

    def delete(self, key: bytes) -> bool:
        """Drop the entry under ``key``; True if there was one (expired or not)."""
        if type(key) is not bytes:
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._nbytes -= entry[1]
        return True

    def clear(self) -> None:
        """Drop every entry (the counters are kept)."""
        entries, self._entries = self._entries, OrderedDict()
        self._nbytes = 0
        entries.clear()

    def keys(self) -> list[bytes]:
        """Every key, from the least to the most recently used (expired ones included)."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    @property
    def nbytes(self) -> int:
        """The bytes held: the sum of the entries' ``nbytes``."""
        return self._nbytes

    @property
    def max_bytes(self) -> int:
        """The budget: ``nbytes`` never exceeds it after a ``put``."""
        return self._max_bytes

    @property
    def hits(self) -> int:
        """``get`` calls that returned a live entry."""
        return self._hits

    @property
    def misses(self) -> int:
        """``get`` calls that found no entry, or an expired one."""
        return self._misses

    @property
    def evictions(self) -> int:
        """Entries dropped by ``put`` to keep the byte budget."""
        return self._evictions


def _seconds(value: object, name: str) -> float:
    """A time as a float, read as the compiled module reads it (no ``__float__`` hooks)."""
    if issubclass(type(value), float):
        return float.__float__(value)
    if issubclass(type(value), int):
        return int.__float__(value)  # OverflowError for ints past the float range
    raise TypeError(f"{name} must be a number, not {type(value).__name__}")


def _size(value: object) -> int:
    if not issubclass(type(value), int):
        raise TypeError(f"nbytes must be an int, not {type(value).__name__}")
    return int.__int__(value)


# -- the chunked transfer coding --------------------------------------------------------
#
# RFC 9112 section 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF, where
# chunk-size is 1*HEXDIG and chunk-ext is *( BWS ";" ... ) (read past, not interpreted);
# the last chunk (size 0) is followed by trailer lines (read past) and a blank line.

MAX_CHUNK_LINE = 4096  # the longest chunk size line or trailer line, its CRLF not counted
MAX_CHUNK_DIGITS = 15  # a chunk size's hex digits: below 2**60, so C cannot overflow

_LINE_WINDOW = MAX_CHUNK_LINE + 2  # where a line's CRLF must be found
_HEXDIGITS = b"0123456789abcdefABCDEF"
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_TRAILER, _CHUNK_END, _CHUNK_FAILED = range(5)


class ChunkError(ValueError):
    """A chunked body that breaks the transfer coding. ``body`` holds the body bytes the
    failing ``feed`` decoded before the fault (its caller may pass them on first)."""

    def __init__(self, message: str, body: bytes = b"") -> None:
        super().__init__(message)
        self.body = body


class ChunkDecoder:
    """Decodes one body in HTTP/1.1's chunked transfer coding, read by read.

    ``feed`` takes the bytes of each read and returns the body bytes they complete;
    a read may end anywhere (in a size line, in a chunk's data, between the data and
    its CRLF, in the trailers). ``done`` turns true at the blank line after the last
    chunk; ``extra`` says bytes came after it. Malformed input is ChunkError: a chunk
    size that is not 1 to ``MAX_CHUNK_DIGITS`` hex digits (optionally followed by
    spaces or tabs and ``;`` extensions), a line longer than ``MAX_CHUNK_LINE``, chunk
    data not followed by CRLF; a decoder that failed fails again on every ``feed``.
    """

    __slots__ = ("_error", "_extra", "_line", "_remaining", "_state")

    def __init__(self) -> None:
        self._state = _CHUNK_SIZE
        self._remaining = 0  # in _CHUNK_DATA: data bytes left, then the chunk's CRLF
        self._line = b""  # the start of a line (or a chunk's CR) kept for the next read
        self._extra = False
        self._error = ""

    def feed(self, data: bytes) -> bytes:
        """The body bytes that ``data`` completes (``b""`` if none), joined."""
        if type(data) is not bytes:
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        state = self._state
        if state >= _CHUNK_END:
            if state == _CHUNK_FAILED:
                raise ChunkError(self._error)
            if data:
                self._extra = True
            return b""
        if self._line:
            data = self._line + data
            self._line = b""
        out: list[bytes] = []
        pos, end = 0, len(data)
        remaining = self._remaining
        find = data.find
        while pos < end:
            if state == _CHUNK_DATA:  # in a chunk's data (what is left of it), or its CRLF
                stop = pos + remaining
                if stop > end:
                    out.append(data[pos:])
                    remaining = stop - end
                    break
                if remaining:
                    out.append(data[pos:stop])
                    remaining = 0
                if not data.startswith(b"\r\n", stop):
                    if end - stop >= 2 or (stop < end and data[stop] != 13):
                        raise self._fail("a chunk without its CRLF", out)
                    self._line = data[stop:]  # nothing, or its CR
                    break
                pos = stop + 2
                state = _CHUNK_SIZE
                continue
            # A line: a chunk size, or a trailer.
            eol = find(b"\r\n", pos, pos + _LINE_WINDOW)
            if eol < 0:
                if end - pos >= _LINE_WINDOW or (end - pos == _LINE_WINDOW - 1 and data[-1] != 13):
                    what = "chunk size" if state == _CHUNK_SIZE else "trailer"
                    raise self._fail(f"a {what} line is too long", out)
                self._line = data[pos:]
                break
            if state == _CHUNK_TRAILER:
                if eol == pos:  # the blank line: the end of the body
                    self._state = _CHUNK_END
                    self._extra = pos + 2 < end
                    return out[0] if len(out) == 1 else b"".join(out)
                pos = eol + 2
                continue
            digits = data[pos:eol]
            if digits.translate(None, _HEXDIGITS) or not 0 < len(digits) <= MAX_CHUNK_DIGITS:
                digits = self._digits(digits, out)  # extensions, or a fault
            pos = eol + 2
            remaining = int(digits, 16)
            if not remaining:
                state = _CHUNK_TRAILER
                continue
            stop = pos + remaining
            if data.startswith(b"\r\n", stop):  # the whole chunk is here: one pass
                out.append(data[pos:stop])
                pos = stop + 2
            else:
                state = _CHUNK_DATA
        self._state = state
        self._remaining = remaining
        return out[0] if len(out) == 1 else b"".join(out)

    def _digits(self, line: bytes, out: list[bytes]) -> bytes:
        """The hex digits of a chunk size line that is not hex digits alone."""
        semi = line.find(b";")
        digits = line if semi < 0 else line[:semi].rstrip(b" \t")
        if not digits or digits.translate(None, _HEXDIGITS):
            raise self._fail("a bad chunk size", out)
        if len(digits) > MAX_CHUNK_DIGITS:
            raise self._fail("a chunk size with too many digits", out)
        return digits

    def _fail(self, message: str, out: list[bytes]) -> ChunkError:
        self._state = _CHUNK_FAILED
        self._error = message
        self._line = b""
        return ChunkError(message, b"".join(out))

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    @property
    def done(self) -> bool:
        """The body ended: the last chunk and the blank line after its trailers came."""
        return self._state == _CHUNK_END

    @property
    def extra(self) -> bool:
        """Bytes came after the end of the body (the connection is then not reusable)."""
        return self._extra
