"""Both fastpath implementations, checked against each other, against their specs
(Redis's CLUSTER KEYSLOT, the cache key's encoding, the chat API's rules) and against
hostile input: the compiled one must agree with the twin and never crash the process."""

from __future__ import annotations

import enum
import gc
import hashlib
import importlib
import random
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agentd import _fastpath_py, fastpath
from agentd.errors import BadRequest

COMPILED: ModuleType | None = None
_NOT_BUILT = ""
try:
    COMPILED = importlib.import_module("agentd._fastpath")  # the build must provide it
except ImportError:
    # ...unless it said it could not (no C compiler): setup.py leaves the reason here.
    # Then the pure twin's own tests still run; those that need both twins cannot.
    _FALLBACK = Path(__file__).resolve().parent.parent / "agentd" / "_fastpath.fallback"
    if not _FALLBACK.is_file():
        raise
    _NOT_BUILT = _FALLBACK.read_text().strip()
IMPLS = {"python": _fastpath_py, **({"cython": COMPILED} if COMPILED else {})}
# On the tests that compare the two: the build without a compiled twin names its reason.
twins = pytest.mark.skipif(
    COMPILED is None, reason=f"the compiled fast path was not built: {_NOT_BUILT}"
)


@pytest.fixture(params=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """What a call did, comparable across implementations: its result, or its error."""
    try:
        return ("ok", fn(*args))
    except BadRequest as exc:
        return ("bad", exc.code, exc.message, exc.status, exc.detail)
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def agree(name: str, *args: Any) -> tuple[Any, ...]:
    """Call ``name`` on both implementations; assert they did the same; return it."""
    pure = outcome(getattr(_fastpath_py, name), *args)
    assert outcome(getattr(COMPILED, name), *args) == pure
    return pure


# -- the module's surface -------------------------------------------------------------


@twins
def test_both_export_the_same_names() -> None:
    assert set(COMPILED.__all__) == set(_fastpath_py.__all__)
    assert set(fastpath.__all__) == {*_fastpath_py.__all__, "IMPLEMENTATION"}
    for name in _fastpath_py.__all__:
        assert getattr(COMPILED, name).__doc__ == getattr(_fastpath_py, name).__doc__
    for name in ("get", "put", "delete", "clear", "keys", "nbytes", "max_bytes", "hits",
                 "misses", "evictions"):  # fmt: skip
        compiled_doc = getattr(COMPILED.LRUCache, name).__doc__
        assert compiled_doc == getattr(_fastpath_py.LRUCache, name).__doc__, name


@twins
def test_the_compiled_one_is_active_unless_disabled() -> None:
    expected = "python" if fastpath.NO_EXTENSIONS else "cython"
    assert fastpath.IMPLEMENTATION == expected
    for name in ("key_slot", "cache_key", "parse_chat", "LRUCache"):
        assert getattr(fastpath, name) is getattr(IMPLS[expected], name)


@twins
def test_the_tables_exist_once() -> None:
    for name in ("CHAT_PARAMS", "CHAT_IGNORED_FIELDS", "CHAT_ROLES", "CHAT_MESSAGE_FIELDS",
                 "CHAT_LOCAL_FIELDS", "ChatBody"):  # fmt: skip
        assert getattr(COMPILED, name) is getattr(_fastpath_py, name)
    assert fastpath.MAX_DEPTH == 251 and fastpath.MAX_MESSAGES == 1000
    with pytest.raises(TypeError):
        fastpath.CHAT_PARAMS["temperature"] = (str,)  # type: ignore[index]


# -- key_slot -------------------------------------------------------------------------

# Published vectors: the Redis Cluster spec (CRC16 of "123456789" is 0x31C3) and
# CLUSTER KEYSLOT answers from the Redis documentation.
VECTORS = {
    "123456789": 0x31C3,
    "foo": 12182,
    "somekey": 11058,
    "{user1000}.following": 3443,
    "{user1000}.followers": 3443,
    "foo{}{bar}": 8363,  # empty tag: the whole key is hashed
    "foo{{bar}}zap": 4015,  # tag is "{bar"
    "foo{bar}{zap}": 5061,  # only the first tag counts ("bar")
    "": 0,
}


@pytest.mark.parametrize(("key", "slot"), VECTORS.items())
def test_key_slot_matches_published_vectors(impl: ModuleType, key: str, slot: int) -> None:
    assert impl.key_slot(key) == slot
    assert impl.key_slot(key.encode()) == slot
    assert impl.key_slot(bytearray(key.encode())) == slot
    assert impl.key_slot(memoryview(key.encode())) == slot


class Text(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return b"not me"


class Data(bytes):
    def find(self, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        return 0


class Pretender:
    """Claims to be a str to isinstance(); both implementations must see through it."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return str


def type_name(value: object) -> str:
    return type(value).__name__


@pytest.mark.parametrize("bad", [None, 1, 1.5, ["a"], Pretender()], ids=type_name)
def test_key_slot_rejects_other_types(impl: ModuleType, bad: object) -> None:
    with pytest.raises(TypeError, match="key must be str or bytes"):
        impl.key_slot(bad)


def test_key_slot_reads_subclasses_as_their_base(impl: ModuleType) -> None:
    assert impl.key_slot(Text("{a}b")) == impl.key_slot("a")
    assert impl.key_slot(Text("é{}")) == impl.key_slot("é{}")
    assert impl.key_slot(Data(b"x{a}")) == impl.key_slot(b"a")


keys = st.one_of(
    st.binary(max_size=64),
    st.text(st.characters(exclude_categories=()), max_size=64),  # surrogates included
    # Keys made of brace-heavy pieces, to hit every hash-tag rule.
    st.lists(st.sampled_from(["{", "}", "a", "", "{}", "b}", "{c", "é"]), max_size=12).map("".join),
)


@twins
@given(keys)
def test_key_slot_implementations_agree(key: str | bytes) -> None:
    assert agree("key_slot", key)[1] in range(16384)


@given(st.text(max_size=32))
def test_str_is_hashed_as_utf8(key: str) -> None:
    assert fastpath.key_slot(key) == fastpath.key_slot(key.encode("utf-8", "surrogatepass"))


@given(st.binary(max_size=16), st.binary(min_size=1, max_size=16), st.binary(max_size=16))
def test_a_hash_tag_decides_the_slot(prefix: bytes, tag: bytes, suffix: bytes) -> None:
    if b"{" in prefix or b"}" in tag or b"{" in tag:
        return
    key = prefix + b"{" + tag + b"}" + suffix
    assert fastpath.key_slot(key) == fastpath.key_slot(tag)


def test_key_slot_agrees_with_a_real_redis_cluster_node(redis_cluster_node, impl) -> None:
    client = redis.Redis(port=redis_cluster_node.port)
    rnd = random.Random(7)
    alphabet = "ab{}xyz:é0"
    sample = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12))) for _ in range(2000)]
    sample += list(VECTORS)
    pipe = client.pipeline(transaction=False)
    for key in sample:
        pipe.execute_command("CLUSTER", "KEYSLOT", key)
    expected = pipe.execute()
    client.close()
    assert [impl.key_slot(k) for k in sample] == expected


# -- cache_key ------------------------------------------------------------------------


def test_cache_key_is_pinned(impl: ModuleType) -> None:
    # L2 (Redis) and L3 (disk) outlive processes: changing the encoding orphans them.
    def s(text: str) -> bytes:
        return b"s" + len(text).to_bytes(8, "little") + text.encode()

    def n(count: int) -> bytes:
        return count.to_bytes(8, "little")

    encoding = (
        b"agentd.cache_key.1\x00" + s("support") + s("gpt-4o-mini")
        + b"l" + n(1) + b"m" + n(2) + s("content") + s("hello") + s("role") + s("user")
        + b"m" + n(1) + s("temperature") + b"i" + n(0)
    )  # fmt: skip
    key = impl.cache_key("support", "gpt-4o-mini", [{"role": "user", "content": "hello"}],
                         {"temperature": 0.0})  # fmt: skip
    assert key == hashlib.sha256(encoding).digest()[:16]
    assert key.hex() == "96075b7802dea725f9629cdc3ecac3e8"


def canon(value: Any) -> Any:
    """What cache_key promises to tell apart: JSON values, numbers by value."""
    if value is True or value is False:
        return ("bool", value)
    if isinstance(value, float):
        if value != value:
            return ("nan",)
        return ("num", int(value)) if value.is_integer() else ("float", value)
    if isinstance(value, int):
        return ("num", int(value))
    if isinstance(value, str):
        return ("str", str(value))
    if value is None:
        return ("null",)
    if isinstance(value, list):
        return ("list", tuple(canon(item) for item in value))
    return ("dict", tuple(sorted((str(k), canon(v)) for k, v in value.items())))


any_text = st.text(st.characters(exclude_categories=()), max_size=6)  # surrogates too
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_like = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_text, kids, max_size=5),
    max_leaves=24,
)
turns = st.tuples(
    any_text, any_text, st.lists(json_like, max_size=4), st.dictionaries(any_text, json_like)
)


@twins
@settings(max_examples=300)
@given(turns)
def test_cache_key_implementations_agree(turn: tuple[Any, ...]) -> None:
    result = agree("cache_key", *turn)
    assert result[0] == "ok" and len(result[1]) == 16


def shuffled(value: Any, rnd: random.Random) -> Any:
    """An equal JSON value: dicts reordered, integral numbers flipped int <-> float."""
    if isinstance(value, list):
        return [shuffled(item, rnd) for item in value]
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if type(value) is int and abs(value) < 2**53 and rnd.random() < 0.5:
        return float(value)
    if type(value) is float and value.is_integer() and rnd.random() < 0.5:
        return int(value)
    return value


@given(turns, turns, st.randoms(use_true_random=False))
def test_cache_key_tells_values_apart_and_no_more(
    a: tuple[Any, ...], b: tuple[Any, ...], rnd: random.Random
) -> None:
    key_a = fastpath.cache_key(*a)
    assert fastpath.cache_key(*shuffled(list(a), rnd)) == key_a
    assert (fastpath.cache_key(*b) == key_a) == (canon(list(b)) == canon(list(a)))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("a", "bc", [], {}), ("ab", "c", [], {})),
        (("a", "b", ["cd"], {}), ("a", "b", ["c", "d"], {})),
        (("a", "b", [{"a": "b"}], {}), ("a", "b", [{"ab": ""}], {})),
        (("a", "b", [[]], {}), ("a", "b", [{}], {})),
        (("a", "b", [1], {}), ("a", "b", [True], {})),
        (("a", "b", [0], {}), ("a", "b", [False], {})),
        (("a", "b", [0], {}), ("a", "b", [None], {})),
        (("a", "b", ["1"], {}), ("a", "b", [1], {})),
        (("a", "b", [0.5], {}), ("a", "b", [1], {})),
        (("a", "b", [2**64], {}), ("a", "b", [0], {})),
        (("a", "b", [float("nan")], {}), ("a", "b", [None], {})),
        (("a", "b", [float("inf")], {}), ("a", "b", [float("-inf")], {})),
        (("a", "b", [], {"x": [1, 2]}), ("a", "b", [], {"x": [[1, 2]]})),
        (("a", "b", [], {"t": 0}), ("a", "b", [{"t": 0}], {})),
        (("", "", ["\ud800"], {}), ("", "", ["\ufffd"], {})),
    ],
)
def test_cache_key_frames_its_parts(
    impl: ModuleType, one: tuple[Any, ...], other: tuple[Any, ...]
) -> None:
    assert impl.cache_key(*one) != impl.cache_key(*other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"temperature": 0}, {"temperature": 0.0}),
        ({"temperature": 1}, {"temperature": 1.0}),
        ({"x": -0.0}, {"x": 0}),
        ({"x": 1e20}, {"x": 10**20}),
        ({"x": float("nan")}, {"x": -float("nan")}),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({f"k{i}": i for i in range(40)}, {f"k{i}": i for i in reversed(range(40))}),
    ],
)
def test_cache_key_is_canonical(
    impl: ModuleType, one: dict[str, Any], other: dict[str, Any]
) -> None:
    assert impl.cache_key("a", "m", [one], one) == impl.cache_key("a", "m", [other], other)


class Role(enum.StrEnum):
    USER = "user"


class Count(enum.IntEnum):
    ONE = 1


class Ratio(float):
    def __float__(self) -> float:
        return 0.0


def test_cache_key_reads_subclasses_as_their_base(impl: ModuleType) -> None:
    plain = impl.cache_key("a", "m", [{"role": "user", "n": 1, "r": 0.5}], {"x": [1]})
    odd = impl.cache_key(
        Text("a"), "m", [OrderedDict(role=Role.USER, n=Count.ONE, r=Ratio(0.5))], {"x": [Count.ONE]}
    )
    assert odd == plain


def nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def recursive_list() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@twins
@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((1, "m", [], {}), "agent must be str, not int"),
        (("a", None, [], {}), "model must be str, not NoneType"),
        (("a", "m", (), {}), "messages must be list, not tuple"),
        (("a", "m", [], []), "params must be dict, not list"),
        ((Pretender(), "m", [], {}), "agent must be str, not Pretender"),
        (("a", "m", [(1,)], {}), "cache_key: tuple is not a JSON value"),
        (("a", "m", [b"x"], {}), "cache_key: bytes is not a JSON value"),
        (("a", "m", [{1, 2}], {}), "cache_key: set is not a JSON value"),
        (("a", "m", [Pretender()], {}), "cache_key: Pretender is not a JSON value"),
        (("a", "m", [], {1: "x"}), "cache_key: dict keys must be str, not int"),
        (("a", "m", [], {"a": 1, None: 2}), "cache_key: dict keys must be str, not NoneType"),
        (("a", "m", [], {**{f"k{i}": i for i in range(30)}, 2: 0}), "dict keys must be str"),
        (("a", "m", [nested(5, object())], {}), "cache_key: object is not a JSON value"),
        (("a", "m", [nested(255)], {}), None),
        (("a", "m", [nested(256)], {}), "nests deeper than 256 levels"),
        (("a", "m", [], {"x": nested(255)}), None),
        (("a", "m", [], {"x": nested(256)}), "nests deeper than 256 levels"),
        (("a", "m", recursive_list(), {}), "nests deeper than 256 levels"),
        (("a", "m", [nested(300, object())], {}), "nests deeper than 256 levels"),
    ],
)
def test_cache_key_refuses_what_is_not_json(args: tuple[Any, ...], error: str | None) -> None:
    result = agree("cache_key", *args)
    if error is None:
        assert result[0] == "ok"
    else:
        assert result[0] == "raised" and error in result[2]
        assert result[1] is (ValueError if "deeper" in error else TypeError)


@twins
def test_cache_key_takes_huge_input() -> None:
    big = ["x" * 5_000_000, "é" * 1_000_000, "\U0001f600" * 500_000, "\ud800" * 100_000]
    agree("cache_key", "a", "m", [{"content": text} for text in big], {})
    agree("cache_key", "a", "m", list(range(100_000)), {f"k{i}": i for i in range(50_000)})
    agree("cache_key", "a", "m", [2**100_000, -(2**100_000), 1.7976931348623157e308], {})


# -- parse_chat -----------------------------------------------------------------------


def chat(**fields: Any) -> bytes:
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], **fields}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def test_parse_chat_returns_the_request(impl: ModuleType) -> None:
    body = chat(stream=True, stream_options={"include_usage": True}, n=1, temperature=0,
                tools=[{"type": "function"}], session_id="s1")  # fmt: skip
    parsed = impl.parse_chat(body, "header")
    assert parsed == fastpath.ChatBody(
        "a",
        [{"role": "user", "content": "hi"}],
        "s1",
        {"temperature": 0, "tools": [{"type": "function"}]},
        True,
        True,
    )
    assert type(parsed) is fastpath.ChatBody
    with pytest.raises(AttributeError):
        parsed.model = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "header", "session_id", "include_usage"),
    [
        (chat(), None, None, False),
        (chat(), "h", "h", False),
        (chat(session_id="b"), "h", "b", False),
        (chat(session_id=None), "h", None, False),  # an explicit null wins
        (chat(stream_options={}), None, None, False),
        (chat(stream_options={"include_usage": 1}), None, None, False),
        (chat(stream_options=[1]), None, None, False),
        (chat(stream_options=0), None, None, False),
        (chat(n=1.0), None, None, False),
        (chat(n=True), None, None, False),  # True == 1, as chat has always taken it
    ],
)
def test_parse_chat_session_and_options(
    impl: ModuleType, body: bytes, header: str | None, session_id: str | None, include_usage: bool
) -> None:
    parsed = impl.parse_chat(body, header)
    assert (parsed.session_id, parsed.include_usage) == (session_id, include_usage)


def test_parse_chat_store_metadata_and_ignored_fields(impl: ModuleType) -> None:
    body = chat(store=False, metadata={"k": "v"}, logprobs=True, top_logprobs=2,
                modalities=["text"], audio={"voice": "x"}, reasoning_effort="low",
                seed=3)  # fmt: skip
    parsed = impl.parse_chat(body, None)
    # Ignored fields are not passed on; store and metadata are agentd's, not the model's.
    assert parsed.params == {"reasoning_effort": "low", "seed": 3}
    assert (parsed.store, parsed.metadata) == (False, {"k": "v"})
    assert impl.parse_chat(chat(), None)[6:] == (True, None)


def test_parse_chat_null_is_absent(impl: ModuleType) -> None:
    names = [*fastpath.CHAT_PARAMS, *fastpath.CHAT_IGNORED_FIELDS, "stream", "n", "store",
             "metadata", "stream_options"]  # fmt: skip
    parsed = impl.parse_chat(chat(**dict.fromkeys(names)), None)
    assert parsed == impl.parse_chat(chat(), None)


ROLES = "['assistant', 'developer', 'system', 'tool', 'user']"


@twins
@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"", "invalid_json", "the body is not valid JSON: "),
        (b"{", "invalid_json", "the body is not valid JSON: "),
        (b"\xff", "invalid_json", "not valid UTF-8"),
        (b'{"model": NaN}', "invalid_json", "the body is not valid JSON: "),
        (b"[" * 252 + b"]" * 252, "invalid_json", "the body nests deeper than 251 levels"),
        (b"[" * 2000 + b"]" * 2000, "invalid_json", "the body is not valid JSON: "),
        (b"[]", "invalid_request", "the body must be a JSON object"),
        (b"null", "invalid_request", "the body must be a JSON object"),
        (chat(model=""), "invalid_request", "model must be the name of an agent"),
        (chat(model=...), "invalid_request", "model must be the name of an agent"),
        (chat(messages=[]), "invalid_request", "messages must be a list of 1 to 1000 messages"),
        (chat(messages=[{"role": "user"}] * 1001), "invalid_request", "1 to 1000 messages"),
        (chat(messages={"role": "user"}), "invalid_request", "1 to 1000 messages"),
        (chat(messages=["hi"]), "invalid_request",
         f"messages[0] must be an object with a role in {ROLES}"),
        (chat(messages=[{"role": "user"}, {"role": "x"}]), "invalid_request", "messages[1] must"),
        (chat(messages=[{"role": ["user"]}]), "invalid_request", "messages[0] must be"),
        (chat(messages=[{"role": {}}]), "invalid_request", "messages[0] must be"),
        (chat(messages=[{"role": None}]), "invalid_request", "messages[0] must be"),
        (chat(messages=[{"content": "x"}]), "invalid_request", "messages[0] must be"),
        (chat(messages=[{"role": "user", "z": 1, "a": 2}]), "unknown_parameter",
         "unknown parameter 'a' in messages[0]"),
        (chat(messages=[{"role": "user", "content": 1}]), "invalid_request",
         "messages[0].content must be a string or a list of parts"),
        (chat(messages=[{"role": "user", "content": {}}]), "invalid_request", ".content must be"),
        (chat(stream="yes"), "invalid_type", "stream must be a boolean"),
        (chat(stream=0), "invalid_type", "stream must be a boolean"),
        (chat(n=2), "unsupported_value", "n must be 1: agentd returns one choice"),
        (chat(n="1"), "unsupported_value", "n must be 1"),
        (chat(store="no"), "invalid_type", "store must be a boolean"),
        (chat(metadata=[]), "invalid_type", "metadata must be an object"),
        (chat(metadata={"k": 1}), "invalid_type", "metadata values must be strings"),
        (chat(metadata={str(i): "" for i in range(17)}), "invalid_value", "at most 16 pairs"),
        (chat(metadata={"k" * 65: ""}), "invalid_value", "keys have at most 64"),
        (chat(metadata={"k": "v" * 513}), "invalid_value", "values have at most 512"),
        (chat(session_id=5), "invalid_session_id", "session_id must be a string"),
        (chat(session_id=[]), "invalid_session_id", "session_id must be a string"),
        (chat(foo=1), "unknown_parameter", "unknown parameter 'foo'"),
        (chat(foo=None), "unknown_parameter", "unknown parameter 'foo'"),
        (chat(**{"é\n": 1}), "unknown_parameter", "unknown parameter 'é\\n'"),
        (chat(**{"x" * 100: 1}), "unknown_parameter", f"unknown parameter '{'x' * 64}...'"),
        (chat(temperature="0"), "invalid_type", "temperature must be a number"),
        (chat(temperature=True), "invalid_type", "temperature must be a number"),
        (chat(max_tokens=1.5), "invalid_type", "max_tokens must be an integer"),
        (chat(max_tokens=False), "invalid_type", "max_tokens must be an integer"),
        (chat(stop=1), "invalid_type", "stop must be a string or an array"),
        (chat(parallel_tool_calls=1), "invalid_type", "parallel_tool_calls must be a boolean"),
        (chat(logprobs="yes"), "invalid_type", "logprobs must be a boolean"),
        (chat(top_logprobs=1.5, foo=1), "invalid_type", "top_logprobs must be an integer"),
        (chat(foo=1, top_logprobs=1.5), "unknown_parameter", "unknown parameter 'foo'"),
    ],
)  # fmt: skip
def test_parse_chat_refusals(impl: ModuleType, body: bytes, code: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        impl.parse_chat(body, None)
    assert (info.value.code, info.value.status) == (code, 400)
    assert message in info.value.message
    if code in ("unknown_parameter", "invalid_type", "invalid_value", "unsupported_value"):
        assert info.value.detail["param"]  # the field, named as OpenAI names it
    agree("parse_chat", body, None)


def test_parse_chat_header_session_must_be_a_string(impl: ModuleType) -> None:
    for header in (5, b"s", Pretender()):
        with pytest.raises(BadRequest, match="session_id must be a string"):
            impl.parse_chat(chat(), header)


@pytest.mark.parametrize("body", [None, 1, ["{}"], Pretender(), object()], ids=type_name)
def test_parse_chat_wants_bytes(impl: ModuleType, body: object) -> None:
    with pytest.raises(TypeError, match="body must be bytes"):
        impl.parse_chat(body, None)


def test_parse_chat_takes_any_buffer(impl: ModuleType) -> None:
    body = chat()
    for form in (bytearray(body), memoryview(body), body.decode()):
        assert impl.parse_chat(form, None) == impl.parse_chat(body, None)


# Where a deep value sits: (the body with "@" for it, how many containers hold the "@").
PLACES = {
    "tools": (chat(tools="@"), 1),
    "content": (chat(messages=[{"role": "user", "content": ["@"]}]), 4),
    "tool_calls": (chat(messages=[{"role": "tool", "tool_calls": "@"}]), 3),
    "response_format": (chat(response_format={"x": "@"}), 2),
    "stream_options": (chat(stream_options="@"), 1),
    "unknown field": (chat(zzz="@"), 1),
    "later message": (chat(messages=[{"role": "user"}] * 5 + [{"role": "x", "content": ["@"]}]), 4),
}


@twins
@pytest.mark.parametrize("where", list(PLACES))
@pytest.mark.parametrize("depth", [240, 251, 252, 253, 400, 1023])
@pytest.mark.parametrize("broken", [False, True], ids=["valid", "invalid-too"])
def test_parse_chat_depth_limit_is_read_jsons(where: str, depth: int, broken: bool) -> None:
    # read_json takes bodies of up to MAX_DEPTH (251) levels of containers, and says so
    # before anything else is wrong with them.
    body, holders = PLACES[where]
    if broken:
        body = body.replace(b'"model":"a"', b'"model":""')
    inner = depth - holders
    opening = b"".join(b"[" if i % 2 else b'{"k":' for i in range(inner))
    closing = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(inner)))
    body = body.replace(b'"@"', opening + b"0" + closing)  # deeper than orjson.dumps goes
    result = agree("parse_chat", body, None)
    if depth > 251:
        assert result[:3] == ("bad", "invalid_json", "the body nests deeper than 251 levels")
    else:
        assert result[1] != "invalid_json"


json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False,
    allow_infinity=False) | st.text(max_size=8)
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids),
    max_leaves=10,
)


def present(value: Any) -> Any:
    """``value`` without its absent (``...``) fields, at every level."""
    if isinstance(value, dict):
        return {k: present(v) for k, v in value.items() if v is not ...}
    if isinstance(value, list):
        return [present(v) for v in value]
    return value


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each as often as its weight says (one_of merges equals)."""
    pick = st.sampled_from([i for i, (weight, _) in enumerate(choices) for _ in range(weight)])
    return pick.flatmap(lambda i: choices[i][1])


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value; else any JSON value, or absent (``...``)."""
    return weighted((8, strategy), (1, json_values), (1, st.just(...)))


def rarely(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly absent (``...``)."""
    return weighted((6, st.just(...)), (1, strategy))


OF_TYPE = {
    int: st.integers(-(2**63), 2**64 - 1),
    float: st.floats(allow_nan=False, allow_infinity=False),
    str: st.text(max_size=8),
    bool: st.booleans(),
    list: st.lists(json_values, max_size=3),
    dict: st.dictionaries(st.text(max_size=5), json_values, max_size=3),
}
message = st.fixed_dictionaries(
    {
        "role": maybe(st.sampled_from(sorted(fastpath.CHAT_ROLES))),
        "content": maybe(st.text(max_size=20) | st.lists(json_values, max_size=2) | st.none()),
        "name": rarely(json_values),
        "tool_calls": rarely(json_values),
        "extra": rarely(json_values),
    }
)
messages = st.lists(weighted((8, message), (1, json_values)), min_size=1, max_size=4)
chat_bodies = st.fixed_dictionaries(
    {
        "model": maybe(weighted((6, st.sampled_from(["a", "support"])), (1, st.just("")))),
        "messages": maybe(messages),
        "stream": rarely(maybe(st.booleans())),
        "n": rarely(maybe(st.sampled_from([1, 1.0, 2, True]))),
        "stream_options": rarely(
            maybe(st.fixed_dictionaries({}, optional={"include_usage": maybe(st.booleans())}))
        ),
        "session_id": rarely(maybe(st.text(max_size=8) | st.none())),
        "unknown": rarely(json_values),
        "store": rarely(maybe(st.booleans() | st.none())),
        "metadata": rarely(
            maybe(st.dictionaries(st.text(max_size=70), st.text(max_size=3), max_size=17))
        ),
        **{
            name: rarely(maybe(st.one_of(st.none(), *[OF_TYPE[kind] for kind in kinds])))
            for name, kinds in (
                *fastpath.CHAT_PARAMS.items(),
                *fastpath.CHAT_IGNORED_FIELDS.items(),
            )
        },
    }
).map(lambda body: orjson.dumps(present(body)))


def mutated(body: bytes, rnd: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rnd.randint(1, 4)):
        at = rnd.randrange(len(data) + 1)
        action = rnd.randrange(3)
        if action == 0:
            data[at:at] = bytes([rnd.randrange(256)])
        elif action == 1:
            del data[at : at + rnd.randint(1, 8)]
        else:
            data[at:at] = rnd.choice([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"\xed\xa0"])
    return bytes(data)


@twins
@settings(max_examples=400)
@given(chat_bodies, st.none() | st.text(max_size=8) | st.integers())
def test_parse_chat_implementations_agree(body: bytes, header: Any) -> None:
    agree("parse_chat", body, header)


@twins
@settings(max_examples=300)
@given(chat_bodies, st.randoms(use_true_random=False))
def test_parse_chat_agrees_on_broken_bodies(body: bytes, rnd: random.Random) -> None:
    agree("parse_chat", mutated(body, rnd), None)


@twins
@given(st.binary(max_size=200) | st.text(st.characters(exclude_categories=()), max_size=50))
def test_parse_chat_agrees_on_junk(body: bytes | str) -> None:
    result = agree("parse_chat", body, None)
    assert result[0] in ("ok", "bad")


@twins
def test_parse_chat_takes_huge_bodies() -> None:
    big = [{"role": "user", "content": "x" * 10_000} for _ in range(1000)]
    assert agree("parse_chat", chat(messages=big), None)[0] == "ok"
    fields = {f"f{i}": i for i in range(100_000)}
    agree("parse_chat", chat(messages=[{"role": "user", **fields}]), None)
    agree("parse_chat", chat(logit_bias={str(i): i for i in range(100_000)}), None)


# -- LRUCache -------------------------------------------------------------------------


def test_lru_hits_misses_and_recency(impl: ModuleType) -> None:
    cache = impl.LRUCache(10)
    cache.put(b"a", "A", 4, 100.0)
    cache.put(b"b", "B", 4, 100.0)
    assert cache.get(b"a", 0.0) == "A"  # a is now the most recently used
    cache.put(b"c", "C", 4, 100.0)  # 12 > 10: b goes
    assert cache.keys() == [b"a", b"c"]
    assert cache.get(b"b", 0.0) is None
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 1)
    assert (len(cache), cache.nbytes, cache.max_bytes) == (2, 8, 10)


def test_lru_expiry_is_a_miss_and_drops_the_entry(impl: ModuleType) -> None:
    cache = impl.LRUCache(100)
    cache.put(b"a", "A", 5, 10.0)
    assert cache.get(b"a", 9.999) == "A"
    assert cache.get(b"a", 10.0) is None  # expires_at itself is too late
    assert (len(cache), cache.nbytes, cache.misses, cache.evictions) == (0, 0, 1, 0)
    cache.put(b"n", "N", 5, float("nan"))  # never live
    assert cache.get(b"n", 0.0) is None
    cache.put(b"i", "I", 5, float("inf"))
    assert cache.get(b"i", 1e300) == "I"
    assert cache.get(b"i", float("nan")) is None


def test_lru_put_replaces_and_refuses_what_cannot_fit(impl: ModuleType) -> None:
    cache = impl.LRUCache(10)
    cache.put(b"a", "A", 4, 100.0)
    cache.put(b"b", "B", 4, 100.0)
    cache.put(b"a", "A2", 6, 100.0)
    assert cache.keys() == [b"b", b"a"] and cache.nbytes == 10
    cache.put(b"a", "A3", 11, 100.0)  # too big: not stored, and the old one goes
    assert cache.keys() == [b"b"] and cache.nbytes == 4 and cache.evictions == 0
    cache.put(b"z", "Z", 2**80, 100.0)
    assert cache.keys() == [b"b"]
    cache.put(b"c", "C", 10, 100.0)  # exactly the budget: everything else goes
    assert cache.keys() == [b"c"] and cache.evictions == 1
    zero = impl.LRUCache(0)
    zero.put(b"a", "A", 0, 100.0)
    zero.put(b"b", "B", 1, 100.0)
    assert zero.keys() == [b"a"]


def test_lru_delete_and_clear(impl: ModuleType) -> None:
    cache = impl.LRUCache(10)
    cache.put(b"a", "A", 4, 1.0)
    assert cache.delete(b"a") is True and cache.delete(b"a") is False
    cache.put(b"a", "A", 4, 100.0)
    cache.get(b"a", 0.0)
    cache.clear()
    assert (len(cache), cache.nbytes, cache.keys(), cache.hits) == (0, 0, [], 1)


@twins
@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.LRUCache(-1), ValueError, "max_bytes must be from 0 to 2**63 - 1"),
        (lambda m: m.LRUCache(2**63), ValueError, "max_bytes must be from 0 to 2**63 - 1"),
        (lambda m: m.LRUCache(1.0), TypeError, "max_bytes must be an int, not float"),
        (lambda m: m.LRUCache(None), TypeError, "max_bytes must be an int, not NoneType"),
        (lambda m: m.LRUCache(9).get("k", 0.0), TypeError, "key must be bytes, not str"),
        (lambda m: m.LRUCache(9).get(Data(b"k"), 0.0), TypeError, "key must be bytes, not Data"),
        (lambda m: m.LRUCache(9).get(b"k", "0"), TypeError, "now must be a number, not str"),
        (lambda m: m.LRUCache(9).get(b"k", 10**400), OverflowError, "too large"),
        (lambda m: m.LRUCache(9).put([], 1, 1, 1.0), TypeError, "key must be bytes, not list"),
        (lambda m: m.LRUCache(9).put(b"k", 1, 1.0, 1.0), TypeError, "nbytes must be an int"),
        (lambda m: m.LRUCache(9).put(b"k", 1, -1, 1.0), ValueError, "non-negative"),
        (lambda m: m.LRUCache(9).put(b"k", 1, -(2**80), 1.0), ValueError, "non-negative"),
        (lambda m: m.LRUCache(9).put(b"k", 1, 1, None), TypeError, "expires_at must be a"),
        (lambda m: m.LRUCache(9).put(b"k", 1, 1, Pretender()), TypeError, "expires_at must"),
        (lambda m: m.LRUCache(9).delete(None), TypeError, "key must be bytes, not NoneType"),
    ],
)
def test_lru_refuses_bad_arguments(
    call: Callable[[ModuleType], Any], error: type[Exception], message: str
) -> None:
    result = outcome(call, _fastpath_py)
    assert outcome(call, COMPILED) == result
    assert result[:2] == ("raised", error) and message in result[2]


