"""Both fastpath implementations, checked against each other and against Redis itself."""

from __future__ import annotations

import importlib
import random
from types import ModuleType

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from agentd import _fastpath_py, fastpath


@pytest.fixture(scope="module")
def compiled() -> ModuleType:
    try:
        return importlib.import_module("agentd._fastpath")
    except ImportError as exc:  # the build must provide it: fail, never skip
        pytest.fail(f"the compiled fastpath does not import ({exc}); run `make ext`")


@pytest.fixture(params=["python", "cython"])
def impl(request: pytest.FixtureRequest, compiled: ModuleType) -> ModuleType:
    return _fastpath_py if request.param == "python" else compiled


def test_both_export_the_same_names(compiled: ModuleType) -> None:
    assert set(compiled.__all__) == set(_fastpath_py.__all__)
    for name in _fastpath_py.__all__:
        assert getattr(compiled, name).__doc__ == getattr(_fastpath_py, name).__doc__


def test_the_compiled_one_is_active_unless_disabled() -> None:
    expected = "python" if fastpath.NO_EXTENSIONS else "cython"
    assert fastpath.IMPLEMENTATION == expected


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


def test_key_slot_rejects_other_types(impl: ModuleType) -> None:
    for bad in (None, 1, 1.5, ["a"]):
        with pytest.raises(TypeError):
            impl.key_slot(bad)


keys = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    # Keys made of brace-heavy pieces, to hit every hash-tag rule.
    st.lists(st.sampled_from(["{", "}", "a", "", "{}", "b}", "{c"]), max_size=12).map("".join),
)


@given(keys)
def test_implementations_agree(key: str | bytes) -> None:
    compiled = importlib.import_module("agentd._fastpath")
    assert compiled.key_slot(key) == _fastpath_py.key_slot(key)
    assert 0 <= compiled.key_slot(key) < 16384


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
