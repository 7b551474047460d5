"""Shared state documents, as every implementation does them: names checked, values
encoded with a size limit, merge patch and increment as compare-and-set retries over
three atomic primitives (read, conditional write, conditional remove)."""

from __future__ import annotations

import abc
import asyncio
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ..errors import BadRequest, Conflict, NotFound
from ..schema import validate_name
from .api import StateConflict, StateDoc, Store
from .codec import dumps_limited

__all__ = ("MAX_CAS_ATTEMPTS", "StateStore", "increment", "merge_patch")

# A read-modify-write of shared state retries on a concurrent write this many times.
MAX_CAS_ATTEMPTS = 64


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: ``patch`` applied to ``target`` (neither is mutated)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_increment(path: Sequence[str], by: int | float) -> None:
    if (
        not isinstance(path, (list, tuple))
        or not path
        or not all(isinstance(p, str) and p for p in path)
    ):
        raise BadRequest("path must be a non-empty list of field names", code="invalid_path")
    if isinstance(by, bool) or not isinstance(by, (int, float)):
        raise BadRequest("by must be a number", code="invalid_increment")


def increment(value: Any, path: Sequence[str], by: int | float) -> Any:
    """``value`` (an object, or None for a missing document) with ``by`` added to the
    number at ``path``, created as 0 with its parents; ``value`` is not mutated."""
    root = value if isinstance(value, dict) else {} if value is None else None
    if root is None:
        raise BadRequest("the document is not an object", code="invalid_path")
    root = dict(root)
    node = root
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise BadRequest(f"{part!r} is not an object", code="invalid_path")
        node[part] = child = dict(child)
        node = child
    current = node.get(path[-1], 0)
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise BadRequest(f"{path[-1]!r} is not a number", code="invalid_path")
    total = current + by
    if not math.isfinite(total):
        raise BadRequest("the increment overflows", code="invalid_increment")
    node[path[-1]] = total
    return root


def _not_found(namespace: str, key: str) -> NotFound:
    return NotFound(f"no state at {namespace}/{key}", code="state_not_found")


class StateStore(Store):
    """:class:`Store`'s shared state over the primitives below."""

    max_value_bytes: int

    def _state_name(self, namespace: str, key: str) -> str:
        return f"{validate_name('namespace', namespace)}/{validate_name('key', key)}"

    def _encode_value(self, value: Any) -> bytes:
        return dumps_limited(value, self.max_value_bytes, "document", "value_too_large")

    async def state_get(self, namespace: str, key: str) -> StateDoc:
        found = await self._state_peek(self._state_name(namespace, key))
        if found is None:
            raise _not_found(namespace, key)
        return StateDoc(orjson.loads(found[0]), found[1])

    async def state_put(
        self, namespace: str, key: str, value: Any, *, expected_version: int | None = None
    ) -> StateDoc:
        name = self._state_name(namespace, key)
        ok, version, current = await self._state_write(
            name, self._encode_value(value), expected_version
        )
        if not ok:
            raise StateConflict(
                None if current is None else StateDoc(orjson.loads(current), version)
            )
        return StateDoc(value, version)

    async def state_delete(
        self, namespace: str, key: str, *, expected_version: int | None = None
    ) -> None:
        name = self._state_name(namespace, key)
        ok, version, current = await self._state_remove(name, expected_version)
        if ok:
            return
        if current is None:
            raise _not_found(namespace, key)
        raise StateConflict(StateDoc(orjson.loads(current), version))

    async def state_patch(
        self, namespace: str, key: str, patch: Any, *, expected_version: int | None = None
    ) -> StateDoc:
        return await self._read_modify_write(
            namespace, key, lambda value: merge_patch(value, patch), expected_version
        )

    async def state_increment(
        self, namespace: str, key: str, path: Sequence[str], by: int | float
    ) -> StateDoc:
        check_increment(path, by)
        return await self._read_modify_write(
            namespace, key, lambda value: increment(value, path, by)
        )

    async def _read_modify_write(
        self,
        namespace: str,
        key: str,
        change: Callable[[Any], Any],
        expected: int | None = None,
    ) -> StateDoc:
        """Compare-and-set loop: each write applies to exactly the version it read.
        With ``expected``, one try: the change applies to that version or not at all
        (``StateConflict`` with the document now).

        Done here rather than in Lua on purpose: Redis's Lua JSON library turns empty
        arrays into objects and rounds numbers to 14 digits, which would corrupt documents.
        """
        name = self._state_name(namespace, key)
        for attempt in range(MAX_CAS_ATTEMPTS):
            found = await self._state_read(name)
            value, version = (None, 0) if found is None else (orjson.loads(found[0]), found[1])
            if expected is not None and version != expected:
                raise StateConflict(None if found is None else StateDoc(value, version))
            new = change(value)
            ok, new_version, current = await self._state_write(
                name, self._encode_value(new), version
            )
            if ok:
                return StateDoc(new, new_version)
            if expected is not None:  # written over since the read: that is a conflict too
                raise StateConflict(
                    None if current is None else StateDoc(orjson.loads(current), new_version)
                )
            # Contention: back off a little, with jitter, so writers do not lock-step.
            await asyncio.sleep(secrets.randbelow(1000) / 1e6 * (attempt + 1))
        raise Conflict(
            f"{namespace}/{key} changed {MAX_CAS_ATTEMPTS} times while being updated; retry",
            code="state_contended",
        )

    # -- primitives, each atomic in every implementation -----------------------------

    @abc.abstractmethod
    async def _state_read(self, name: str) -> tuple[bytes, int] | None:
        """(document JSON, version) or None."""

    async def _state_peek(self, name: str) -> tuple[bytes, int] | None:
        """As :meth:`_state_read`, for a plain read that may be served by a replica
        (``redis.replica_reads``), so up to ``redis.replica_max_lag`` behind; a
        read-modify-write reads the master."""
        return await self._state_read(name)

    @abc.abstractmethod
    async def _state_write(
        self, name: str, data: bytes, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        """Write if ``expected`` is None or equals the current version (0 = absent).

        Returns (written, version, current JSON): the new version when written, else the
        current version and document (None and 0 when absent)."""

    @abc.abstractmethod
    async def _state_remove(
        self, name: str, expected: int | None
    ) -> tuple[bool, int, bytes | None]:
        """Delete if present and (``expected`` is None or matches); same return shape."""