def test_lru_reads_numbers_without_hooks(impl: ModuleType) -> None:
    cache = impl.LRUCache(Count.ONE)
    cache.put(b"k", "v", True, Ratio(5.0))  # Ratio claims to be 0.0 through __float__
    assert cache.get(b"k", 4) == "v" and cache.max_bytes == 1 and cache.nbytes == 1


def both_caches(max_bytes: int) -> tuple[Any, Any]:
    return _fastpath_py.LRUCache(max_bytes), COMPILED.LRUCache(max_bytes)


def state(cache: Any) -> tuple[Any, ...]:
    return (cache.keys(), len(cache), cache.nbytes, cache.hits, cache.misses, cache.evictions)


@twins
def test_lru_long_random_sequence_agrees_step_by_step() -> None:
    rnd = random.Random(5)
    pure, compiled = both_caches(1000)
    now = 0.0
    for step in range(30_000):
        key = b"k%d" % rnd.randrange(60)
        action = rnd.random()
        if action < 0.45:
            args = (key, now)
            results = [cache.get(*args) for cache in (pure, compiled)]
        elif action < 0.9:
            args = (key, step, rnd.choice([0, 1, 50, 200, 999, 1000, 1001]), now + rnd.random() * 5)
            results = [cache.put(*args) for cache in (pure, compiled)]
        elif action < 0.98:
            results = [cache.delete(key) for cache in (pure, compiled)]
        else:
            results = [cache.clear() for cache in (pure, compiled)]
        now += rnd.random() * 0.1
        assert results[0] == results[1], step
        assert state(pure) == state(compiled), step
        assert pure.nbytes <= 1000


