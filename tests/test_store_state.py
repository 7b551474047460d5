"""Shared state documents on every store topology: versions, compare-and-set, merge patch,
increment, limits and names, through :class:`agentd.store.Store` only."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.errors import BadRequest, NotFound, PayloadTooLarge
from agentd.store import StateConflict, StateDoc, Store
from agentd.store.state import merge_patch

from .store_helpers import (
    NS,
    fails,
    typed,
)


async def test_state_get_unknown_is_not_found(store: Store) -> None:
    error = await fails(store.state_get(NS, "missing"), NotFound, "state_not_found")
    assert error.status == 404


async def test_put_without_version_is_last_writer_wins(store: Store) -> None:
    for version, value in enumerate([{"a": 1}, {"a": 2}, {"b": 3}], start=1):
        doc = await store.state_put(NS, "lww", value)
        assert doc == StateDoc(value, version)
        assert await store.state_get(NS, "lww") == StateDoc(value, version)


async def test_put_with_version_zero_creates_only_if_absent(store: Store) -> None:
    assert await store.state_put(NS, "once", {"v": 1}, expected_version=0) == StateDoc({"v": 1}, 1)
    error = await fails(
        store.state_put(NS, "once", {"v": 2}, expected_version=0), StateConflict, "version_conflict"
    )
    assert error.current == StateDoc({"v": 1}, 1)
    assert await store.state_get(NS, "once") == StateDoc({"v": 1}, 1)


async def test_cas_with_matching_version_writes(store: Store) -> None:
    await store.state_put(NS, "doc", {"v": 1})
    await store.state_put(NS, "doc", {"v": 2})
    assert await store.state_put(NS, "doc", {"v": 3}, expected_version=2) == StateDoc({"v": 3}, 3)
    assert await store.state_get(NS, "doc") == StateDoc({"v": 3}, 3)


async def test_cas_conflict_returns_current_version(store: Store) -> None:
    await store.state_put(NS, "doc", {"v": 1})
    await store.state_put(NS, "doc", {"v": 2, "list": []})
    error = await fails(
        store.state_put(NS, "doc", {"v": 9}, expected_version=1), StateConflict, "version_conflict"
    )
    assert error.status == 412
    assert error.current is not None
    assert typed(error.current.value) == typed({"v": 2, "list": []})
    assert error.current.version == 2
    assert error.to_dict()["error"]["current"] == {"value": {"v": 2, "list": []}, "version": 2}
    await fails(
        store.state_put(NS, "doc", {"v": 9}, expected_version=3), StateConflict, "version_conflict"
    )
    assert await store.state_get(NS, "doc") == StateDoc({"v": 2, "list": []}, 2)


async def test_cas_on_missing_doc_conflicts_with_no_current(store: Store) -> None:
    error = await fails(
        store.state_put(NS, "ghost", {"v": 1}, expected_version=4),
        StateConflict,
        "version_conflict",
    )
    assert error.current is None
    await fails(store.state_get(NS, "ghost"), NotFound, "state_not_found")


async def test_state_delete_removes_the_doc(store: Store) -> None:
    await store.state_put(NS, "del", {"v": 1})
    await store.state_delete(NS, "del")
    await fails(store.state_get(NS, "del"), NotFound, "state_not_found")
    assert (await store.state_put(NS, "del", {"v": 2}, expected_version=0)).value == {"v": 2}


async def test_state_delete_with_matching_version(store: Store) -> None:
    await store.state_put(NS, "del", {"v": 1})
    await store.state_put(NS, "del", {"v": 2})
    await store.state_delete(NS, "del", expected_version=2)
    await fails(store.state_get(NS, "del"), NotFound, "state_not_found")


async def test_state_delete_with_wrong_version_conflicts(store: Store) -> None:
    await store.state_put(NS, "del", {"v": 1})
    await store.state_put(NS, "del", {"v": 2})
    error = await fails(
        store.state_delete(NS, "del", expected_version=1), StateConflict, "version_conflict"
    )
    assert error.current == StateDoc({"v": 2}, 2)
    assert await store.state_get(NS, "del") == StateDoc({"v": 2}, 2)


async def test_state_delete_unknown_is_not_found(store: Store) -> None:
    await fails(store.state_delete(NS, "none"), NotFound, "state_not_found")
    await fails(store.state_delete(NS, "none", expected_version=1), NotFound, "state_not_found")


async def test_state_keys_are_separate_per_namespace(store: Store) -> None:
    await store.state_put("ns-a", "k", 1)
    await store.state_put("ns-b", "k", 2)
    await store.state_put("ns-a", "k2", 3)
    assert (await store.state_get("ns-a", "k")).value == 1
    assert (await store.state_get("ns-b", "k")).value == 2
    await store.state_delete("ns-a", "k")
    assert (await store.state_get("ns-b", "k")).value == 2


# RFC 7386, appendix A: (target, patch, result).
RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}}, {"a": {"b": 1, "c": [3]}}),
    ({"keep": [], "n": 1}, {"n": 2}, {"keep": [], "n": 2}),
    ({"a": 1}, "replaced", "replaced"),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_EXAMPLES, ids=repr)
async def test_state_patch_follows_rfc7386(
    store: Store, target: Any, patch: Any, result: Any
) -> None:
    await store.state_put(NS, "patched", target)
    doc = await store.state_patch(NS, "patched", patch)
    assert typed(doc.value) == typed(result)
    assert doc.version == 2
    assert typed((await store.state_get(NS, "patched")).value) == typed(result)


async def test_state_patch_on_missing_doc_creates_it(store: Store) -> None:
    doc = await store.state_patch(NS, "fresh", {"a": {"b": 1}, "gone": None})
    assert doc == StateDoc({"a": {"b": 1}}, 1)
    assert await store.state_get(NS, "fresh") == StateDoc({"a": {"b": 1}}, 1)


async def test_state_patch_bumps_version_each_time(store: Store) -> None:
    for i in range(1, 4):
        assert (await store.state_patch(NS, "bump", {f"k{i}": i})).version == i
    assert (await store.state_get(NS, "bump")).value == {"k1": 1, "k2": 2, "k3": 3}


async def test_state_patch_with_expected_version_applies_to_that_version_only(
    store: Store,
) -> None:
    await store.state_put(NS, "cas", {"a": 1, "b": []})
    assert await store.state_patch(NS, "cas", {"a": 2}, expected_version=1) == StateDoc(
        {"a": 2, "b": []}, 2
    )
    error = await fails(
        store.state_patch(NS, "cas", {"a": 3}, expected_version=1),
        StateConflict,
        "version_conflict",
    )
    assert error.current == StateDoc({"a": 2, "b": []}, 2)
    assert error.to_dict()["error"]["current"] == {"value": {"a": 2, "b": []}, "version": 2}
    # 0: only a document that does not exist yet.
    await fails(
        store.state_patch(NS, "cas", {}, expected_version=0), StateConflict, "version_conflict"
    )
    assert await store.state_patch(NS, "new", {"x": 1}, expected_version=0) == StateDoc({"x": 1}, 1)
    missing = await fails(
        store.state_patch(NS, "ghost", {"x": 1}, expected_version=3),
        StateConflict,
        "version_conflict",
    )
    assert missing.current is None
    await fails(store.state_get(NS, "ghost"), NotFound, "state_not_found")
    assert await store.state_get(NS, "cas") == StateDoc({"a": 2, "b": []}, 2)


async def test_concurrent_patches_over_one_version_let_exactly_one_through(store: Store) -> None:
    await store.state_put(NS, "race", {})
    patches = [store.state_patch(NS, "race", {f"k{i}": i}, expected_version=1) for i in range(16)]
    outcomes = await asyncio.gather(*patches, return_exceptions=True)
    won = [o for o in outcomes if isinstance(o, StateDoc)]
    assert len(won) == 1 and won[0].version == 2
    assert all(isinstance(o, StateConflict) for o in outcomes if o is not won[0])
    assert await store.state_get(NS, "race") == won[0]


KEYS = st.sampled_from(["a", "b", "c", "d"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3))


JSON_VALUES = st.recursive(SCALARS, _containers, max_leaves=8)
JSON_OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=4)
_patch_keys = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(target=JSON_OBJECTS, patch=JSON_OBJECTS)
async def test_state_patch_matches_merge_patch(store: Store, target: Any, patch: Any) -> None:
    key = f"prop-{next(_patch_keys)}"
    await store.state_put(NS, key, target)
    expected = merge_patch(target, patch)
    doc = await store.state_patch(NS, key, patch)
    assert typed(doc.value) == typed(expected)
    stored = await store.state_get(NS, key)
    assert typed(stored.value) == typed(expected)
    assert stored.version == doc.version == 2


async def test_state_increment_creates_missing_doc_and_parents(store: Store) -> None:
    doc = await store.state_increment(NS, "counts", ["a", "b", "c"], 1)
    assert doc == StateDoc({"a": {"b": {"c": 1}}}, 1)
    assert await store.state_get(NS, "counts") == doc


async def test_state_increment_adds_ints_and_floats(store: Store) -> None:
    await store.state_put(NS, "nums", {"n": 5, "keep": [], "big": 2**60 + 1, "other": {"x": 1}})
    doc = await store.state_increment(NS, "nums", ["n"], 3)
    assert typed(doc.value["n"]) == typed(8)
    doc = await store.state_increment(NS, "nums", ["n"], -10)
    assert typed(doc.value["n"]) == typed(-2)
    doc = await store.state_increment(NS, "nums", ["f"], 0.25)
    assert typed(doc.value["f"]) == typed(0.25)
    doc = await store.state_increment(NS, "nums", ["n"], 0.5)
    assert typed(doc.value["n"]) == typed(-1.5)
    doc = await store.state_increment(NS, "nums", ["other", "y"], 2)
    expected = {"n": -1.5, "keep": [], "big": 2**60 + 1, "other": {"x": 1, "y": 2}, "f": 0.25}
    assert typed((await store.state_get(NS, "nums")).value) == typed(expected)
    assert doc.version == 6


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"a": "text"}, ["a"]),
        ({"a": True}, ["a"]),
        ({"a": [1]}, ["a"]),
        ({"a": {"b": 1}}, ["a"]),
        ({"a": 5}, ["a", "b"]),
        ({"a": [0]}, ["a", "b"]),
        ({"a": {"b": "x"}}, ["a", "b", "c"]),
        ([1, 2], ["a"]),
        ("scalar", ["a"]),
        (7, ["a"]),
    ],
    ids=repr,
)
async def test_state_increment_refuses_non_number_or_non_object_path(
    store: Store, value: Any, path: list[str]
) -> None:
    await store.state_put(NS, "inc", value)
    error = await fails(store.state_increment(NS, "inc", path, 1), BadRequest, "invalid_path")
    assert error.status == 400
    after = await store.state_get(NS, "inc")
    assert (typed(after.value), after.version) == (typed(value), 1)


@pytest.mark.parametrize("path", [[], [""], ["a", ""], [1], ["a", None]], ids=repr)
async def test_state_increment_refuses_bad_path(store: Store, path: Any) -> None:
    await fails(store.state_increment(NS, "inc", path, 1), BadRequest, "invalid_path")
    await fails(store.state_get(NS, "inc"), NotFound, "state_not_found")


async def test_state_increment_refuses_overflow_to_infinity(store: Store) -> None:
    await store.state_put(NS, "inc", {"n": 1e308})
    await fails(store.state_increment(NS, "inc", ["n"], 1e308), BadRequest, "invalid_increment")
    assert await store.state_get(NS, "inc") == StateDoc({"n": 1e308}, 1)


@pytest.mark.parametrize("by", [True, "1", None, [1]], ids=repr)
async def test_state_increment_refuses_non_number_amount(store: Store, by: Any) -> None:
    await fails(store.state_increment(NS, "inc", ["n"], by), BadRequest, "invalid_increment")
    await fails(store.state_get(NS, "inc"), NotFound, "state_not_found")


async def test_value_larger_than_limit_is_refused(store: Store) -> None:
    limit = store.config.state.max_value_bytes
    at_limit = "x" * (limit - 2)  # two bytes of quotes: exactly the limit encoded
    assert (await store.state_put(NS, "big", at_limit)).version == 1
    assert (await store.state_get(NS, "big")).value == at_limit
    error = await fails(
        store.state_put(NS, "big", at_limit + "x"), PayloadTooLarge, "value_too_large"
    )
    assert error.status == 413
    assert (await store.state_get(NS, "big")).version == 1


async def test_patch_growing_past_limit_is_refused(store: Store) -> None:
    limit = store.config.state.max_value_bytes
    await store.state_put(NS, "grow", {"a": "x" * (limit // 2)})
    await fails(
        store.state_patch(NS, "grow", {"b": "y" * (limit // 2)}), PayloadTooLarge, "value_too_large"
    )
    assert list((await store.state_get(NS, "grow")).value) == ["a"]


INVALID_NAMES: list[Any] = ["", "a/b", "a b", "{a}", "a}", "x" * 201, "_lead", "a\n", 5, None]


def state_calls(namespace: Any, key: Any) -> list[Callable[[Store], Awaitable[Any]]]:
    return [
        lambda s: s.state_get(namespace, key),
        lambda s: s.state_put(namespace, key, 1),
        lambda s: s.state_put(namespace, key, 1, expected_version=0),
        lambda s: s.state_delete(namespace, key),
        lambda s: s.state_patch(namespace, key, {"a": 1}),
        lambda s: s.state_increment(namespace, key, ["a"], 1),
    ]


@pytest.mark.parametrize("bad", INVALID_NAMES, ids=repr)
async def test_invalid_namespace_is_refused(store: Store, bad: Any) -> None:
    for call in state_calls(bad, "key"):
        await fails(call(store), BadRequest, "invalid_namespace")


@pytest.mark.parametrize("bad", INVALID_NAMES, ids=repr)
async def test_invalid_key_is_refused(store: Store, bad: Any) -> None:
    for call in state_calls(NS, bad):
        await fails(call(store), BadRequest, "invalid_key")


async def test_longest_names_are_accepted(store: Store) -> None:
    namespace, key = "n" * 200, "k.-_:" + "k" * 195
    await store.state_put(namespace, key, {"ok": True})
    assert (await store.state_get(namespace, key)).value == {"ok": True}


STATE_VALUES: list[Any] = [
    [],
    {},
    [[]],
    {"a": []},
    {"a": {}},
    2**60 + 1,
    -(2**63),
    2**64 - 1,
    0,
    1.0,
    0.1,
    -2.5e-300,
    1e300,
    True,
    False,
    None,
    "",
    "unicode: héllo 日本 🚀",
    [1, 1.0, True, None, "1"],
    {"nested": {"deep": [{"x": [], "y": {}, "z": 2**53 + 1}]}, "f": 3.141592653589793},
]


@pytest.mark.parametrize("value", STATE_VALUES, ids=repr)
async def test_state_values_keep_their_exact_types(store: Store, value: Any) -> None:
    assert typed((await store.state_put(NS, "typed", value)).value) == typed(value)
    assert typed((await store.state_get(NS, "typed")).value) == typed(value)


async def test_patch_and_increment_keep_untouched_values_exact(store: Store) -> None:
    value = {"list": [], "obj": {}, "big": 2**60 + 1, "f": 0.1, "s": "ü", "n": 0, "t": True}
    await store.state_put(NS, "exact", value)
    await store.state_patch(NS, "exact", {"added": [[]]})
    await store.state_increment(NS, "exact", ["n"], 1)
    expected = {**value, "added": [[]], "n": 1}
    assert typed((await store.state_get(NS, "exact")).value) == typed(expected)


# -- concurrent writers --------------------------------------------------------------


async def test_concurrent_cas_writers_lose_no_update(store: Store) -> None:
    async def writer(i: int) -> StateDoc | None:
        try:
            read = (await store.state_get(NS, "cas")).version
        except NotFound:
            read = 0
        await asyncio.sleep(0)  # let the others read too
        try:
            doc = await store.state_put(NS, "cas", {"writer": i}, expected_version=read)
        except StateConflict as exc:
            assert exc.current is not None
            assert exc.current.version > read
            return None
        assert doc.version == read + 1
        return doc

    results = await asyncio.gather(*(writer(i) for i in range(50)))
    wins = [r for r in results if r is not None]
    final = await store.state_get(NS, "cas")
    assert wins
    assert len(wins) == final.version
    assert sorted(w.version for w in wins) == list(range(1, final.version + 1))
    assert final.value == max(wins, key=lambda w: w.version).value


async def test_concurrent_increments_add_up(store: Store) -> None:
    results = await asyncio.gather(
        *(store.state_increment(NS, "counter", ["n"], 1) for _ in range(50))
    )
    final = await store.state_get(NS, "counter")
    assert typed(final.value) == typed({"n": 50})
    assert final.version == 50
    assert sorted(r.version for r in results) == list(range(1, 51))
    assert all(r.value["n"] == r.version for r in results)


async def test_concurrent_patches_of_different_fields_all_land(store: Store) -> None:
    await asyncio.gather(*(store.state_patch(NS, "merged", {f"k{i}": i}) for i in range(20)))
    final = await store.state_get(NS, "merged")
    assert final.value == {f"k{i}": i for i in range(20)}
    assert final.version == 20