class LRUMachine(RuleBasedStateMachine):
    """Both caches driven by the same operations must stay identical."""

    def __init__(self) -> None:
        super().__init__()
        self.caches = both_caches(100)
        self.now = 0.0

    keys = st.binary(max_size=2)

    @rule(key=keys, value=st.integers(), nbytes=st.integers(0, 120), ttl=st.floats(-1, 10))
    def put(self, key: bytes, value: int, nbytes: int, ttl: float) -> None:
        assert len({repr(c.put(key, value, nbytes, self.now + ttl)) for c in self.caches}) == 1

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        pure, compiled = (c.get(key, self.now) for c in self.caches)
        assert pure == compiled

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        pure, compiled = (c.delete(key) for c in self.caches)
        assert pure == compiled

    @precondition(lambda self: self.now < 1e6)
    @rule(seconds=st.floats(0, 3))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def clear(self) -> None:
        for cache in self.caches:
            cache.clear()

    @invariant()
    def identical(self) -> None:
        pure, compiled = self.caches
        assert state(pure) == state(compiled)
        assert compiled.nbytes <= compiled.max_bytes


TestLRUMachine = twins(LRUMachine.TestCase)


class Reenter:
    """A cached value whose finalizer calls back into the cache that drops it."""

    def __init__(self, cache: Any, action: Callable[[Any], Any]) -> None:
        self.cache, self.action = cache, action

    def __del__(self) -> None:
        self.action(self.cache)


REENTRY = [
    lambda c: c.clear(),
    lambda c: c.put(b"x", "X", 3, 100.0),
    lambda c: c.put(b"old", "O", 3, 100.0),
    lambda c: [c.put(b"y%d" % i, i, 2, 100.0) for i in range(5)],
    lambda c: c.get(b"old", 0.0),
    lambda c: c.get(b"b", 1000.0),
    lambda c: c.delete(b"old"),
    lambda c: c.keys(),
]


@twins
@pytest.mark.parametrize("action", REENTRY)
def test_lru_survives_finalizers_that_call_back(action: Callable[[Any], Any]) -> None:
    ends = []
    for module in (_fastpath_py, COMPILED):
        cache = module.LRUCache(10)
        for trigger in (
            lambda c: c.put(b"new", "N", 9, 100.0),  # evicts
            lambda c: c.put(b"old", "O2", 2, 100.0),  # replaces
            lambda c: c.put(b"old", "O2", 20, 100.0),  # refuses, drops the old one
            lambda c: c.get(b"old", 1000.0),  # expires
            lambda c: c.delete(b"old"),
            lambda c: c.clear(),
            lambda c: c.__init__(10),
        ):
            cache.put(b"old", Reenter(cache, action), 4, 100.0)
            cache.put(b"b", Reenter(cache, action), 4, 100.0)
            trigger(cache)
            for _ in range(100):  # finalizers may add entries, never Reenter ones
                keys = cache.keys()
                assert len(cache) == len(keys) == len(set(keys))
                if not keys:
                    break
                assert cache.delete(keys[0]) is True
            assert cache.nbytes == 0
        ends.append(state(cache))
    assert ends[0][:3] == ends[1][:3]


def test_lru_cycles_through_values_are_collected(impl: ModuleType) -> None:
    freed: list[bool] = []

    class Holder:
        def __init__(self, cache: Any) -> None:
            self.cache = cache

        def __del__(self) -> None:
            freed.append(True)

    cache = impl.LRUCache(10)
    cache.put(b"k", Holder(cache), 1, 100.0)
    del cache
    gc.collect()
    assert freed == [True]


def test_lru_is_not_pickled_by_accident(impl: ModuleType) -> None:
    import pickle

    with pytest.raises(TypeError, match="cannot pickle 'LRUCache' object"):
        pickle.dumps(impl.LRUCache(1))


@twins
def test_lru_without_init_is_safe() -> None:
    cache = COMPILED.LRUCache.__new__(COMPILED.LRUCache)
    assert cache.get(b"k", 0.0) is None and cache.keys() == []
    cache.put(b"k", 1, 0, 1.0)
    assert cache.keys() == [b"k"]
